"""``python -m broker`` / ``fastport-lab broker``: parse options, set up logging, run until SIGTERM."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from . import logs
from .config import parse_args


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_args(args)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return int(exc.code or 0)
    logs.setup(cfg.log_format, cfg.log_level)
    from .server import run  # after logging is set up; keeps --help fast

    try:
        return asyncio.run(run(cfg))
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130
