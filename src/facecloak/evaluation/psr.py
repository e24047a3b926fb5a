"""Protection success rate (PSR): how often a protected face defeats a face-recognition model at a given FAR.

Convention (``facecloak.verify.metrics``): two faces *match* when their similarity is strictly greater than the
model's threshold at false-accept rate ``f`` (for a model compared by distance, dlib's, when their distance is
strictly smaller). Values are in each model's own metric. For each evaluated model × FAR level:

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
Thresholds come from :mod:`facecloak.verify.thresholds` (published and calibrated, by ``fr.threshold_source``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from facecloak.errors import ConfigError
from facecloak.verify.metrics import Metric, alikeness, compare_rows, matches
from facecloak.verify.thresholds import FAR_LEVELS, ThresholdTable, far_key

PAPER_MODELS = ("ir152", "irse50", "facenet", "mobile_face")  # the four FR models of the AMT-GAN assets
DodgingReference = Literal["original", "gallery"]
Task = Literal["dodging_original", "dodging_gallery", "impersonation"]


# ---------------------------------------------------------------- embeddings and success tests


@dataclass(frozen=True)
class FaceEmbedding:
    """A face's embedding under one model, with the id of the photo it came from and the person, if known."""

    image_id: str
    vector: np.ndarray
    identity: str | None = None


def _by_id(faces: Sequence[FaceEmbedding], what: str) -> dict[str, FaceEmbedding]:
    index: dict[str, FaceEmbedding] = {}
    for face in faces:
        if face.image_id in index:
            raise ConfigError(f"{what}: image id '{face.image_id}' appears twice; ids must be unique")
        index[face.image_id] = face
    return index


def similarities_to_original(
    protected: Sequence[FaceEmbedding], originals: Sequence[FaceEmbedding], metric: Metric = "cosine"
) -> np.ndarray:
    """Similarity (or distance) of each protected face to its own unprotected photo, paired by image id."""
    by_id = _by_id(originals, "originals")
    missing = [p.image_id for p in protected if p.image_id not in by_id]
    if missing:
        raise ConfigError(f"no original photo for protected image ids {missing[:5]} (pairing is by image id)")
    return np.array([compare_rows(p.vector, by_id[p.image_id].vector, metric)[0, 0] for p in protected])


def max_similarity_to_gallery(
    protected: Sequence[FaceEmbedding], gallery: Sequence[FaceEmbedding], metric: Metric = "cosine"
) -> np.ndarray:
    """The most alike of the other photos of the same person, per protected face (NaN when there are none)."""
    _by_id(gallery, "gallery")
    if any(p.identity is None for p in protected):
        raise ConfigError("dodging against the gallery needs the identity of every protected face")
    alike = alikeness(
        compare_rows(np.stack([p.vector for p in protected]), np.stack([g.vector for g in gallery]), metric), metric
    )
    same_person = np.array(
        [[g.identity == p.identity and g.image_id != p.image_id for g in gallery] for p in protected]
    )
    best = np.where(same_person, alike, -np.inf).max(axis=1)
    return np.where(same_person.any(axis=1), alikeness(best, metric), np.nan)


def similarities_to_target(
    protected: Sequence[FaceEmbedding], target_eval: np.ndarray, metric: Metric = "cosine"
) -> np.ndarray:
    """Similarity (or distance) of each protected face to the target's evaluation photo."""
    target = np.atleast_2d(target_eval)
    if target.shape[0] != 1:
        raise ConfigError(f"expected one target evaluation embedding, got {target.shape[0]}")
    return compare_rows(np.stack([p.vector for p in protected]), target, metric)[:, 0]


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


def success_counts(
    similarities: np.ndarray, threshold: float, task: Task, metric: Metric = "cosine"
) -> tuple[int, int, int]:
    """(successes, total, undefined) under the metric's match rule (similarity above / distance below threshold)."""
    defined = similarities[~np.isnan(similarities)]
    matched = matches(defined, threshold, metric)
    successes = int(matched.sum()) if task == "impersonation" else int((~matched).sum())
    return successes, len(defined), len(similarities) - len(defined)


@dataclass(frozen=True)
class ModelEmbeddings:
    """Everything one FR model saw: protected faces, their originals, the clean gallery and the target photo."""

    protected: Sequence[FaceEmbedding]
    originals: Sequence[FaceEmbedding] = ()
    gallery: Sequence[FaceEmbedding] = ()
    target_eval: np.ndarray | None = None
    metric: Metric = "cosine"


def task_similarities(task: Task, data: ModelEmbeddings) -> np.ndarray:
    """Per protected face, the value a task's verdict is taken on, in the model's own metric."""
    if task == "dodging_original":
        return similarities_to_original(data.protected, data.originals, data.metric)
    if task == "dodging_gallery":
        return max_similarity_to_gallery(data.protected, data.gallery, data.metric)
    if data.target_eval is None:
        raise ConfigError("impersonation needs the embedding of the target's evaluation photo")
    return similarities_to_target(data.protected, data.target_eval, data.metric)


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
            data = embeddings[model]
            sims = task_similarities(task, data)
            for far in far_levels:
                threshold = thresholds.get(model, far, data.metric)
                successes, total, undefined = success_counts(sims, threshold.value, task, data.metric)
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
