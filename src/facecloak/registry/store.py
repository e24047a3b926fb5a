"""Find, verify and fetch the files of registry entries.

Resolution order for a file: the cache (``checkpoints/`` or ``$FACECLOAK_CHECKPOINTS``), then the offline search
path (``$FACECLOAK_SHARED/weights`` and ``$FACECLOAK_WEIGHTS_PATH``), then files shipped inside installed Python
packages. Fetching writes to a temporary file, verifies the checksum and renames atomically, so the cache never
holds a half-written or unverified file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from facecloak.errors import CorruptWeightsError, MissingWeightsError
from facecloak.paths import checkpoints_dir, shared_weights_dir
from facecloak.registry import fetchers as default_fetchers
from facecloak.registry.entries import ModelEntry, Source, WeightsFile, get_entry
from facecloak.registry.fetchers import extract_member, installed_file

SEARCH_PATH_ENV = "FACECLOAK_WEIGHTS_PATH"
_HASH_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, streamed so large checkpoints do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def search_path(cache_dir: Path | None = None) -> list[Path]:
    """Folders searched for weights, in order: cache, ``$FACECLOAK_WEIGHTS_PATH`` entries, shared weights."""
    extra = [Path(p).expanduser() for p in os.environ.get(SEARCH_PATH_ENV, "").split(os.pathsep) if p]
    return [cache_dir or checkpoints_dir(), *extra, shared_weights_dir()]


def fetch_command(name: str) -> str:
    """The exact command that fetches a model, for error messages."""
    return f"facecloak weights fetch {name}"


@dataclass(frozen=True)
class FileStatus:
    """Where a registry file was found and whether its checksum matches."""

    file: WeightsFile
    path: Path | None
    verified: bool | None  # None: no checksum in the registry

    @property
    def present(self) -> bool:
        """Whether a copy was found."""
        return self.path is not None


def locate_file(file: WeightsFile, cache_dir: Path | None = None) -> Path | None:
    """First existing copy of a registry file on the search path or inside an installed package."""
    for root in search_path(cache_dir):
        candidate = root / file.path
        if candidate.is_file():
            return candidate
    for source in file.sources:
        found = installed_file(source)
        if found is not None:
            return found
    return None


def file_status(file: WeightsFile, cache_dir: Path | None = None, check_hash: bool = True) -> FileStatus:
    """Locate a file and, if asked, compare its SHA-256 with the registry."""
    path = locate_file(file, cache_dir)
    if path is None or not check_hash or file.sha256 is None:
        return FileStatus(file, path, None)
    return FileStatus(file, path, sha256_of(path) == file.sha256)


def resolve(name: str, cache_dir: Path | None = None, verify: bool = True) -> list[Path]:
    """Paths of every file of a model, verified; raises with the fetch command when one is missing or corrupt."""
    entry = get_entry(name)
    paths = []
    for file in entry.files:
        status = file_status(file, cache_dir, check_hash=verify)
        if not status.present:
            searched = ", ".join(str(p) for p in search_path(cache_dir))
            raise MissingWeightsError(
                f"weights for '{name}' not found: {file.path} (searched {searched}). "
                f"Fetch them with: {fetch_command(name)}"
            )
        if status.verified is False:
            raise CorruptWeightsError(
                f"weights file {status.path} for '{name}' does not match its registry SHA-256 "
                f"(corrupt or a different file). Delete it and run: {fetch_command(name)}"
            )
        assert status.path is not None
        paths.append(status.path)
    return paths


def resolve_one(name: str, cache_dir: Path | None = None, verify: bool = True) -> Path:
    """Path of a single-file model."""
    return resolve(name, cache_dir, verify)[0]


def is_available(name: str, cache_dir: Path | None = None) -> bool:
    """True when every file of the model is present (checksums not computed: cheap enough for listings)."""
    return all(locate_file(f, cache_dir) is not None for f in get_entry(name).files)


def install_verified(tmp: Path, file: WeightsFile, dest: Path) -> Path:
    """Check a downloaded temporary file against the registry checksum, then move it into place atomically."""
    if file.sha256 is not None:
        actual = sha256_of(tmp)
        if actual != file.sha256:
            tmp.unlink(missing_ok=True)
            raise CorruptWeightsError(
                f"downloaded {file.path} has SHA-256 {actual}, expected {file.sha256}; nothing was written"
            )
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    return dest


Fetcher = Callable[[Source, Path], None]


def _missing_dirs(folder: Path) -> list[Path]:
    """Folders that do not exist yet, deepest first: a failed fetch removes them again."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def fetch(
    name: str,
    cache_dir: Path | None = None,
    fetchers: dict[str, Fetcher] | None = None,
    force: bool = False,
    archive: Path | None = None,
) -> list[Path]:
    """Download every missing file of a model into the cache, trying its sources in order."""
    entry: ModelEntry = get_entry(name)
    cache = cache_dir or checkpoints_dir()
    table = fetchers or default_fetchers.FETCHERS
    out = []
    for file in entry.files:
        dest = cache / file.path
        existing = None if force else locate_file(file, cache_dir)
        if existing is not None and (file.sha256 is None or sha256_of(existing) == file.sha256):
            out.append(existing)
            continue
        created = _missing_dirs(dest.parent)
        if archive is not None:
            try:
                out.append(_install_from_archive(archive, file, dest))
            except BaseException:
                _remove_if_empty(created)
                raise
            continue
        errors = []
        for source in file.sources:
            handler = table.get(source.type)
            if handler is None:
                errors.append(f"{source.describe()}: {source.note or 'no automatic download'}")
                continue
            tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            try:
                handler(source, tmp)
                out.append(install_verified(tmp, file, dest))
                break
            except Exception as err:  # each source may fail for its own reason; report them all
                tmp.unlink(missing_ok=True)
                errors.append(f"{source.describe()}: {err}")
        else:
            _remove_if_empty(created)
            raise MissingWeightsError(f"could not fetch {file.path} for '{name}':\n  " + "\n  ".join(errors))
    return out


def _install_from_archive(archive: Path, file: WeightsFile, dest: Path) -> Path:
    """Install a file from an archive the user downloaded by hand (e.g. AMT-GAN's assets.zip), checksum verified."""
    tmp = dest.with_name(f".{dest.name}.part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        extract_member(archive, Path(file.path).name, tmp)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    return install_verified(tmp, file, dest)
