"""Docs and docstrings that quote the code: each figure and list checked against the code it quotes."""

from __future__ import annotations

import re
from pathlib import Path

import chaos.plugin
import chaos.suites.crash
from chaos.config import PRESETS
from chaos.suites import SUITES

ROOT = Path(__file__).resolve().parents[1]


def test_the_crash_suite_docstring_gives_the_default_offline_backlog() -> None:
    backlog = f"{PRESETS['default'].offline_backlog:,}"
    assert f"a backlog ({backlog} messages at default intensity" in chaos.suites.crash.__doc__


class _Options:
    """Stands in for pytest's parser and option group: keeps the option names the plugin adds."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def getgroup(self, *_args: object) -> _Options:
        return self

    def addoption(self, *names: str, **_kwargs: object) -> None:
        self.names += names


def _plugin_options() -> list[str]:
    options = _Options()
    chaos.plugin.pytest_addoption(options)
    return options.names


def test_plugin_md_documents_every_option_of_the_plugin() -> None:
    text = (ROOT / "docs" / "plugin.md").read_text()
    options = _plugin_options()
    assert "--backend" in options and "--broker-image" in options
    rows = set(re.findall(r"^\| `(--[a-z-]+)", text, re.M))
    assert set(options) <= rows, f"missing from docs/plugin.md's option table: {set(options) - rows}"


def test_plugin_md_lists_every_built_in_suite() -> None:
    text = (ROOT / "docs" / "plugin.md").read_text()
    section = text.split("## Built-in suites as library code", 1)[1]
    for name, suite in SUITES.items():
        assert f"`{name}`" in section, f"suite {name!r} missing from docs/plugin.md's built-in suites"
        assert suite.module.replace(".", "/") + ".py" in section or suite.module in section, suite.module
