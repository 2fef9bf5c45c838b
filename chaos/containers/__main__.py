"""``python -m chaos.containers``: the backend's images and leftovers, from a shell.

    python -m chaos.containers status            does an engine answer (exit 0) or not (exit 1)
    python -m chaos.containers images [KIND...]  resolve/build images (base postgres toxiproxy broker;
                                                 default all), print how each was obtained and how long
    python -m chaos.containers prune             remove older local builds (keeps the current tags)
    python -m chaos.containers reap [SESSION]    remove a session's containers and volumes, or (no
                                                 argument) those of every dead lab on this host

Image specs come from FASTPORT_LAB_PG_IMAGE / FASTPORT_LAB_PROXY_IMAGE / FASTPORT_LAB_BROKER_IMAGE
(``auto``, ``local`` or a reference), as for the backend; ``images --local`` forces local builds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from chaos.containers.backend import ENV_BROKER_IMAGE, ENV_PG_IMAGE, ENV_PROXY_IMAGE
from chaos.containers.engine import ContainerError, connect, engine_status, reap_stale, remove_session
from chaos.containers.images import Images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.containers", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="does a Docker engine answer")
    images = sub.add_parser("images", help="resolve or build the backend's images")
    images.add_argument("kinds", nargs="*", metavar="KIND", help="base, postgres, toxiproxy, broker")
    images.add_argument("--local", action="store_true", help="local builds, whatever the specs say")
    images.add_argument("--json", action="store_true", help="one JSON object per image")
    sub.add_parser("prune", help="remove older local builds")
    reap = sub.add_parser("reap", help="remove leftovers of a session, or of every dead lab here")
    reap.add_argument("session", nargs="?")
    args = parser.parse_args(argv)
    if args.command == "images":
        wrong = [k for k in args.kinds if k not in ("base", "postgres", "toxiproxy", "broker")]
        if wrong:
            parser.error(f"unknown image kind(s) {', '.join(wrong)}: use base, postgres, toxiproxy, broker")

    if args.command == "status":
        ok, why = engine_status()
        print(why)
        return 0 if ok else 1
    try:
        client = connect()
        if args.command == "images":
            return _images(Images(client), args.kinds or ["postgres", "toxiproxy", "broker"], args)
        if args.command == "prune":
            for tag in Images(client).prune():
                print(f"removed {tag}")
            return 0
        removed = remove_session(client, args.session) if args.session else reap_stale(client)
        for name in removed:
            print(f"removed {name}")
        return 0
    except ContainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _images(images: Images, kinds: list[str], args: argparse.Namespace) -> int:
    specs = {
        "postgres": os.environ.get(ENV_PG_IMAGE, "").strip() or "auto",
        "toxiproxy": os.environ.get(ENV_PROXY_IMAGE, "").strip() or "auto",
        "broker": os.environ.get(ENV_BROKER_IMAGE, "").strip() or "local",
    }
    t0 = time.monotonic()
    for kind in kinds:
        if kind == "base" or args.local:
            images.local(kind)
        else:
            images.resolve(kind, specs[kind])
    for note in images.notes:
        print(f"note: {note}", file=sys.stderr)
    for r in images.reports:
        if args.json:
            print(json.dumps({"kind": r.kind, "image": r.image, "how": r.how, "seconds": r.seconds}))
        else:
            print(f"{r.kind:10} {r.how:8} {r.seconds:7.1f} s  {r.image}")
    if not args.json:
        print(f"total {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
