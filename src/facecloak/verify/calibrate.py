"""``fr calibrate``: embed a labelled photo set with each model and measure how well it verifies identities.

The result per model is the ROC-AUC of genuine vs impostor pairs in the model's own metric (cosine similarity, or
Euclidean distance for dlib's descriptor, with face_recognition's tolerance beside it), the thresholds at the
configured false-accept rates, identification rank-1/5 and score statistics: the numbers protection is later judged
by. Photos are read, detected and embedded exactly as protect and evaluate judge them (:mod:`facecloak.verify`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from facecloak.errors import FacecloakError, ImageError
from facecloak.faces.crops import detector_from_config
from facecloak.io.images import load_photo
from facecloak.models.fr.zoo import FaceEmbedder, load_fr_model
from facecloak.verify.judge import FaceJudge
from facecloak.verify.labelled import LabelledPhoto, read_labels
from facecloak.verify.metrics import Metric, verification_report

if TYPE_CHECKING:
    from facecloak.faces.config import FacesConfig

log = logging.getLogger(__name__)


@dataclass
class EmbeddedSet:
    """Embeddings of the largest face of each usable photo, per model, plus the photos that could not be used."""

    photos: list[LabelledPhoto] = field(default_factory=list)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        """Identity of each embedded photo, in row order."""
        return [p.identity for p in self.photos]


def embed_labelled_set(
    photos: Sequence[LabelledPhoto], models: Sequence[FaceEmbedder], faces: FacesConfig, device: str = "cpu"
) -> EmbeddedSet:
    """Detect the largest face of each photo once and embed it with every model, through the one judge."""
    judge = FaceJudge(models, detector_from_config(faces, device), faces, device)
    result = EmbeddedSet()
    rows: dict[str, list[np.ndarray]] = {m.name: [] for m in models}
    for photo in photos:
        try:
            rgb = load_photo(photo.path, max_pixels=faces.max_pixels).rgb
            found = judge.detect(rgb)
        except ImageError as err:
            result.failures.append((photo.image_id, str(err)))
            continue
        if not found:
            result.failures.append((photo.image_id, "no face detected"))
            continue
        for name, vector in judge.embed(rgb, found[0]).items():
            rows[name].append(vector)
        result.photos.append(photo)
    result.embeddings = {name: np.stack(r) if r else np.zeros((0, 0)) for name, r in rows.items()}
    return result


def calibrate(
    faces_dir: Path, model_names: Sequence[str], faces: FacesConfig, far_levels: Sequence[float], device: str = "cpu"
) -> dict:
    """Embed the labelled set with each model and report verification statistics per model, in its own metric."""
    photos = read_labels(faces_dir)
    models = [load_fr_model(name, device) for name in model_names]
    embedded = embed_labelled_set(photos, models, faces, device)
    if len(embedded.photos) < 2:
        raise FacecloakError(f"only {len(embedded.photos)} usable photos in {faces_dir}: need at least two")
    report: dict = {
        "faces_dir": str(faces_dir),
        "n_photos": len(photos),
        "failures": [{"image_id": i, "reason": r} for i, r in embedded.failures],
        "convention": "faces match when cosine similarity > threshold (models compared by Euclidean distance, "
        "marked 'metric': 'euclidean': when distance < threshold); threshold at FAR f admits at most f of impostor "
        "pairs",
        "models": {},
    }
    for model in models:
        metric = cast(Metric, model.entry.metric)
        report["models"][model.name] = verification_report(
            embedded.embeddings[model.name], embedded.labels, list(far_levels), metric
        )
        log.info("%s: AUC %.4f", model.name, report["models"][model.name]["auc"])
    return report


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    """Write the JSON (with the per-model results also at top level, keyed by model) and a markdown table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {**report["models"], "_meta": {k: v for k, v in report.items() if k != "models"}}
    out.write_text(json.dumps(payload, indent=2, default=_json_default))
    markdown = out.with_suffix(".md")
    markdown.write_text(markdown_table(report))
    return out, markdown


def markdown_table(report: dict) -> str:
    """One row per model: metric, AUC, thresholds at each FAR, rank-1 / rank-5, genuine and impostor means."""
    fars = next(iter(report["models"].values()))["thresholds"].keys() if report["models"] else []
    header = [
        "model",
        "metric",
        "AUC",
        *[f"thr@FAR{f}" for f in fars],
        "rank-1",
        "rank-5",
        "genuine μ",
        "impostor μ",
        "faces",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in report["models"].items():
        cells = [
            name,
            r.get("metric", "cosine"),
            f"{r['auc']:.4f}",
            *[f"{r['thresholds'][f]:.4f}" for f in fars],
            f"{r['rank1']:.3f}",
            f"{r['rank5']:.3f}",
            f"{r['genuine'].get('mean', math.nan):.3f}",
            f"{r['impostor'].get('mean', math.nan):.3f}",
            str(r["n_faces"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    tolerances = {
        n: r["face_recognition_tolerance"] for n, r in report["models"].items() if "face_recognition_tolerance" in r
    }
    for name, t in tolerances.items():
        lines.append("")
        lines.append(
            f"{name} at face_recognition's tolerance (distance {t['distance']}): TAR {t['tar']:.3f}, FAR {t['far']:.4f}"
        )
    failures = report.get("failures", [])
    if failures:
        lines.append("")
        lines.append(
            f"{len(failures)} photo(s) skipped: " + "; ".join(f"{f['image_id']} ({f['reason']})" for f in failures)
        )
    return "\n".join(lines) + "\n"


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")
