"""Run a protection job over many photos: skip finished ones, record failures and keep going."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from facecloak.config.compose import to_plain
from facecloak.config.schema import AppConfig
from facecloak.errors import FacecloakError
from facecloak.protect.job import DONE, FAILED, JobManifest, config_fingerprint, file_sha256, write_json_atomic
from facecloak.protect.pipeline import Protector, image_id_for

log = logging.getLogger(__name__)
SUMMARY_NAME = "summary.json"


def result_affecting_config(config: AppConfig) -> dict[str, Any]:
    """The resolved config minus settings that do not change results (logging, progress bars)."""
    plain = to_plain(config)
    plain.pop("logger", None)
    plain.get("trainer", {}).pop("progress_bar", None)
    return plain


def run_protect_job(photos: Sequence[Path], out_dir: Path, config: AppConfig, restart: bool = False) -> dict:
    """Protect every photo; a rerun of the same command resumes, a changed config is refused."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = JobManifest.open(out_dir, config_fingerprint(result_affecting_config(config)), restart=restart)
    ids = {image_id_for(p): p for p in photos}
    pending = [i for i in ids if not manifest.is_done(i)]
    # Set-up errors (missing weights, bad target photo) stop the job at once instead of failing every photo.
    protector = Protector(config, stage_dir=out_dir / ".stages") if pending else None
    progress = tqdm(ids.items(), desc="photos", unit="photo", disable=not config.trainer.progress_bar)
    for image_id, path in progress:
        progress.set_postfix_str(path.name)
        if manifest.is_done(image_id):
            continue
        assert protector is not None
        try:
            record = protector.protect_photo(path, image_id, out_dir)
            outputs = {k: v for k, v in record["outputs"].items()}
            outputs.update({f"{k}_sha256": file_sha256(Path(v)) for k, v in record["outputs"].items()})
            manifest.record(image_id, DONE, source=str(path), outputs=outputs, record=f"{image_id}.json")
        except FacecloakError as err:
            log.warning("%s: %s", path, err)
            manifest.record(image_id, FAILED, source=str(path), error=str(err))
    summary = {
        "out_dir": str(out_dir),
        "counts": manifest.summary(),
        "failed": {i: e.get("error") for i, e in manifest.photos.items() if e["state"] == FAILED},
        "photos": {i: e["source"] for i, e in manifest.photos.items()},
    }
    write_json_atomic(out_dir / SUMMARY_NAME, summary)
    return summary
