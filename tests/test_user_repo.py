"""examples/user-repo, as a user gets it: copied out, fastport-lab installed non-editable, plain ``pytest``.

The checkout is built into a wheel and installed into a fresh virtual
environment (not editable: the plugin must come from the install's own
``pytest11`` entry point, the suites and the reference broker from its own
site-packages). The dependencies are not downloaded again: a ``.pth`` line lets
the new environment see this one's site-packages (a path line only, so this
checkout's editable install is not activated there). Then the example, copied
into an empty directory, must pass against the reference broker and fail, with
the availability verdict, against ``--flaw store-first``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "user-repo"


def _sh(*cmd: str | Path, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def _source_copy(dest: Path) -> Path:
    """The checkout's files as they are now (tracked and untracked, not ignored), without .venv or runs."""
    listed = _sh("git", "-C", ROOT, "ls-files", "-co", "--exclude-standard", "-z")
    if listed.returncode == 0:
        for name in filter(None, listed.stdout.split("\0")):
            src = ROOT / name
            if src.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
    else:  # not a git checkout (an unpacked sdist): copy what matters
        for name in (
            "pyproject.toml",
            "README.md",
            "broker",
            "chaos",
            "scenarios",
            "reports",
            "fastport_lab",
        ):
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "runs"))
            else:
                shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def user_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("user-install")
    src = _source_copy(base / "src")
    wheels = base / "wheels"
    built = _sh(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, src
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("fastport_lab-*.whl")
    venv = base / "venv"
    made = _sh(sys.executable, "-m", "venv", "--without-pip", venv)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    purelib = Path(
        _sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    )
    (purelib / "zz-lab-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = _sh(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel)
    assert done.returncode == 0, done.stdout + done.stderr
    probe = "import chaos, broker; print(chaos.__file__, broker.__file__)"
    where = _sh(python, "-c", probe, cwd=base).stdout  # not from here: -c puts the cwd first on sys.path
    assert str(purelib) in where and str(ROOT) not in where, where  # the installed copy, not this checkout
    return python


@pytest.fixture
def user_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "my-broker-chaos-tests"
    shutil.copytree(EXAMPLE, repo)
    return repo


def _pytest(python: Path, repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _sh(python, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args, cwd=repo)


def test_the_example_passes_against_the_reference_broker(user_python: Path, user_repo: Path) -> None:
    out = _pytest(user_python, user_repo)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 passed" in out.stdout, out.stdout


def test_the_example_fails_with_the_availability_verdict_on_store_first(
    user_python: Path, user_repo: Path
) -> None:
    reference = f"{user_python} -m broker --host {{host}} --port {{port}} --store {{store}} --dsn {{dsn}}"
    cmd = reference + " --flaw store-first"
    # The failing run's folder is kept for its post-mortem: here, in this test's tmp_path.
    out = _pytest(user_python, user_repo, "--broker-cmd", cmd, "--run-dir", str(user_repo.parent / "runs"))
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "FAILED tests/test_my_broker.py::test_slow_storage_does_not_slow_delivery" in text
    assert "availability-under-storage-faults=fail" in text  # the right checker, with its evidence
    assert '"windows"' in text and "storage-latency" in text
    assert "PASSED tests/test_my_broker.py::test_killed_broker_redelivers_what_it_persisted" in text
