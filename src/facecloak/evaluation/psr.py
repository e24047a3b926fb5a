"""Protection success rate (PSR): how often a protected face defeats a face-recognition model at a given FAR.

Convention (``facecloak.verify.metrics``): two faces *match* when their cosine similarity is strictly greater
than the model's threshold at false-accept rate ``f``. For each evaluated model × FAR level:

- **Dodging vs the original** (``"original"``): a protected face succeeds when it does NOT match the unprotected
  photo it was made from, ``sim(protected, original) <= threshold``. The easiest test for the attacker.
- **Dodging vs the gallery** (``"gallery"``): a protected face succeeds when it matches NONE of the *other*
  genuine photos of the same person (the photo's own original is left out), ``max sim <= threshold``. This is
  what protects a person from being found through photos already online. Faces whose person has no other photo
  are undefined and counted apart (``undefined``), never as successes.
- **Impersonation** (CLIP2Protect / AMT-GAN protocol): a protected face succeeds when it matches the target's
  *evaluation* photo, a different photo of the target than the one used during optimisation,
  ``sim(protected, target_eval) > threshold``.

Protected faces are paired with originals and gallery photos by their explicit ``image_id``, never by order.
Thresholds come from a ``ThresholdTable``: published values from the weights registry (the AMT-GAN numbers the
papers use) and/or a calibration JSON written by ``facecloak fr calibrate``; each number says where it came from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from facecloak.errors import ConfigError
from facecloak.registry.entries import get_entry

FAR_LEVELS = (0.1, 0.01, 0.001)  # the three levels of the AMT-GAN / CLIP2Protect tables
PAPER_MODELS = ("ir152", "irse50", "facenet", "mobile_face")  # the four FR models of the AMT-GAN assets
DodgingReference = Literal["original", "gallery"]
Task = Literal["dodging_original", "dodging_gallery", "impersonation"]


def far_key(far: float | str) -> str:
    """Canonical text of a FAR level (``0.01`` -> ``"0.01"``), the key used by the registry and calibration files."""
    return format(float(far), "g")


# ---------------------------------------------------------------- thresholds and their provenance


@dataclass(frozen=True)
class Threshold:
    """One cosine-similarity threshold and where it came from."""

    value: float
    source: str


class ThresholdTable:
    """Thresholds per model and FAR level, merged from several sources; earlier sources take precedence."""

    def __init__(self, entries: Mapping[str, Mapping[str, Threshold]] | None = None) -> None:
        self._entries: dict[str, dict[str, Threshold]] = {m: dict(t) for m, t in (entries or {}).items()}

    @classmethod
    def from_registry(cls, models: Sequence[str]) -> ThresholdTable:
        """Published thresholds of registry models (those without any are simply absent from the table)."""
        entries: dict[str, dict[str, Threshold]] = {}
        for model in models:
            published = get_entry(model).thresholds
            if published is not None:
                source = f"published: {published.source}"
                entries[model] = {far_key(f): Threshold(float(v), source) for f, v in published.far.items()}
        return cls(entries)

    @classmethod
    def from_calibration(cls, path: str | os.PathLike[str]) -> ThresholdTable:
        """Thresholds measured by ``facecloak fr calibrate`` (``{model: {"auc": .., "thresholds": {far: t}}}``)."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise ConfigError(f"calibration file {path} not found; write it with: facecloak fr calibrate") from err
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"calibration file {path} is not valid JSON ({err}); re-run: facecloak fr calibrate"
            ) from err
        entries: dict[str, dict[str, Threshold]] = {}
        for model, report in raw.items():
            if model.startswith("_"):
                continue  # metadata of the run (faces folder, failures), not a model
            if not isinstance(report, dict) or not isinstance(report.get("thresholds"), dict):
                raise ConfigError(f"calibration file {path}: model '{model}' has no 'thresholds' mapping")
            auc = report.get("auc")
            source = f"calibrated: {path}" + (f" (AUC {auc:.3f})" if isinstance(auc, (int, float)) else "")
            entries[model] = {far_key(f): Threshold(float(v), source) for f, v in report["thresholds"].items()}
        return cls(entries)

    def merged(self, *others: ThresholdTable) -> ThresholdTable:
        """A new table: this one with gaps filled from ``others`` in order (this one wins where both have a value)."""
        entries: dict[str, dict[str, Threshold]] = {}
        for table in reversed((self, *others)):
            for model, levels in table._entries.items():
                entries.setdefault(model, {}).update(levels)
        return ThresholdTable(entries)

    def get(self, model: str, far: float | str) -> Threshold:
        """The threshold of a model at a FAR level, or an error saying how to obtain one."""
        level = self._entries.get(model, {}).get(far_key(far))
        if level is None:
            raise ConfigError(
                f"no threshold for model '{model}' at FAR {far_key(far)}; calibrate it with: facecloak fr calibrate "
                f"(known: { {m: sorted(t) for m, t in self._entries.items()} })"
            )
        return level

    def describe(self) -> dict[str, dict[str, dict[str, float | str]]]:
        """Plain data for reports: every value with its source."""
        return {m: {f: asdict(t) for f, t in levels.items()} for m, levels in self._entries.items()}


def build_threshold_table(
    models: Sequence[str],
    calibration: str | os.PathLike[str] | None = None,
    prefer: Literal["published", "calibrated"] = "published",
) -> ThresholdTable:
    """Published and calibrated thresholds merged; ``prefer`` picks which wins where both exist.

    Published values make results comparable with the papers; calibrated ones are the only option for models
    the papers did not use.
    """
    published = ThresholdTable.from_registry(models)
    if calibration is None:
        return published
    calibrated = ThresholdTable.from_calibration(calibration)
    return published.merged(calibrated) if prefer == "published" else calibrated.merged(published)


# ---------------------------------------------------------------- embeddings and success tests


@dataclass(frozen=True)
class FaceEmbedding:
    """A face's embedding under one model, with the id of the photo it came from and the person, if known."""

    image_id: str
    vector: np.ndarray
    identity: str | None = None


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)


def _by_id(faces: Sequence[FaceEmbedding], what: str) -> dict[str, FaceEmbedding]:
    index: dict[str, FaceEmbedding] = {}
    for face in faces:
        if face.image_id in index:
            raise ConfigError(f"{what}: image id '{face.image_id}' appears twice; ids must be unique")
        index[face.image_id] = face
    return index


def similarities_to_original(protected: Sequence[FaceEmbedding], originals: Sequence[FaceEmbedding]) -> np.ndarray:
    """Cosine similarity of each protected face to its own unprotected photo, paired by image id."""
    by_id = _by_id(originals, "originals")
    missing = [p.image_id for p in protected if p.image_id not in by_id]
    if missing:
        raise ConfigError(f"no original photo for protected image ids {missing[:5]} (pairing is by image id)")
    a = _unit(np.stack([p.vector for p in protected]))
    b = _unit(np.stack([by_id[p.image_id].vector for p in protected]))
    return (a * b).sum(axis=1)


def max_similarity_to_gallery(protected: Sequence[FaceEmbedding], gallery: Sequence[FaceEmbedding]) -> np.ndarray:
    """Highest similarity of each protected face to the other photos of the same person (NaN when there are none)."""
    _by_id(gallery, "gallery")
    if any(p.identity is None for p in protected):
        raise ConfigError("dodging against the gallery needs the identity of every protected face")
    sims = _unit(np.stack([p.vector for p in protected])) @ _unit(np.stack([g.vector for g in gallery])).T
    same_person = np.array(
        [[g.identity == p.identity and g.image_id != p.image_id for g in gallery] for p in protected]
    )
    best = np.where(same_person, sims, -np.inf).max(axis=1)
    return np.where(same_person.any(axis=1), best, np.nan)


def similarities_to_target(protected: Sequence[FaceEmbedding], target_eval: np.ndarray) -> np.ndarray:
    """Cosine similarity of each protected face to the target's evaluation photo."""
    target = _unit(target_eval)
    if target.shape[0] != 1:
        raise ConfigError(f"expected one target evaluation embedding, got {target.shape[0]}")
    return (_unit(np.stack([p.vector for p in protected])) @ target.T)[:, 0]


# ---------------------------------------------------------------- rates per model × FAR


@dataclass(frozen=True)
class SuccessRate:
    """Protection success for one task, model and FAR level; ``undefined`` faces are left out of ``total``."""

    task: str
    model: str
    far: str
    threshold: float
    threshold_source: str
    successes: int
    total: int
    undefined: int = 0

    @property
    def rate(self) -> float:
        """Share of faces protected (NaN with no defined face)."""
        return self.successes / self.total if self.total else float("nan")

    def to_dict(self) -> dict[str, float | int | str]:
        """Plain data for JSON reports, including the rate."""
        return {**asdict(self), "rate": self.rate}


def success_counts(similarities: np.ndarray, threshold: float, task: Task) -> tuple[int, int, int]:
    """(successes, total, undefined) for similarities under the match rule ``sim > threshold``."""
    defined = similarities[~np.isnan(similarities)]
    matched = defined > threshold
    successes = int(matched.sum()) if task == "impersonation" else int((~matched).sum())
    return successes, len(defined), len(similarities) - len(defined)


@dataclass(frozen=True)
class ModelEmbeddings:
    """Everything one FR model saw: protected faces, their originals, the clean gallery and the target photo."""

    protected: Sequence[FaceEmbedding]
    originals: Sequence[FaceEmbedding] = ()
    gallery: Sequence[FaceEmbedding] = ()
    target_eval: np.ndarray | None = None


def _task_similarities(task: Task, data: ModelEmbeddings) -> np.ndarray:
    if task == "dodging_original":
        return similarities_to_original(data.protected, data.originals)
    if task == "dodging_gallery":
        return max_similarity_to_gallery(data.protected, data.gallery)
    if data.target_eval is None:
        raise ConfigError("impersonation needs the embedding of the target's evaluation photo")
    return similarities_to_target(data.protected, data.target_eval)


def protection_success(
    embeddings: Mapping[str, ModelEmbeddings],
    thresholds: ThresholdTable,
    tasks: Sequence[Task],
    models: Sequence[str] | None = None,
    far_levels: Sequence[float] = FAR_LEVELS,
) -> list[SuccessRate]:
    """PSR of every task for every evaluated model × FAR level; ``models`` picks the evaluated ones (default all)."""
    evaluated = list(models) if models is not None else list(embeddings)
    missing = [m for m in evaluated if m not in embeddings]
    if missing:
        raise ConfigError(f"no embeddings for evaluated models {missing}; have {sorted(embeddings)}")
    rows = []
    for model in evaluated:
        for task in tasks:
            sims = _task_similarities(task, embeddings[model])
            for far in far_levels:
                threshold = thresholds.get(model, far)
                successes, total, undefined = success_counts(sims, threshold.value, task)
                rows.append(
                    SuccessRate(
                        task, model, far_key(far), threshold.value, threshold.source, successes, total, undefined
                    )
                )
    return rows


@dataclass(frozen=True)
class ModelSplit:
    """Which models an attack may use and which ones judge it (black-box transfer when they are disjoint)."""

    attack_models: tuple[str, ...]
    eval_models: tuple[str, ...]


def leave_one_out(held_out: str, models: Sequence[str] = PAPER_MODELS) -> ModelSplit:
    """The papers' black-box preset: attack an ensemble of all models but one, evaluate on the one left out."""
    if held_out not in models:
        raise ConfigError(f"held-out model '{held_out}' is not one of {list(models)}")
    return ModelSplit(tuple(m for m in models if m != held_out), (held_out,))
