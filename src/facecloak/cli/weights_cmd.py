"""``facecloak weights list | fetch NAME | verify [NAME] | path NAME``."""

from __future__ import annotations

import argparse
from pathlib import Path

from facecloak.registry.entries import get_entry, load_registry
from facecloak.registry.store import fetch, file_status, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the weights command."""
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = sub.add_parser("list", help="every known model, its kind, licence and whether it is present")
    listing.add_argument("--kind", help="only models of this kind (e.g. face_recognition)")
    fetch_parser = sub.add_parser("fetch", help="download a model into the cache and verify it")
    fetch_parser.add_argument("names", nargs="+")
    fetch_parser.add_argument("--force", action="store_true", help="download again even if present")
    fetch_parser.add_argument("--from-archive", type=Path, help="take the files from an archive downloaded by hand")
    verify = sub.add_parser("verify", help="check the SHA-256 of present files")
    verify.add_argument("names", nargs="*", help="default: every present model")
    path = sub.add_parser("path", help="print the path of each file of a model")
    path.add_argument("name")
    for p in (listing, fetch_parser, verify, path):
        p.add_argument("--cache-dir", type=Path, help="weights cache (default $FACECLOAK_CHECKPOINTS or checkpoints/)")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    """Dispatch to the chosen action."""
    return {"list": _list, "fetch": _fetch, "verify": _verify, "path": _path}[args.action](args)


def _list(args: argparse.Namespace) -> int:
    rows = []
    for entry in load_registry().values():
        if args.kind and entry.kind != args.kind:
            continue
        statuses = [file_status(f, args.cache_dir, check_hash=False) for f in entry.files]
        state = "present" if all(s.present for s in statuses) else "missing"
        rows.append((entry.name, entry.kind, state, entry.licence, entry.description))
    width = max(len(r[0]) for r in rows)
    for name, kind, state, licence, description in rows:
        print(f"{name:<{width}}  {kind:<16}  {state:<7}  {description}  [licence: {licence}]")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    for name in args.names:
        for path in fetch(name, args.cache_dir, force=args.force, archive=args.from_archive):
            print(f"{name}: {path}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    names = args.names or list(load_registry())
    failures = 0
    for name in names:
        for file in get_entry(name).files:
            status = file_status(file, args.cache_dir)
            if not status.present:
                if args.names:
                    print(f"MISSING  {name}: {file.path}")
                    failures += 1
                continue
            verdict = {True: "OK", False: "CORRUPT", None: "PRESENT (no checksum in registry)"}[status.verified]
            failures += status.verified is False
            print(f"{verdict:<8} {name}: {status.path}")
    return 1 if failures else 0


def _path(args: argparse.Namespace) -> int:
    for path in resolve(args.name, args.cache_dir):
        print(path)
    return 0


COMMAND = (add_arguments, run)
