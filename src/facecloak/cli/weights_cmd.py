"""``facecloak weights list | fetch NAME | verify [NAME] | path NAME``."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

from facecloak.paths import checkpoints_dir
from facecloak.registry.entries import WeightsFile, get_entry, load_registry
from facecloak.registry.store import fetch, file_status, locate_file, resolve, sha256_of

# Checksums computed by `weights list`, by path, size and modification time: a listing re-hashes only changed files.
HASH_CACHE_NAME = ".sha256-cache.json"


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
        p.add_argument(
            "--cache-dir",
            type=Path,
            help="weights cache (default: $FACECLOAK_CHECKPOINTS, the checkout's checkpoints/, ~/.cache/facecloak)",
        )


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    """Dispatch to the chosen action."""
    return {"list": _list, "fetch": _fetch, "verify": _verify, "path": _path}[args.action](args)


def _list(args: argparse.Namespace) -> int:
    cache_dir = args.cache_dir or checkpoints_dir()
    hashes = _load_hash_cache(cache_dir)
    rows = []
    for entry in load_registry().values():
        if args.kind and entry.kind != args.kind:
            continue
        states = [_file_state(f, args.cache_dir, hashes) for f in entry.files]
        state = "corrupt" if "corrupt" in states else "missing" if "missing" in states else "present"
        rows.append((entry.name, entry.kind, state, entry.licence, entry.description))
    _save_hash_cache(cache_dir, hashes)
    width = max(len(r[0]) for r in rows)
    print(f"{'NAME':<{width}}  {'KIND':<16}  {'STATE':<7}  DESCRIPTION [LICENCE]")
    for name, kind, state, licence, description in rows:
        print(f"{name:<{width}}  {kind:<16}  {state:<7}  {description}  [licence: {licence}]")
    if any(r[2] == "corrupt" for r in rows):
        print("corrupt: the file's SHA-256 differs from the registry; delete it and run `facecloak weights fetch NAME`")
    return 0


def _file_state(file: WeightsFile, cache_dir: Path | None, hashes: dict[str, list]) -> str:
    """The file's state (present, missing or corrupt), hashing a file only when it changed since the last listing."""
    path = locate_file(file, cache_dir)
    if path is None:
        return "missing"
    if file.sha256 is None:
        return "present"
    stat = path.stat()
    key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns]
    cached = hashes.get(key)
    if cached is None or cached[:2] != stamp:
        cached = hashes[key] = [*stamp, sha256_of(path)]
    return "present" if cached[2] == file.sha256 else "corrupt"


def _load_hash_cache(cache_dir: Path) -> dict[str, list]:
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads((cache_dir / HASH_CACHE_NAME).read_text())
        if isinstance(loaded, dict):
            return loaded
    return {}


def _save_hash_cache(cache_dir: Path, hashes: dict[str, list]) -> None:
    """Kept in the weights cache (the folder facecloak owns for weights; never the working directory)."""
    from facecloak.protect.job import write_json_atomic

    with contextlib.suppress(OSError):
        write_json_atomic(cache_dir / HASH_CACHE_NAME, hashes)


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
