"""The ``fastport-lab`` command: a thin dispatcher to each part's own ``main(argv)``.

Each subcommand lives beside the code it drives and parses its own arguments,
so this module only maps names to entry points and imports them lazily (a
``fastport-lab toxiproxy`` start-up should not pay for importing the broker).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("fastport_lab.run:main", "run the chaos suites with a live display, then write the HTML report"),
    "demo": ("fastport_lab.demo:main", "the reference broker on embedded PostgreSQL: a round trip, a kill"),
    "broker": ("broker.cli:main", "run the reference FastPort broker"),
    "toxiproxy": ("chaos.toxiproxy.cli:main", "run the embedded Toxiproxy-compatible fault proxy"),
    "gate": ("fastport_lab.gate:main", "run the chaos suites and gate on their verdicts (exit 0/1/2/3)"),
    "soak": ("fastport_lab.soak:main", "a hundred seeded fault cycles under steady traffic, judged"),
    "load": ("fastport_lab.load:main", "Locust load with a fault schedule during it, judged by the checkers"),
    "mutants": (
        "fastport_lab.mutants:main",
        "the seeded bugs (foreign mutants, reference flaws): the kill rate",
    ),
}
BENCHMARKS: dict[str, tuple[str, str]] = {
    "broker": ("chaos.bench.broker:main", "broker throughput and latency beside a bare websockets relay"),
    "proxy": ("chaos.bench.proxy:main", "fault-proxy overhead beside a direct connection"),
    "load": ("chaos.load.bench:main", "deliveries/s the Locust rig drives, beside the lean client"),
}
EXIT_USAGE = 3  # the gate's "the lab could not run": a typo in a CI script must not read as a verdict
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a tool ended by its reader leaving exits with


def _usage() -> str:
    lines = ["usage: fastport-lab COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<14}{help_}" for name, (_, help_) in COMMANDS.items()]
    lines += [f"  bench {name:<8}{help_}" for name, (_, help_) in BENCHMARKS.items()]
    lines += ["", "Run 'fastport-lab COMMAND --help' for a command's options."]
    return "\n".join(lines)


def _call(target: str, argv: list[str]) -> int:
    module, func = target.split(":")
    result = getattr(importlib.import_module(module), func)(argv)
    return int(result or 0)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _dispatch(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return code
    except KeyboardInterrupt:
        print("fastport-lab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `fastport-lab mutants --help | head`: the reader left; say nothing more (no traceback), and
        # point stdout at /dev/null so that the interpreter's own flush at exit does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _dispatch(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name == "bench":
        if not rest or rest[0] not in BENCHMARKS:
            print(f"fastport-lab bench: choose one of {', '.join(BENCHMARKS)}", file=sys.stderr)
            return 2
        return _call(BENCHMARKS[rest[0]][0], rest[1:])
    if name not in COMMANDS:
        print(f"fastport-lab: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return EXIT_USAGE
    return _call(COMMANDS[name][0], rest)


if __name__ == "__main__":
    sys.exit(main())
