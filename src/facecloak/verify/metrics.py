"""Verification statistics from embeddings: ROC-AUC, thresholds at a false-accept rate, rank-k identification.

Each face-recognition model is compared by its own metric (its registry entry's ``metric``), as its users compare
it: cosine similarity (faces match when it is strictly greater than the threshold) or, for dlib's descriptor,
Euclidean distance (faces match when it is strictly smaller, as face_recognition's ``compare_faces`` does). The
statistics below work on *alikeness* (the similarity, or minus the distance) so that one rule, "match when alikeness
> threshold", serves both; values shown to people are in the metric's own units. The threshold at FAR ``f`` is
chosen so that at most ``f`` of the impostor pairs match.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Metric = Literal["cosine", "euclidean"]
METRICS: tuple[Metric, ...] = ("cosine", "euclidean")
FACE_RECOGNITION_TOLERANCE = 0.6
"""face_recognition's default ``compare_faces`` tolerance on dlib's descriptor distance (reported beside ours)."""


@dataclass(frozen=True)
class PairScores:
    """Cosine similarities of all genuine (same identity) and impostor (different identity) pairs."""

    genuine: np.ndarray
    impostor: np.ndarray


def cosine_matrix(embeddings: np.ndarray) -> np.ndarray:
    """All-pairs cosine similarity of embedding rows."""
    return compare_rows(embeddings, embeddings, "cosine")


def compare_rows(a: np.ndarray, b: np.ndarray, metric: Metric) -> np.ndarray:
    """``[len(a), len(b)]`` values in the metric's own units: cosine similarity or Euclidean distance."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if metric == "euclidean":
        return np.sqrt(np.clip((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0.0, None))
    unit_a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(min=1e-12)
    unit_b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(min=1e-12)
    return unit_a @ unit_b.T


def alikeness(values: np.ndarray, metric: Metric) -> np.ndarray:
    """Higher = more alike whatever the metric (the similarity, or minus the distance): one rule for ranks and FAR."""
    return np.asarray(values, dtype=np.float64) * (-1.0 if metric == "euclidean" else 1.0)


def matches(values: np.ndarray | float, threshold: float, metric: Metric) -> np.ndarray:
    """Whether two faces match: similarity strictly above, or distance strictly below, the threshold."""
    values = np.asarray(values, dtype=np.float64)
    return values < threshold if metric == "euclidean" else values > threshold


def pair_scores(embeddings: np.ndarray, labels: list[str], metric: Metric = "cosine") -> PairScores:
    """Split the upper triangle of the alikeness matrix into genuine and impostor pairs."""
    sims = alikeness(compare_rows(embeddings, embeddings, metric), metric)
    same = np.equal.outer(np.asarray(labels), np.asarray(labels))
    upper = np.triu(np.ones_like(same, dtype=bool), k=1)
    return PairScores(genuine=sims[upper & same], impostor=sims[upper & ~same])


def roc_auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Probability that a genuine pair scores above an impostor pair (ties count half): the Mann-Whitney AUC."""
    if len(genuine) == 0 or len(impostor) == 0:
        return float("nan")
    scores = np.concatenate([genuine, impostor])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties so equal scores contribute one half.
    start = 0
    while start < len(scores):
        stop = start
        while stop + 1 < len(scores) and sorted_scores[stop + 1] == sorted_scores[start]:
            stop += 1
        ranks[order[start : stop + 1]] = 0.5 * (start + stop) + 1.0
        start = stop + 1
    n_gen, n_imp = len(genuine), len(impostor)
    u = ranks[:n_gen].sum() - n_gen * (n_gen + 1) / 2.0
    return float(u / (n_gen * n_imp))


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """Smallest threshold at which at most ``far`` of the impostor pairs score strictly above it."""
    if len(impostor) == 0:
        return float("nan")
    descending = np.sort(impostor)[::-1]
    allowed = math.floor(far * len(descending))
    return float(descending[min(allowed, len(descending) - 1)])


def accept_rate(scores: np.ndarray, threshold: float) -> float:
    """Share of pairs that match at this threshold (TAR for genuine pairs, FAR for impostor pairs)."""
    return float((scores > threshold).mean()) if len(scores) else float("nan")


def identity_ranks(similarities: np.ndarray, probe_labels: Sequence[str], gallery_labels: Sequence[str]) -> np.ndarray:
    """Rank (1 = first) of each probe's own identity in a gallery of people, NaN where the gallery has no such photo.

    ``similarities`` is ``[probes, gallery]``; pairs that must not count (a probe against itself) are ``-inf``.
    Each identity is scored by its most similar photo, so the ranking is over distinct people, not photos. A tie
    with another identity counts for the probe's own identity: the search names the person if it possibly can,
    which is the cautious reading when the question is whether a face is protected.
    """
    sims = np.asarray(similarities, dtype=np.float64)
    gallery_arr, probe_arr = np.asarray(gallery_labels), np.asarray(probe_labels)
    if sims.shape != (len(probe_arr), len(gallery_arr)):
        raise ValueError(f"similarities {sims.shape} do not match {len(probe_arr)} probes × {len(gallery_arr)} gallery")
    identities = sorted(set(gallery_arr.tolist()))
    best = np.full((len(probe_arr), len(identities)), -np.inf)
    for column, identity in enumerate(identities):
        members = gallery_arr == identity
        if members.any():
            best[:, column] = sims[:, members].max(axis=1)
    column_of = {identity: column for column, identity in enumerate(identities)}
    ranks = np.full(len(probe_arr), np.nan)
    for i, label in enumerate(probe_arr.tolist()):
        own = best[i, column_of[label]] if label in column_of else -np.inf
        if np.isfinite(own):
            ranks[i] = 1 + int((best[i] > own).sum())
    return ranks


def identification_rate(ranks: np.ndarray, k: int) -> float:
    """Share of probes (with a defined rank) whose identity is among the first ``k``; NaN when none is defined."""
    defined = ranks[~np.isnan(ranks)]
    return float((defined <= k).mean()) if len(defined) else float("nan")


def rank_k_identification(embeddings: np.ndarray, labels: list[str], k: int = 1, metric: Metric = "cosine") -> float:
    """Leave-one-out identification: share of probes whose identity appears among the k most similar others."""
    sims = alikeness(compare_rows(embeddings, embeddings, metric), metric)
    np.fill_diagonal(sims, -np.inf)
    # A person with a single photo has no other one to be found by: undefined, left out.
    return identification_rate(identity_ranks(sims, labels, labels), k)


def verification_report(
    embeddings: np.ndarray, labels: list[str], far_levels: list[float], metric: Metric = "cosine"
) -> dict:
    """Everything `fr calibrate` reports for one model, as plain JSON-able data (values in the metric's units)."""
    scores = pair_scores(embeddings, labels, metric)
    alike_thresholds = {str(f): threshold_at_far(scores.impostor, f) for f in far_levels}
    sign = -1.0 if metric == "euclidean" else 1.0
    report = {
        "metric": metric,
        "auc": roc_auc(scores.genuine, scores.impostor),
        "thresholds": {f: sign * t for f, t in alike_thresholds.items()},
        "tar_at_far": {f: accept_rate(scores.genuine, t) for f, t in alike_thresholds.items()},
        # With fewer than 1/FAR impostor pairs the threshold is the largest impostor score: a coarse estimate.
        "far_resolution_limited": {str(f): len(scores.impostor) * f < 1 for f in far_levels},
        "genuine": _stats(sign * scores.genuine),
        "impostor": _stats(sign * scores.impostor),
        "rank1": rank_k_identification(embeddings, labels, 1, metric),
        "rank5": rank_k_identification(embeddings, labels, 5, metric),
        "n_faces": len(labels),
        "n_identities": len(set(labels)),
    }
    if metric == "euclidean":
        tolerance = -FACE_RECOGNITION_TOLERANCE
        report["face_recognition_tolerance"] = {
            "distance": FACE_RECOGNITION_TOLERANCE,
            "tar": accept_rate(scores.genuine, tolerance),
            "far": accept_rate(scores.impostor, tolerance),
        }
    return report


def _stats(values: np.ndarray) -> dict[str, float | int]:
    if len(values) == 0:
        return {"n": 0}
    return {
        "n": len(values),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }
