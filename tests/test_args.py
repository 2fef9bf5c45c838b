"""Usage errors of the lab's commands exit 3 (the gate's "environment or usage error"), never argparse's 2.

Exit 2 means "a verdict is unknown" to a CI job reading ``run``, ``gate`` or
``soak``; a typo in an option must not look like that. Real subprocesses, real
exit codes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fastport_lab.args import LabArgumentParser


def lab(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fastport_lab.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--no-such-option"], "unrecognized arguments: --no-such-option"),
        (["run", "--seed", "x"], "argument --seed: invalid int value: 'x'"),
        (["run", "--store", "redis"], "argument --store: invalid choice: 'redis'"),
        (["soak", "--cycles", "many"], "argument --cycles: invalid int value: 'many'"),
        (["soak", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["gate", "--no-such-option"], "unrecognized arguments: --no-such-option"),
        (["gate", "--unknown", "maybe"], "argument --unknown: invalid choice: 'maybe'"),
        (["mutants", "--intensity", "extreme"], "argument --intensity: invalid choice: 'extreme'"),
    ],
)
def test_a_bad_option_is_a_usage_error_exit_3(args: list[str], message: str) -> None:
    out = lab(*args)
    assert out.returncode == 3, out.stdout + out.stderr
    assert message in out.stderr
    assert out.stderr.startswith("usage: fastport-lab ")
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("command", ["run", "soak", "gate", "mutants"])
def test_help_still_exits_0(command: str) -> None:
    out = lab(command, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: fastport-lab" in out.stdout or "fastport-lab mutants" in out.stdout


def test_the_parser_exits_3_with_usage_and_message(capsys) -> None:
    p = LabArgumentParser(prog="fastport-lab x")
    p.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as exc:
        p.parse_args(["--n", "two"])
    assert exc.value.code == 3
    err = capsys.readouterr().err
    assert err.startswith("usage: fastport-lab x [-h] [--n N]\n")
    assert "fastport-lab x: error: argument --n: invalid int value: 'two'" in err


@pytest.mark.parametrize("args", [["mutants", "--help"], ["--help"]])
def test_a_closed_pipe_ends_the_command_quietly(args: list[str]) -> None:
    """``fastport-lab mutants --help | head -0``: the reader is gone before anything is written."""
    read, write = os.pipe()
    os.close(read)
    try:
        cmd = [sys.executable, "-m", "fastport_lab.cli", *args]
        out = subprocess.run(
            cmd, stdout=write, stderr=subprocess.PIPE, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    finally:
        os.close(write)
    assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr
    assert out.stderr == ""
    assert out.returncode == 141  # 128 + SIGPIPE, as a tool the pipe's signal ended
