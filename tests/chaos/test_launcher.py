"""The launcher: placeholders (unit) and real processes, signals and reaping (integration)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from chaos.checkers import check_startup
from chaos.history import History
from chaos.launcher import BrokerUnderTest, LaunchError, launch, render_command
from tests.chaos.conftest import BROKER_CMD, ROOT, needs_broker
from tests.sigint import sigint_default

PY = sys.executable


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """The process is dead (a zombie counts: an orphan waits for init to reap it); polls, as SIGKILL lands
    asynchronously. The timeout is a hang guard, not a synchronisation sleep."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if _state(pid) in ("Z", "X"):
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_state(pid: int, want: str, timeout: float = 10.0) -> str:
    """Poll /proc until the kernel shows *want* (signals land asynchronously); the timeout is a hang guard."""
    deadline = time.monotonic() + timeout
    while (s := _state(pid)) != want and time.monotonic() < deadline:
        time.sleep(0.01)
    return s


# --- unit ------------------------------------------------------------------------------


def test_render_command_fills_placeholders_per_token():
    argv = render_command(
        "broker --port {port} --dsn {dsn} --x=h{host}:{port} --store {store}",
        port=1234,
        dsn="host=a password='x y'",
        store="postgres",
    )
    assert argv == [
        "broker",
        "--port",
        "1234",
        "--dsn",
        "host=a password='x y'",
        "--x=h127.0.0.1:1234",
        "--store",
        "postgres",
    ]
    assert render_command(["a", "{port}"], port=0) == ["a", "0"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"template": ""}, "launch command is empty"),
        ({"template": "a 'unclosed"}, "cannot be split"),
        ({"template": "a {prot}"}, r"unknown placeholder \{prot\}"),
        ({"template": "a {dsn}"}, r"uses \{dsn\} but no dsn was given"),
        ({"template": "a", "store": "disk"}, "store must be one of"),
        ({"template": "a", "port": 70000}, "port must be an integer"),
        ({"template": "a", "ready_timeout": 0}, "ready_timeout must be > 0"),
    ],
)
def test_render_command_rejects_bad_input(kwargs, message):
    template = kwargs.pop("template")
    with pytest.raises(ValueError, match=message):
        BrokerUnderTest(template, **kwargs)


# --- integration: fake brokers (plain python commands) ------------------------------------


@pytest.mark.integration
def test_exit_before_listening_reports_code_elapsed_and_stderr():
    h = History()
    cmd = [PY, "-c", "import sys; print('not json'); print('boom on {port}', file=sys.stderr); sys.exit(4)"]
    with pytest.raises(LaunchError, match=r"(?s)exited with code 4 .*boom on 0") as err:
        launch(cmd, history=h)
    r = err.value.result
    assert (r.reason, r.exit_code, r.stderr) == ("exited", 4, ["boom on 0"])
    assert 0 < r.elapsed < 30
    fail = h.by_f("launch", type="fail")[0]
    assert fail.value["exit_code"] == 4 and fail.value["stderr"] == ["boom on 0"]
    assert h.by_f("exit")[0].value["exit_code"] == 4


@pytest.mark.integration
def test_hang_is_killed_and_reported():
    h = History()
    code = (
        "import sys, time; print('starting', file=sys.stderr, flush=True); "
        'print(\'{"event": "listening", "port": "8080"}\', flush=True); time.sleep(120)'
    )
    with pytest.raises(
        LaunchError, match=r"(?s)neither printed its listening line nor exited.*port.: .8080"
    ) as err:
        launch([PY, "-c", code], history=h, ready_timeout=1.5)
    r = err.value.result
    assert r.reason == "hang" and r.exit_code == -9 and r.stderr == ["starting"]
    pid = h.by_f("launch", type="fail")[0].value["pid"]
    assert _gone(pid)


@pytest.mark.integration
def test_missing_executable_is_a_clear_error():
    with pytest.raises(LaunchError, match="could not be executed") as err:
        launch("/nonexistent/broker --port {port}")
    assert err.value.result.reason == "not-found" and "FileNotFoundError" in err.value.result.stderr[0]


FAKE = textwrap.dedent("""
    import json, os, socket, subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
    print("noise", flush=True)
    print(json.dumps({"event": "listening", "host": "127.0.0.1", "port": s.getsockname()[1],
                      "pid": os.getpid(), "child": child.pid}), flush=True)
    while True:
        s.accept()[0].close()
""")


@pytest.mark.integration
def test_signals_reach_the_whole_group_and_everything_is_reaped():
    h = History()
    with launch([PY, "-c", FAKE, "{port}"], history=h) as b:
        child = b.listening["child"]
        assert b.port > 0 and b.url == f"ws://127.0.0.1:{b.port}/" and b.alive
        b.stop()
        assert _wait_state(b.pid, "T") == "T" and _wait_state(child, "T") == "T"
        b.cont()
        assert _wait_state(b.pid, "S") != "T"
        with socket.create_connection(("127.0.0.1", b.port), timeout=10):
            pass
        pid = b.pid
    assert b.returncode == -15 and _gone(pid) and _gone(child)
    sigs = [e.value["signal"] for e in h.by_f("signal")]
    assert sigs == ["SIGSTOP", "SIGCONT", "SIGTERM"]
    assert h.by_f("exit")[0].value | {"uptime": 0} == {
        "pid": pid,
        "exit_code": -15,
        "uptime": 0,
        "signalled": True,
    }


@pytest.mark.integration
def test_kill_and_terminate_escalation():
    ignore_term = (
        "import json, os, signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(json.dumps({'event': 'listening', 'port': 1, 'pid': os.getpid()}), flush=True); "
        "import time; time.sleep(300)"
    )
    b = launch([PY, "-c", ignore_term])
    assert b.terminate(timeout=0.5) == -9  # SIGTERM ignored, escalated to SIGKILL
    b2 = launch([PY, "-c", ignore_term])
    assert b2.kill() == -9 and not b2.alive
    assert b2.kill() == -9  # idempotent


@pytest.mark.integration
def test_context_exit_on_error_reaps():
    with pytest.raises(RuntimeError, match="scenario blew up"), launch([PY, "-c", FAKE, "0"]) as b:
        pid = b.pid
        raise RuntimeError("scenario blew up")
    assert _gone(pid)


@pytest.mark.integration
def test_atexit_reaps_a_broker_the_script_forgot(tmp_path):
    script = tmp_path / "forget.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from chaos.launcher import launch
        b = launch([sys.executable, "-c", {FAKE!r}, "0"])
        print(b.pid, b.listening["child"], flush=True)
    """)
    )
    out = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=60, check=True)
    pid, child = map(int, out.stdout.split())
    assert _gone(pid) and _gone(child)


# --- integration: the reference broker -----------------------------------------------------


@needs_broker
@pytest.mark.integration
def test_reference_broker_starts_answers_healthz_and_terminates_cleanly(history, ref_broker):
    with urllib.request.urlopen(ref_broker.healthz_url, timeout=10) as resp:
        assert resp.status == 200
    assert history.by_f("launch", type="ok")[0].value["port"] == ref_broker.port
    assert ref_broker.terminate() == 0


@needs_broker
@pytest.mark.integration
def test_port_taken_start_up_is_judged_by_the_checker():
    h = History()
    squat = socket.socket()
    try:
        squat.bind(("127.0.0.1", 0))
        squat.listen()
        port = squat.getsockname()[1]
        h.append(
            "nemesis", "info", "fault-start", value={"name": "port-squat", "port": port, "effective": True}
        )
        with pytest.raises(LaunchError) as err:
            BrokerUnderTest(BROKER_CMD, history=h, port=port, cwd=str(ROOT), ready_timeout=20).start()
        h.append("nemesis", "info", "fault-stop", value={"name": "port-squat"})
    finally:
        squat.close()
    r = err.value.result
    assert r.reason == "exited" and r.exit_code not in (None, 0)
    v = check_startup(h)
    assert v.status == "pass", v.summary
    assert v.evidence["attempts"][0]["exit_code"] == r.exit_code


@pytest.mark.integration
def test_ctrl_c_while_waiting_for_listening_reaps_the_broker(tmp_path):
    pidfile = tmp_path / "pid"
    hang = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(300)"
    script = tmp_path / "interrupted.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from chaos.launcher import launch
        launch([sys.executable, "-c", {hang!r}, {str(pidfile)!r}], ready_timeout=120)
    """)
    )
    proc = subprocess.Popen(
        [PY, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=sigint_default,  # a Ctrl-C reaches it even if this run was started with SIGINT ignored
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.01)  # hang guard while the script starts its broker
        pid = int(pidfile.read_text())
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert "KeyboardInterrupt" in err
    assert _gone(pid)
