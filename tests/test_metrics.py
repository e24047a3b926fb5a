"""Verification statistics on crafted score distributions with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from facecloak.verify.metrics import (
    accept_rate,
    pair_scores,
    rank_k_identification,
    roc_auc,
    threshold_at_far,
    verification_report,
)


def test_auc_perfect_random_and_ties() -> None:
    assert roc_auc(np.array([0.9, 0.8]), np.array([0.1, 0.2, 0.3])) == 1.0
    assert roc_auc(np.array([0.1]), np.array([0.9])) == 0.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.5
    rng = np.random.default_rng(0)
    genuine, impostor = rng.normal(1, 1, 4000), rng.normal(0, 1, 4000)
    # Two unit-variance normals one sigma apart: AUC = Phi(1/sqrt(2)) = 0.7602.
    assert roc_auc(genuine, impostor) == pytest.approx(0.7602, abs=0.01)


def test_threshold_at_far_on_synthetic_impostors() -> None:
    rng = np.random.default_rng(1)
    impostor = rng.normal(0.0, 0.1, 100_000)
    for far, z in ((0.1, 1.2816), (0.01, 2.3263), (0.001, 3.0902)):
        threshold = threshold_at_far(impostor, far)
        assert threshold == pytest.approx(0.1 * z, abs=0.01)
        assert accept_rate(impostor, threshold) <= far
        assert accept_rate(impostor, threshold - 1e-3) > far * 0.9


def test_threshold_with_few_impostors_is_the_largest_score() -> None:
    impostor = np.array([0.1, 0.5, 0.2])
    assert threshold_at_far(impostor, 0.001) == 0.5
    assert accept_rate(impostor, 0.5) == 0.0


def test_pairs_and_rank_identification() -> None:
    # Two identities on two orthogonal axes, with a confusable probe.
    emb = np.array([[1, 0.0], [0.9, 0.1], [0, 1.0], [0.1, 0.9], [0.8, 0.6]])
    labels = ["a", "a", "b", "b", "b"]
    scores = pair_scores(emb, labels)
    assert len(scores.genuine) == 1 + 3 and len(scores.impostor) == 2 * 3
    assert rank_k_identification(emb, labels, 1) == pytest.approx(4 / 5)
    assert rank_k_identification(emb, labels, 2) == 1.0
    report = verification_report(emb, labels, [0.1, 0.01])
    assert set(report["thresholds"]) == {"0.1", "0.01"} and 0 <= report["auc"] <= 1
