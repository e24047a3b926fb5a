"""``fr calibrate``: embed a labelled photo set with each model and measure how well it verifies identities.

The result per model is the ROC-AUC of genuine vs impostor cosine similarities, the thresholds at the configured
false-accept rates, identification rank-1/5 and score statistics: the numbers protection is later judged by.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from facecloak.config.schema import AppConfig
from facecloak.errors import FacecloakError, ImageError
from facecloak.faces.crops import crop_for_template, detect_with_config, detector_from_config
from facecloak.io.images import load_photo
from facecloak.models.fr.zoo import FaceEmbedder, load_fr_model
from facecloak.verify.metrics import verification_report

log = logging.getLogger(__name__)
LABELS_FILE = "labels.csv"


@dataclass
class LabelledPhoto:
    """One photo of a labelled set: an explicit id (its relative path), the identity and the file."""

    image_id: str
    identity: str
    path: Path


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


def read_labels(faces_dir: Path) -> list[LabelledPhoto]:
    """Read ``labels.csv`` (``identity,path`` with a header) of a labelled photo folder."""
    labels_file = faces_dir / LABELS_FILE
    if not labels_file.exists():
        raise FacecloakError(f"{labels_file} not found: a labelled folder needs a labels.csv with 'identity,path' rows")
    with open(labels_file, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"identity", "path"} <= set(reader.fieldnames):
            raise FacecloakError(f"{labels_file} must have a header with the columns 'identity' and 'path'")
        rows = [LabelledPhoto(r["path"], r["identity"], faces_dir / r["path"]) for r in reader if r["path"]]
    if not rows:
        raise FacecloakError(f"{labels_file} lists no photos")
    return rows


def embed_labelled_set(
    photos: Sequence[LabelledPhoto], models: Sequence[FaceEmbedder], config: AppConfig, batch_size: int = 16
) -> EmbeddedSet:
    """Detect the largest face of each photo once, align it per model template, embed it with every model."""
    detector = detector_from_config(config.faces, config.device)
    result = EmbeddedSet()
    crops: dict[str, list[np.ndarray]] = {m.template: [] for m in models}
    for photo in photos:
        try:
            loaded = load_photo(photo.path, max_pixels=config.faces.max_pixels)
            faces = detect_with_config(loaded.rgb, detector, config.faces)
        except ImageError as err:
            result.failures.append((photo.image_id, str(err)))
            continue
        if not faces:
            result.failures.append((photo.image_id, "no face detected"))
            continue
        for template in crops:
            crops[template].append(crop_for_template(loaded.rgb, faces[0], template))
        result.photos.append(photo)
    for model in models:
        result.embeddings[model.name] = _embed_crops(model, crops[model.template], batch_size, config.device)
    return result


@torch.no_grad()
def _embed_crops(model: FaceEmbedder, crops: list[np.ndarray], batch_size: int, device: str) -> np.ndarray:
    chunks = []
    for start in range(0, len(crops), batch_size):
        batch = np.stack(crops[start : start + batch_size])
        tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255.0).to(device)
        chunks.append(model(tensor).cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 0))


def calibrate(faces_dir: Path, model_names: Sequence[str], config: AppConfig) -> dict:
    """Embed the labelled set with each model and report verification statistics per model."""
    photos = read_labels(faces_dir)
    models = [load_fr_model(name, config.device) for name in model_names]
    embedded = embed_labelled_set(photos, models, config)
    if len(embedded.photos) < 2:
        raise FacecloakError(f"only {len(embedded.photos)} usable photos in {faces_dir}: need at least two")
    report: dict = {
        "faces_dir": str(faces_dir),
        "n_photos": len(photos),
        "failures": [{"image_id": i, "reason": r} for i, r in embedded.failures],
        "convention": "faces match when cosine similarity > threshold; threshold at FAR f admits at most f "
        "of impostor pairs",
        "models": {},
    }
    for name in model_names:
        report["models"][name] = verification_report(
            embedded.embeddings[name], embedded.labels, list(config.fr.far_levels)
        )
        log.info("%s: AUC %.4f", name, report["models"][name]["auc"])
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
    """One row per model: AUC, thresholds at each FAR, rank-1 / rank-5, genuine and impostor means."""
    fars = next(iter(report["models"].values()))["thresholds"].keys() if report["models"] else []
    header = ["model", "AUC", *[f"thr@FAR{f}" for f in fars], "rank-1", "rank-5", "genuine μ", "impostor μ", "faces"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in report["models"].items():
        cells = [
            name,
            f"{r['auc']:.4f}",
            *[f"{r['thresholds'][f]:.4f}" for f in fars],
            f"{r['rank1']:.3f}",
            f"{r['rank5']:.3f}",
            f"{r['genuine'].get('mean', math.nan):.3f}",
            f"{r['impostor'].get('mean', math.nan):.3f}",
            str(r["n_faces"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
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
