"""``fastport-lab demo``: the lab's parts end to end, in one short story.

It starts an embedded PostgreSQL, launches the reference broker on it from its
launch command, and drives it with the lab's recording clients: a live
subscriber gets every message, an offline subscriber's messages survive a
SIGKILL of the broker and reach it after the restart (hydration). The checkers
then judge the recorded history, as the chaos suites do, and the verdicts are
printed with their evidence.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shlex
import signal
import sys
from collections import Counter

from rich.console import Console
from rich.table import Table

from chaos.checkers import Verdict, check_at_least_once, check_hydration, check_integrity
from chaos.checkers.facts import Facts
from chaos.clients import Publisher, Subscriber
from chaos.history import History
from chaos.launcher import LaunchError, launch
from chaos.postgres import PostgresEnvError, postgres_from_env

DEFAULT_BROKER = (
    f"{shlex.quote(sys.executable)} -m broker --host {{host}} --port {{port}}"
    " --store {store} --dsn {dsn}"
)
TOPIC = "orders"


async def _story(console: Console, broker_cmd: str, dsn: str, history: History, messages: int) -> None:
    say = console.print
    broker = await asyncio.to_thread(launch, broker_cmd, dsn=dsn, store="postgres", history=history)
    try:
        say(f"[bold]1.[/] broker pid {broker.pid} listening on {broker.url}")
        url = broker.url
        alice = Subscriber(url, "alice", [TOPIC], history=history)
        carol = Subscriber(url, "carol", [TOPIC], history=history, ack="never")
        bob = Publisher(url, "bob", history=history)
        await alice.start()
        await carol.start()
        await bob.start()
        await carol.close()  # carol's subscription is durable: her deliveries wait for her
        say("[bold]2.[/] alice online, carol subscribed then went offline; bob publishes")
        results = [await bob.publish(TOPIC, {"order": i, "item": f"widget-{i}"}) for i in range(messages)]
        ids = [r.id for r in results if r.ok]
        await alice.wait_received(ids)
        await bob.wait_persisted(ids)
        say(f"   published {len(ids)}/{messages}, alice received and acked them, all persisted")

        say(f"[bold]3.[/] SIGKILL broker pid {broker.pid}, restart it on the same port")
        port, old_pid = broker.port, broker.pid
        history.append("nemesis", "info", "fault-start", value={"name": "kill", "pid": old_pid})
        code = await asyncio.to_thread(broker.kill)
        broker = await asyncio.to_thread(
            launch, broker_cmd, dsn=dsn, store="postgres", history=history, port=port or 0
        )
        history.append("nemesis", "info", "fault-stop", value={
            "name": "kill", "exit_code": code, "new_pid": broker.pid,
            "effective": code == -signal.SIGKILL and broker.pid != old_pid,
        })
        say(f"   new pid {broker.pid}; carol reconnects and subscribes")
        carol = Subscriber(url, "carol", [TOPIC], history=history)
        await carol.start()
        await carol.wait_received(ids, timeout=15)
        say(f"   carol received all {len(ids)} messages published while she was away")
        for client in (alice, bob, carol):
            await client.close()
    finally:
        await asyncio.to_thread(broker.terminate)


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
    parser = argparse.ArgumentParser(prog="fastport-lab demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker-cmd", default=DEFAULT_BROKER,
                        help="launch command with {host} {port} {dsn} {store} "
                        "(default: the reference broker)")
    parser.add_argument("--messages", type=int, default=5, help="messages to publish (default 5)")
    parser.add_argument("--history", metavar="FILE", help="write the recorded history as JSON lines")
    args = parser.parse_args(argv)
    if args.messages < 1:
        parser.error("--messages must be at least 1")
    console = Console()
    history = History()
    try:
        with postgres_from_env() as pg:
            console.print(f"[bold]0.[/] PostgreSQL ready on {pg.host}:{pg.port}")
            dsn = pg.create_database(f"fastport_demo_{secrets.token_hex(4)}")
            asyncio.run(_story(console, args.broker_cmd, dsn, history, args.messages))
    except (PostgresEnvError, LaunchError) as exc:
        console.print(f"[red]environment error:[/] {exc}")
        return 3
    except TimeoutError as exc:
        console.print(f"[red]the broker did not deliver in time:[/] {exc}")
    facts = Facts(history)
    verdicts = [check_at_least_once(facts), check_hydration(facts), check_integrity(facts)]
    if args.history:
        history.write(args.history)
    _print_verdicts(console, history, verdicts)
    return 0 if all(v.status == "pass" for v in verdicts) else 1
