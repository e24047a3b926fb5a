"""A resumable protection job over many photos: one manifest, atomic writes, config fingerprint.

The manifest (``job.json`` plus one entry per photo in ``.job/``) records per photo its state, output files and
their SHA-256, so rerunning the same command after a crash or a kill skips finished photos, and a changed
configuration is refused instead of being mixed into old results.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facecloak.errors import ConfigError
from facecloak.filemode import user_file_mode

MANIFEST_NAME = "job.json"
ENTRIES_DIR = ".job"
STAGE_DIR_NAME = ".stages"
"""Per-face stage state (stage-1 artifacts, MAP checkpoints) a rerun resumes from."""
JOB_STATE = (ENTRIES_DIR, STAGE_DIR_NAME)
"""Everything ``--restart`` discards: the per-photo entries and every stage's stored state."""
DONE, FAILED, PENDING = "done", "failed", "pending"


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON through a temporary file in the same folder and an atomic rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, user_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def config_fingerprint(plain_config: dict[str, Any]) -> str:
    """Hash of everything that changes results (the output-independent resolved config)."""
    return hashlib.sha256(json.dumps(plain_config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every config key whose value differs (missing on one side shows as 'unset')."""
    before, after = (_flatten(json.loads(json.dumps(c, default=str))) for c in (old, new))
    return [
        f"{key}: {before.get(key, 'unset')} -> {after.get(key, 'unset')}"
        for key in sorted(set(before) | set(after))
        if before.get(key, "unset") != after.get(key, "unset")
    ]


def file_sha256(path: Path) -> str:
    """Checksum recorded for each output, so a resumed job can tell a complete file from a stale one."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class JobManifest:
    """State of every photo of a job: one small JSON entry per photo, written atomically after each change.

    One file per photo (``.job/<image id>.json``) instead of one shared file lets several ranks of a multi-process
    job record their own photos without ever writing the same file; ``job.json`` holds the config fingerprint.
    """

    path: Path
    fingerprint: str

    @property
    def entries_dir(self) -> Path:
        """Folder of the per-photo entries."""
        return self.path.parent / ENTRIES_DIR

    @classmethod
    def open(
        cls, out_dir: Path, fingerprint: str, restart: bool = False, config: dict[str, Any] | None = None
    ) -> JobManifest:
        """Load the job in ``out_dir`` or start one; a different config is refused unless ``restart``.

        ``config`` (the result-affecting resolved config) is stored with the fingerprint, so a refusal can name the
        keys that changed instead of showing two hashes.
        """
        path = out_dir / MANIFEST_NAME
        if path.exists() and not restart:
            data = json.loads(path.read_text())
            if data.get("fingerprint") != fingerprint:
                changes = changed_keys(data["config"], config) if "config" in data and config is not None else []
                what = "; ".join(changes) if changes else f"fingerprint {data.get('fingerprint')} vs {fingerprint}"
                raise ConfigError(
                    f"{out_dir} holds a job run with a different configuration ({what}); use another --out folder, "
                    "or --restart to discard the old results"
                )
            return cls(path, fingerprint)
        manifest = cls(path, fingerprint)
        if restart:
            for name in JOB_STATE:
                shutil.rmtree(out_dir / name, ignore_errors=True)
        payload: dict[str, Any] = {"fingerprint": fingerprint, "entries": ENTRIES_DIR}
        if config is not None:
            payload["config"] = config
        write_json_atomic(path, payload)
        return manifest

    def entry(self, image_id: str) -> dict[str, Any] | None:
        """A photo's entry, or None before its first state change."""
        path = self.entries_dir / f"{image_id}.json"
        return json.loads(path.read_text()) if path.exists() else None

    @property
    def photos(self) -> dict[str, dict[str, Any]]:
        """Every photo's entry, by image id."""
        return {p.stem: json.loads(p.read_text()) for p in sorted(self.entries_dir.glob("*.json"))}

    def is_done(self, image_id: str) -> bool:
        """A photo is done when recorded so and every output still exists with its checksum."""
        entry = self.entry(image_id)
        if not entry or entry.get("state") != DONE:
            return False
        outputs = entry.get("outputs", {})
        return all(
            Path(p).exists() and file_sha256(Path(p)) == outputs.get(f"{k}_sha256")
            for k, p in outputs.items()
            if not k.endswith("_sha256")
        )

    def record(self, image_id: str, state: str, **fields: Any) -> None:
        """Set a photo's state (and outputs, errors, metrics), atomically."""
        write_json_atomic(self.entries_dir / f"{image_id}.json", {"state": state, **fields})

    def summary(self, image_ids: list[str] | None = None) -> dict[str, int]:
        """Count of photos per state (of ``image_ids`` when given; photos without an entry count as pending)."""
        photos = self.photos
        counts: dict[str, int] = {}
        for image_id in image_ids if image_ids is not None else list(photos):
            state = photos.get(image_id, {}).get("state", PENDING)
            counts[state] = counts.get(state, 0) + 1
        return counts
