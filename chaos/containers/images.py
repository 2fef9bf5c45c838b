"""The images the container backend runs: official ones where a registry answers, local builds elsewhere.

Kinds: ``postgres``, ``toxiproxy`` (the fault proxy), ``broker`` (the reference
broker), all built on ``base``. A spec per kind says which image to use:

* ``auto`` (default for postgres and toxiproxy): the official image
  (:data:`OFFICIAL`) if the engine has it or can pull it, else the local build;
* ``local`` (default for the broker, which has no official image): the local build;
* anything else: that image reference, pulled when missing; no fallback.

Local builds need no image registry, only Debian's mirror and PyPI:
``base`` is ``debootstrap --variant=minbase bookworm`` imported with ``docker import``
(root and the ``debootstrap`` package needed); the others are the Dockerfiles in
``dockerfiles/`` built on it. The broker's Python dependencies come from a wheelhouse
downloaded on the host with pip (the versions installed here), copied into the build
context, so its build reaches no package index.

Cache: every local image is tagged ``fastport-lab/<kind>:<hash of its inputs>`` (recipe,
Dockerfile, copied files, wheels, base tag); when that tag exists the build is skipped, so a
second run on the same machine costs an API call per kind. Builds are serialised per machine
by a file lock, so parallel workers never build the same image twice. Old tags are kept (other
checkouts may still use them); ``python -m chaos.containers prune`` removes them.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from chaos.containers.engine import LABEL_IMAGE, LABEL_INPUTS, ContainerError

__all__ = [
    "BASE_ALIAS",
    "DOCKERFILES",
    "KINDS",
    "OFFICIAL",
    "BuildReport",
    "ImageBuildError",
    "Images",
]

REPO = "fastport-lab"
SUITE = "bookworm"  # its python3 is 3.11, the wheelhouse's target
CONTAINER_PYTHON = "3.11"
BASE_ALIAS = f"{REPO}/base:{SUITE}"  # what the Dockerfiles (and the compose override) build FROM
KINDS = ("postgres", "toxiproxy", "broker")
OFFICIAL: Mapping[str, str] = {"postgres": "postgres:16", "toxiproxy": "ghcr.io/shopify/toxiproxy:2.12.0"}
DOCKERFILES = Path(__file__).resolve().parent / "dockerfiles"
_RECIPE = "2"  # bump to rebuild every local image (a change of the build code, not of its inputs)
_BROKER_DEPS = ("websockets", "asyncpg")

# Files written into the debootstrapped tree: the hygiene of Debian's own container images.
_BASE_FILES: Mapping[str, str] = {
    "usr/sbin/policy-rc.d": "#!/bin/sh\n# no service starts inside image builds\nexit 101\n",
    "etc/apt/apt.conf.d/90fastport-lab": (
        'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\nAcquire::Languages "none";\n'
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";\n'
    ),
    "etc/dpkg/dpkg.cfg.d/90fastport-lab-excludes": (
        "path-exclude=/usr/share/doc/*\npath-include=/usr/share/doc/*/copyright\n"
        "path-exclude=/usr/share/man/*\npath-exclude=/usr/share/info/*\npath-exclude=/usr/share/locale/*\n"
    ),
}
_BASE_PRUNE = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
               "usr/share/info", "usr/share/locale")  # fmt: skip


class ImageBuildError(ContainerError):
    """A local image could not be built (or a given image found); the message has the build's last lines."""


@dataclass(frozen=True)
class BuildReport:
    """How one image was obtained, for timings in logs and reports."""

    kind: str
    image: str
    how: str  # "cached" (tag existed), "built", "official" (present or pulled), "given"
    seconds: float


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_dir() -> Path:
    """Where the wheelhouse and the build lock live: ``$XDG_CACHE_HOME/fastport-lab`` or ``~/.cache/...``."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(root) / "fastport-lab"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One builder per machine at a time (xdist workers, other engineers): nobody builds an image twice."""
    with open(cache_dir() / "images.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def debian_sources(suite: str = SUITE) -> list[str]:
    """The host's apt sources for ``suite`` and its -updates/-security suites, as one-line entries.

    The image then uses the mirror (or caching proxy) this machine is configured with. Empty
    when the host has none for that suite: debootstrap's default mirror is used then.
    """
    override = os.environ.get("FASTPORT_LAB_DEBIAN_MIRROR", "").strip()
    if override:
        return [f"deb {override} {suite} main"]
    entries: list[str] = []
    paths = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in paths:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for block in text.split("\n\n"):
                fields: dict[str, str] = {}
                for line in block.splitlines():
                    if ":" in line and not line.lstrip().startswith("#"):
                        key, _, value = line.partition(":")
                        fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                for uri in fields.get("uris", "").split():
                    for s in fields.get("suites", "").split():
                        if s == suite or s.startswith(f"{suite}-"):
                            entries.append(f"deb {uri} {s} main")
        elif path.name == "sources.list" or path.suffix == ".list":
            for line in text.splitlines():
                tokens = line.split("#", 1)[0].split()
                if (
                    len(tokens) >= 4
                    and tokens[0] == "deb"
                    and not tokens[1].startswith("[")
                    and (tokens[2] == suite or tokens[2].startswith(f"{suite}-"))
                ):
                    entries.append(f"deb {tokens[1]} {tokens[2]} main")
    return list(dict.fromkeys(entries))


def _primary_mirror(sources: list[str]) -> str | None:
    for entry in sources:
        _, uri, suite, _ = entry.split(maxsplit=3)
        if suite == SUITE:
            return uri
    return None


class Images:
    """Resolves and builds the backend's images on one engine; every outcome lands in :attr:`reports`."""

    def __init__(self, client: docker.DockerClient, *, build_timeout: float = 1800.0) -> None:
        self.client = client
        self.build_timeout = build_timeout
        self.reports: list[BuildReport] = []
        self.notes: list[str] = []  # why auto chose a local build, etc.
        self._resolved: dict[tuple[str, str], str] = {}
        self._base_tag: str | None = None

    # --- public -----------------------------------------------------------------------------

    def resolve(self, kind: str, spec: str = "auto") -> str:
        """The image reference to run for ``kind`` under ``spec`` (auto | local | a reference)."""
        if kind not in KINDS:
            raise ValueError(f"unknown image kind {kind!r}; choose from {', '.join(KINDS)}")
        spec = (spec or "auto").strip()
        key = (kind, spec)
        if key not in self._resolved:
            self._resolved[key] = self._resolve(kind, spec)
        return self._resolved[key]

    def local(self, kind: str) -> str:
        """The local build of ``kind`` (``base`` too), built unless its tag exists already."""
        with _build_lock():
            if kind == "base":
                return self._base()
            return self._dockerfile_image(kind, self._base())

    def exists(self, ref: str) -> bool:
        try:
            self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            return False
        return True

    def prune(self) -> list[str]:
        """Remove local builds other than the current tag of each kind (and unused); their tags.

        The ``:compose`` tags of docker-compose.local.yml are kept too; untagged (dangling)
        images with the lab's label, left by rebuilds under the same tag, are removed.
        """
        keep = {self.local(k) for k in KINDS} | {self.local("base"), BASE_ALIAS}
        removed = []
        for image in self.client.images.list(filters={"label": LABEL_IMAGE}):
            tags = set(image.tags)
            if not tags or (not tags & keep and not any(t.endswith(":compose") for t in tags)):
                with contextlib.suppress(docker.errors.APIError):  # in use by a container: kept
                    self.client.images.remove(image.id)
                    removed += image.tags or [image.short_id]
        return removed

    # --- resolution -------------------------------------------------------------------------

    def _resolve(self, kind: str, spec: str) -> str:
        t0 = time.monotonic()
        if spec == "local" or (spec == "auto" and kind not in OFFICIAL):
            return self.local(kind)
        ref = OFFICIAL[kind] if spec == "auto" else spec
        if self.exists(ref):
            self.reports.append(BuildReport(kind, ref, "official" if spec == "auto" else "given", 0.0))
            return ref
        try:
            self.client.images.pull(ref)
        except docker.errors.DockerException as exc:
            if spec != "auto":
                raise ImageBuildError(
                    f"image {ref!r} ({kind}) is not on this engine and cannot be pulled: {exc}"
                ) from exc
            self.notes.append(f"{kind}: {ref} cannot be pulled ({_short(exc)}); using the local build")
            return self.local(kind)
        self.reports.append(
            BuildReport(kind, ref, "official" if spec == "auto" else "given", time.monotonic() - t0)
        )
        return ref

    # --- base: debootstrap + docker import --------------------------------------------------

    def _base(self) -> str:
        if self._base_tag is not None and self.exists(self._base_tag):
            return self._base_tag
        self._base_tag = self._ensure_base()
        return self._base_tag

    def _ensure_base(self) -> str:
        t0 = time.monotonic()
        sources = debian_sources()
        arch = _dpkg_arch()
        inputs = json.dumps(
            {"recipe": _RECIPE, "suite": SUITE, "variant": "minbase", "arch": arch, "sources": sources,
             "files": dict(_BASE_FILES), "prune": _BASE_PRUNE},
            sort_keys=True,
        )  # fmt: skip
        digest = _sha(inputs.encode())[:12]
        tag = f"{REPO}/base:{SUITE}-{digest}"
        if self.exists(tag):
            self._tag(tag, BASE_ALIAS)
            self._report("base", tag, "cached", t0)
            return tag
        if os.geteuid() != 0:
            raise ImageBuildError(
                "building the local base image runs debootstrap, which needs root; run once as root "
                f"(python -m chaos.containers images) or provide {BASE_ALIAS} yourself"
            )
        if shutil.which("debootstrap") is None:
            raise ImageBuildError(
                "debootstrap is not installed (apt-get install debootstrap; .ci/docker-engine installs it)"
            )
        work = Path(tempfile.mkdtemp(prefix="fastport-lab-rootfs-", dir="/var/tmp"))
        try:
            rootfs = work / "rootfs"
            cmd = ["debootstrap", "--variant=minbase", f"--arch={arch}", SUITE, str(rootfs)]
            mirror = _primary_mirror(sources)
            if mirror:
                cmd.append(mirror)
            try:
                out = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=self.build_timeout, stdin=subprocess.DEVNULL
                )
            except subprocess.TimeoutExpired as exc:
                raise ImageBuildError(f"{' '.join(cmd)} hung for {self.build_timeout:.0f} s") from exc
            if out.returncode != 0:
                tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-15:])
                log = rootfs / "debootstrap" / "debootstrap.log"
                if log.exists():
                    tail += "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise ImageBuildError(f"{' '.join(cmd)} failed (exit {out.returncode}):\n{tail}")
            for rel in _BASE_PRUNE:
                target = rootfs / rel
                if target.is_dir():
                    for child in target.iterdir():
                        if child.is_dir() and not child.is_symlink():
                            shutil.rmtree(child, ignore_errors=True)
                        else:
                            child.unlink(missing_ok=True)
            for rel, text in _BASE_FILES.items():
                path = rootfs / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                path.chmod(0o755 if rel.startswith("usr/sbin/") else 0o644)
            if sources:
                (rootfs / "etc/apt/sources.list").write_text("\n".join(sources) + "\n")
            self._import(rootfs, tag, digest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self._tag(tag, BASE_ALIAS)
        self._report("base", tag, "built", t0)
        return tag

    def _import(self, rootfs: Path, tag: str, digest: str) -> None:
        repo, _, version = tag.rpartition(":")
        changes = [
            f"LABEL {LABEL_IMAGE}=base",
            f"LABEL {LABEL_INPUTS}={digest}",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            'CMD ["/bin/bash"]',
        ]
        tar = subprocess.Popen(
            ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", "-", "."],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert tar.stdout is not None
        try:
            self.client.api.import_image_from_stream(
                tar.stdout, repository=repo, tag=version, changes=changes
            )
        except docker.errors.DockerException as exc:
            tar.kill()
            raise ImageBuildError(f"docker import of the debootstrapped tree failed: {exc}") from exc
        finally:
            tar.stdout.close()
            err = tar.stderr.read().decode(errors="replace") if tar.stderr else ""
            code = tar.wait()
        if code != 0:
            raise ImageBuildError(f"tar of the debootstrapped tree failed (exit {code}): {err.strip()}")
        if not self.exists(tag):
            raise ImageBuildError(f"docker import reported success but {tag} is missing")

    # --- Dockerfile images ------------------------------------------------------------------

    def _dockerfile_image(self, kind: str, base: str) -> str:
        t0 = time.monotonic()
        files = self._context_files(kind)
        h = hashlib.sha256()
        h.update(f"{_RECIPE}\0{kind}\0{self.client.images.get(base).id}\0".encode())
        for rel in sorted(files):
            h.update(f"{rel}\0{_sha(files[rel].read_bytes())}\0".encode())
        digest = h.hexdigest()[:12]
        tag = f"{REPO}/{kind}:{digest}"
        if self.exists(tag):
            self._report(kind, tag, "cached", t0)
            return tag
        with tempfile.TemporaryDirectory(prefix=f"fastport-lab-{kind}-context-") as ctx:
            for rel, src in files.items():
                dst = Path(ctx) / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
            self._build(kind, ctx, f"chaos/containers/dockerfiles/{kind}.Dockerfile", tag, base, digest)
        self._report(kind, tag, "built", t0)
        return tag

    def _build(self, kind: str, ctx: str, dockerfile: str, tag: str, base: str, digest: str) -> None:
        lines: list[str] = []
        try:
            stream = self.client.api.build(
                path=ctx, dockerfile=dockerfile, tag=tag, buildargs={"BASE": base},
                labels={LABEL_IMAGE: kind, LABEL_INPUTS: digest}, rm=True, forcerm=True, pull=False,
                network_mode="host",  # apt reaches the mirror also where the bridge has no NAT (iptables off)
                decode=True, timeout=int(self.build_timeout),
            )  # fmt: skip
            for chunk in stream:
                if "stream" in chunk:
                    lines += chunk["stream"].rstrip("\n").splitlines()
                if "error" in chunk:
                    raise ImageBuildError(
                        f"building {tag} failed: {chunk['error'].strip()}\n" + "\n".join(lines[-25:])
                    )
        except docker.errors.DockerException as exc:
            raise ImageBuildError(f"building {tag} failed: {exc}\n" + "\n".join(lines[-25:])) from exc
        if not self.exists(tag):
            raise ImageBuildError(f"building {tag} ended without the image:\n" + "\n".join(lines[-25:]))

    def _context_files(self, kind: str) -> dict[str, Path]:
        """Build-context path -> source file; the same layout as the repository (see .dockerignore)."""
        here = "chaos/containers/dockerfiles"
        files = {f"{here}/{kind}.Dockerfile": DOCKERFILES / f"{kind}.Dockerfile"}
        if kind == "postgres":
            files[f"{here}/postgres-entrypoint.sh"] = DOCKERFILES / "postgres-entrypoint.sh"
        elif kind == "toxiproxy":
            chaos_dir = DOCKERFILES.parents[1]
            for src in _chaos_closure(chaos_dir, sorted((chaos_dir / "toxiproxy").glob("*.py"))):
                files[f"chaos/{src.relative_to(chaos_dir)}"] = src
        elif kind == "broker":
            spec = importlib.util.find_spec("broker")
            if spec is None or not spec.submodule_search_locations:
                raise ImageBuildError("the reference broker package (broker/) is not importable here")
            broker_dir = Path(next(iter(spec.submodule_search_locations)))
            for src in sorted(broker_dir.rglob("*.py")):
                files[f"broker/{src.relative_to(broker_dir)}"] = src
            for src in sorted(self._wheelhouse().iterdir()):
                files[f"wheels/{src.name}"] = src
        return files

    def _wheelhouse(self) -> Path:
        """Wheels of the broker's dependencies (versions installed here) and pip, for the image's Python."""
        try:
            pins = [f"{name}=={importlib.metadata.version(name)}" for name in _BROKER_DEPS]
            pip_pin = f"pip=={importlib.metadata.version('pip')}"
        except importlib.metadata.PackageNotFoundError as exc:
            raise ImageBuildError(f"cannot pin the broker's dependencies: {exc} is not installed") from exc
        machine = platform.machine()
        key = _sha(json.dumps([pins, pip_pin, CONTAINER_PYTHON, machine]).encode())[:12]
        target = cache_dir() / f"wheels-{key}"
        if (target / "requirements.txt").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f"wheels-{key}-", dir=cache_dir()))
        abi = "cp" + CONTAINER_PYTHON.replace(".", "")
        # pip does not widen a given --platform to older glibc tags: list those bookworm (2.36) runs
        platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(36, 4, -1)]
        platforms += [f"manylinux2014_{machine}", f"manylinux2010_{machine}", f"manylinux1_{machine}"]
        cmd = [
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--python-version", CONTAINER_PYTHON, "--implementation", "cp",
            "--abi", abi, "--abi", "abi3", "--abi", "none",
            *(arg for p in platforms for arg in ("--platform", p)), "-d", str(tmp), *pins, pip_pin,
        ]  # fmt: skip
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ImageBuildError("pip download of the broker's wheels hung for 600 s") from exc
        if out.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-10:])
            raise ImageBuildError(f"pip download of the broker's wheels failed:\n{tail}")
        (tmp / "requirements.txt").write_text("\n".join(pins) + "\n")
        try:
            tmp.rename(target)
        except OSError:  # another process made it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    # --- helpers ----------------------------------------------------------------------------

    def _tag(self, image: str, alias: str) -> None:
        repo, _, tag = alias.rpartition(":")
        self.client.images.get(image).tag(repo, tag)

    def _report(self, kind: str, image: str, how: str, t0: float) -> None:
        self.reports.append(BuildReport(kind, image, how, round(time.monotonic() - t0, 2)))


def _chaos_closure(chaos_dir: Path, start: list[Path]) -> list[Path]:
    """``start`` and every module of the ``chaos`` package they import, transitively (with the
    packages' ``__init__.py``), plus ``chaos/reaper.py``, which the supervisor runs by path.

    The fault proxy needs nothing outside the standard library, but it does use other lab
    modules (the supervisor), so the image gets exactly those and nothing else.
    """
    seen: dict[Path, None] = {}
    todo = list(start)
    while todo:
        path = todo.pop()
        if path in seen or not path.exists():
            continue
        seen[path] = None
        rel = path.relative_to(chaos_dir)
        for parent in rel.parents:  # the __init__.py of each package on the way
            todo.append(chaos_dir / parent / "__init__.py")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] != "chaos":
                    continue
                base = chaos_dir.joinpath(*parts[1:])
                todo += [base.with_suffix(".py"), base / "__init__.py"]
        if rel.as_posix() == "supervisor.py":
            todo.append(chaos_dir / "reaper.py")
    return sorted(seen)


def _dpkg_arch() -> str:
    try:
        return subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
