"""Check a protection job's inputs before anything is written: the photos, the output folder, the target photo.

A job that is going to fail on its inputs must say so in one line and leave ``--out`` as it found it (no stray
``job.json`` next to nothing). These checks are cheap; the target check runs the face detector once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from facecloak.errors import ConfigError, NoFaceError

if TYPE_CHECKING:
    from facecloak.config.schema import AppConfig

log = logging.getLogger(__name__)

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def expand_photos(paths: list[Path]) -> list[Path]:
    """Folders become the photos inside them (sorted for a stable order; ids never depend on it).

    A photo named twice (directly, or also through its folder) is protected once, and the user is told; a folder
    with no photo in it is an error, since a job over nothing would only claim success.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
            if not inside:
                raise ConfigError(f"no photos found in {path} (looked for {', '.join(PHOTO_SUFFIXES)})")
            found.extend(inside)
        else:
            found.append(path)
    unique: dict[Path, Path] = {}
    for path in found:
        key = path.resolve()
        if key in unique:
            log.info("%s: given more than once; protected once", path)
            continue
        unique[key] = path
    return list(unique.values())


def check_out_dir(out: Path) -> None:
    """``--out`` must be a folder we can create or write into; say which path is wrong, never a traceback."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is an existing file, not a folder; choose a folder path")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, so no folder can be made under it; choose a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: cannot write into {existing} (permission denied); choose a writable folder")


def check_target(config: AppConfig) -> None:
    """An impersonation target must be a readable photo with a face, checked before the job writes anything."""
    if config.protect.mode != "impersonate" or config.protect.target is None:
        return
    from facecloak.faces.crops import detect_with_config, detector_from_config
    from facecloak.io.images import load_photo

    photo = load_photo(config.protect.target, max_pixels=config.faces.max_pixels)
    detector = detector_from_config(config.faces, config.device)
    if not detect_with_config(photo.rgb, detector, config.faces):
        raise NoFaceError(f"no face found in the target photo {config.protect.target}; choose a photo with a face")
