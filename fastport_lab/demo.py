"""``fastport-lab demo``: the lab's parts end to end, in one short story.

It opens the lab's environment (embedded PostgreSQL, the fault proxy in front
of it, the broker started from its launch command) and drives the broker with
the lab's recording clients: a live subscriber gets every message, an offline
subscriber's messages survive the nemesis's SIGKILL and restart of the broker
and reach it afterwards (hydration). The checkers then judge the recorded
history, as the chaos suites do, and the verdicts are printed with their evidence.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from chaos.checkers import Verdict, check_at_least_once, check_hydration, check_integrity
from chaos.checkers.facts import Facts
from chaos.config import LabConfig, LabConfigError
from chaos.environment import Lab, LabSession
from chaos.history import History
from chaos.launcher import LaunchError
from chaos.nemesis import Nemesis
from chaos.postgres import PostgresEnvError

TOPIC = "orders"


async def _story(
    console: Console, session: LabSession, config: LabConfig, history: History, messages: int
) -> None:
    say = console.print
    async with Lab(session, config, name="demo", history=history) as lab:
        assert lab.broker is not None
        say(
            f"[bold]1.[/] broker pid {lab.broker.pid} listening on {lab.url}; its storage goes "
            "through the fault proxy"
        )
        alice = lab.subscriber("alice", [TOPIC])
        carol = lab.subscriber("carol", [TOPIC], ack="never")
        bob = lab.publisher("bob")
        for client in (alice, carol, bob):
            await client.start()
        await carol.close()  # carol's subscription is durable: her deliveries wait for her
        say("[bold]2.[/] alice online, carol subscribed then went offline; bob publishes")
        results = [await bob.publish(TOPIC, {"order": i, "item": f"widget-{i}"}) for i in range(messages)]
        ids = [r.id for r in results if r.ok]
        await alice.wait_received(ids)
        await bob.wait_persisted(ids)
        say(f"   published {len(ids)}/{messages}, alice received and acked them, all persisted")

        say(f"[bold]3.[/] SIGKILL broker pid {lab.broker.pid}, restart it on the same port")
        async with Nemesis(lab).inject("broker-kill"):
            pass
        say(f"   new pid {lab.broker.pid}; carol reconnects and subscribes")
        carol = lab.subscriber("carol", [TOPIC])
        await carol.start()
        await carol.wait_received(ids, timeout=15)
        say(f"   carol received all {len(ids)} messages published while she was away")


def _print_verdicts(console: Console, history: History, verdicts: list[Verdict]) -> None:
    kinds = Counter(f"{ev.type} {ev.f}" for ev in history.events)
    console.print("history: " + ", ".join(f"{n} x {k}" for k, n in sorted(kinds.items())))
    table = Table(title="Verdicts")
    for col in ("invariant", "verdict", "summary"):
        table.add_column(col)
    colour = {"pass": "green", "fail": "red", "unknown": "yellow"}
    for v in verdicts:
        table.add_row(v.name, f"[{colour[v.status]}]{v.status}[/]", v.summary)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fastport-lab demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--broker-cmd",
        default=None,
        help="launch command with {host} {port} {dsn} {store} (default: the reference broker)",
    )
    parser.add_argument("--messages", type=int, default=5, help="messages to publish (default 5)")
    parser.add_argument("--history", metavar="FILE", help="write the recorded history as JSON lines")
    args = parser.parse_args(argv)
    if args.messages < 1:
        parser.error("--messages must be at least 1")
    try:
        config = LabConfig.resolve(args.broker_cmd, "postgres")
    except LabConfigError as exc:
        parser.error(str(exc))
    console = Console()
    history = History()
    try:
        session = LabSession.open()
        try:
            pg = session.pg
            console.print(
                f"[bold]0.[/] PostgreSQL ready on {pg.host}:{pg.port}, fault proxy at {session.toxiproxy_url}"
            )
            asyncio.run(_story(console, session, config, history, args.messages))
        finally:
            session.close()
    except (PostgresEnvError, LaunchError) as exc:
        console.print(f"[red]environment error:[/] {escape(str(exc))}")
        return 3
    except TimeoutError as exc:
        console.print(f"[red]the broker did not deliver in time:[/] {escape(str(exc))}")
    facts = Facts(history)
    verdicts = [check_at_least_once(facts), check_hydration(facts), check_integrity(facts)]
    if args.history:
        history.write(args.history)
    _print_verdicts(console, history, verdicts)
    return 0 if all(v.status == "pass" for v in verdicts) else 1
