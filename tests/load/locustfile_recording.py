"""Test locustfile: the FastPort users, a MemoryRecorder per process, merged on the master, dumped as JSON.

This is also the pattern for the lab's history writer: a recorder factory via
``configure``, and once-per-run code on the controller (``is_controller``).
"""

from __future__ import annotations

import json
from typing import Any

from locust import events
from locust.env import Environment

from chaos.load.recorder import MemoryRecorder
from chaos.load.users import FastPortPublisher, FastPortSubscriber, configure, context, is_controller

__all__ = ["FastPortPublisher", "FastPortSubscriber"]

configure(recorder_factory=lambda environment: MemoryRecorder())


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument("--test-records", default=None, help="write the merged recorder events here (JSON)")


@events.quitting.add_listener
def _dump(environment: Environment, **_kw: Any) -> None:
    path = getattr(environment.parsed_options, "test_records", None)
    if path and is_controller(environment):
        with open(path, "w") as fh:
            json.dump(context(environment).recorder.events, fh)  # type: ignore[attr-defined]
