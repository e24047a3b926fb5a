"""Verification statistics from embeddings: ROC-AUC, thresholds at a false-accept rate, rank-k identification.

Convention everywhere in facecloak: two faces *match* when their cosine similarity is strictly greater than the
threshold. The threshold at FAR ``f`` is chosen so that at most ``f`` of the impostor pairs match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairScores:
    """Cosine similarities of all genuine (same identity) and impostor (different identity) pairs."""

    genuine: np.ndarray
    impostor: np.ndarray


def cosine_matrix(embeddings: np.ndarray) -> np.ndarray:
    """All-pairs cosine similarity of embedding rows."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(min=1e-12)
    return unit @ unit.T


def pair_scores(embeddings: np.ndarray, labels: list[str]) -> PairScores:
    """Split the upper triangle of the similarity matrix into genuine and impostor pairs."""
    sims = cosine_matrix(embeddings)
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


def rank_k_identification(embeddings: np.ndarray, labels: list[str], k: int = 1) -> float:
    """Leave-one-out identification: share of probes whose identity appears among the k most similar others."""
    sims = cosine_matrix(embeddings)
    np.fill_diagonal(sims, -np.inf)
    labels_arr = np.asarray(labels)
    hits, probes = 0, 0
    for i in range(len(labels_arr)):
        if (labels_arr == labels_arr[i]).sum() < 2:
            continue  # no other photo of this person: identification is undefined for this probe
        probes += 1
        nearest_first = np.argsort(-sims[i], kind="mergesort")
        # Rank by identity: the k most similar *distinct identities* (a gallery of people, not photos).
        seen: list[str] = []
        for j in nearest_first:
            if labels_arr[j] not in seen:
                seen.append(str(labels_arr[j]))
            if len(seen) == k:
                break
        hits += int(labels_arr[i] in seen)
    return hits / probes if probes else float("nan")


def verification_report(embeddings: np.ndarray, labels: list[str], far_levels: list[float]) -> dict:
    """Everything `fr calibrate` reports for one model, as plain JSON-able data."""
    scores = pair_scores(embeddings, labels)
    thresholds = {str(f): threshold_at_far(scores.impostor, f) for f in far_levels}
    return {
        "auc": roc_auc(scores.genuine, scores.impostor),
        "thresholds": thresholds,
        "tar_at_far": {f: accept_rate(scores.genuine, t) for f, t in thresholds.items()},
        # With fewer than 1/FAR impostor pairs the threshold is the largest impostor score: a coarse estimate.
        "far_resolution_limited": {str(f): len(scores.impostor) * f < 1 for f in far_levels},
        "genuine": _stats(scores.genuine),
        "impostor": _stats(scores.impostor),
        "rank1": rank_k_identification(embeddings, labels, 1),
        "rank5": rank_k_identification(embeddings, labels, 5),
        "n_faces": len(labels),
        "n_identities": len(set(labels)),
    }


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
