"""Identification rank-k of protected faces: whether a search over a gallery of people still names the person.

PSR asks a verification question (does the face match a given photo at a threshold). Identification asks what a
face search engine does: rank every known person by their most similar photo and see where the protected face's
own person lands. The gallery is every clean labelled photo except the protected photo's own original: the person's
other photos plus all other people's photos as distractors. Photos are paired by explicit ``image_id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from facecloak.errors import ConfigError
from facecloak.evaluation.psr import FaceEmbedding
from facecloak.verify.metrics import Metric, alikeness, compare_rows, identification_rate, identity_ranks

RANKS = (1, 5)
"""The ranks the papers' identification tables report."""


def gallery_ranks(
    protected: Sequence[FaceEmbedding], gallery: Sequence[FaceEmbedding], metric: Metric = "cosine"
) -> np.ndarray:
    """Rank of each protected face's own identity in the gallery (its own original left out); NaN when undefined."""
    if any(face.identity is None for face in (*protected, *gallery)):
        raise ConfigError("identification needs the identity of every protected and gallery photo (labels.csv)")
    if not protected:
        return np.empty(0)
    if not gallery:
        return np.full(len(protected), np.nan)
    values = compare_rows(np.stack([p.vector for p in protected]), np.stack([g.vector for g in gallery]), metric)
    own_photo = np.array([[g.image_id == p.image_id for g in gallery] for p in protected])
    sims = np.where(own_photo, -np.inf, alikeness(values, metric))
    return identity_ranks(sims, [str(p.identity) for p in protected], [str(g.identity) for g in gallery])


def identification_summary(ranks: np.ndarray, ks: Sequence[int] = RANKS) -> dict[str, Any]:
    """``{"rank1": rate, "rank5": rate, "n": defined probes, "undefined": probes without another photo}``."""
    defined = int((~np.isnan(ranks)).sum())
    return {
        **{f"rank{k}": identification_rate(ranks, k) for k in ks},
        "n": defined,
        "undefined": len(ranks) - defined,
    }
