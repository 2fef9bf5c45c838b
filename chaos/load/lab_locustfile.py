"""The locustfile of ``fastport-lab load``: the FastPort users, each process recording its history.

It is ``scenarios/load/locustfile.py`` plus what the lab needs to judge the run:

* ``--fp-history-dir DIR``: every process (each worker of ``--processes K``,
  ``--worker`` on another machine with a shared DIR, or the only process)
  records what its users observed with a :class:`~chaos.load.recorder.HistoryRecorder`
  and writes ``DIR/<host>-<pid>.npz`` when it quits; the lab merges them.
* On the controller (master, or the only process), one JSON line on stdout
  when the load starts (``{"event": "load_started", "t": <unix time>}``): the
  lab starts its fault schedule from it, whether the run started headless or
  from the web UI.

Faults are not run here: the lab runs them once, in its own process, while
Locust runs (``chaos/load/driver.py``).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from locust import events
from locust.env import Environment

from chaos.load.recorder import HistoryRecorder, NullRecorder, Recorder
from chaos.load.users import FastPortPublisher, FastPortSubscriber, configure, is_controller

__all__ = ["FastPortPublisher", "FastPortSubscriber"]


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        "--fp-history-dir",
        default="",
        metavar="DIR",
        help="each process writes what its users observed to DIR/<host>-<pid>.npz (fastport-lab load)",
    )


def _recorder(environment: Environment) -> Recorder:
    folder = getattr(environment.parsed_options, "fp_history_dir", "")
    if not folder:
        return NullRecorder()
    Path(folder).mkdir(parents=True, exist_ok=True)
    return HistoryRecorder(path=Path(folder) / f"{socket.gethostname()}-{os.getpid()}.npz")


configure(recorder_factory=_recorder)


@events.test_start.add_listener
def _announce(environment: Environment, **_kw: Any) -> None:
    if is_controller(environment):
        print(json.dumps({"event": "load_started", "t": time.time()}), file=sys.stdout, flush=True)
