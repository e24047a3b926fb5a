"""A finished protection job's numbers: success shares, similarities, face-region quality and time per photo.

Read from the job's per-photo records (the verdicts :mod:`facecloak.verify.judge` gave on the saved photos, so the
sweep and protect apply one rule: a face the detector no longer finds is not a success) and from the saved photos
themselves (quality of the face box against the original, loaded exactly as the pipeline loaded it). Similarity
means are of the cosine similarity every verdict records, whatever metric the model is judged by.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facecloak.config.schema import AppConfig
from facecloak.io.images import load_photo
from facecloak.protect.pipeline import image_id_for
from facecloak.verify.judge import face_outcome
from facecloak.verify.quality import measure_quality

QUALITY_METRICS = ("psnr", "ssim", "haarpsi")


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255


def face_quality(original: np.ndarray, protected: np.ndarray, box: Sequence[float]) -> dict[str, float]:
    """PSNR / SSIM / HaarPSI of the face box: how much protection changed the part of the photo people look at."""
    rounded = (round(box[0]), round(box[1]), round(box[2]), round(box[3]))
    report = measure_quality(_tensor(original), _tensor(protected), box=rounded, metrics=QUALITY_METRICS)
    return {name: float(report["face"][name]["value"]) for name in QUALITY_METRICS}


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _role_verdicts(face: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [v for v in face.get("fr", {}).values() if v["role"] == role]


def _similarities(verdicts: Sequence[dict[str, Any]]) -> list[float]:
    return [v["cosine_after"] for v in verdicts if v["cosine_after"] is not None]


def job_records(job_dir: Path, photos: Sequence[Path], failed: Collection[str]) -> list[dict[str, Any]]:
    """The records of the photos the job protected (the pipeline writes one ``<image id>.json`` per photo)."""
    ids = [image_id_for(p) for p in photos]
    return [json.loads((job_dir / f"{i}.json").read_text()) for i in ids if i not in failed]


def job_metrics(records: Sequence[dict[str, Any]], config: AppConfig) -> dict[str, float | None]:
    """Every metric of :data:`facecloak.sweep.spec.METRICS` over the faces of ``records`` (None when undefined)."""
    held_ok, attacked_ok, held_sim, attacked_sim = [], [], [], []
    quality: dict[str, list[float]] = {name: [] for name in QUALITY_METRICS}
    for record in records:
        original = load_photo(record["source"], max_pixels=config.faces.max_pixels).rgb
        protected = load_photo(record["outputs"]["photo"], max_side=None, max_pixels=config.faces.max_pixels).rgb
        for face in record["faces"]:
            held, attacked = _role_verdicts(face, "held_out"), _role_verdicts(face, "attacked")
            if held:  # no held-out model configured: the share is undefined, not 100 %
                held_ok.append(float(face_outcome(held) == "protected"))
            if attacked:
                attacked_ok.append(float(face_outcome(attacked) == "protected"))
            held_sim += _similarities(held)
            attacked_sim += _similarities(attacked)
            for name, value in face_quality(original, protected, face["box"]).items():
                quality[name].append(value)
    return {
        "held_out_success": _mean(held_ok),
        "attacked_success": _mean(attacked_ok),
        "held_out_similarity": _mean(held_sim),
        "attacked_similarity": _mean(attacked_sim),
        "face_psnr": _mean(quality["psnr"]),
        "face_ssim": _mean(quality["ssim"]),
        "face_haarpsi": _mean(quality["haarpsi"]),
        "seconds_per_photo": _mean([float(r["seconds"]) for r in records]),
    }
