"""Protection success rate on crafted embeddings: known counts, pairing by id, thresholds with provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facecloak.errors import ConfigError
from facecloak.evaluation.psr import (
    PAPER_MODELS,
    FaceEmbedding,
    ModelEmbeddings,
    leave_one_out,
    max_similarity_to_gallery,
    protection_success,
    similarities_to_original,
    success_counts,
)
from facecloak.registry.entries import get_entry
from facecloak.verify.thresholds import FAR_LEVELS, Threshold, ThresholdTable, build_threshold_table, far_key


def _unit_at(angle_deg: float, dim: int = 4) -> np.ndarray:
    """A unit vector whose cosine with e0 is cos(angle): similarities we can write down by hand."""
    v = np.zeros(dim)
    v[0], v[1] = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    return v


def _table(value: float = 0.5, models=("m",)) -> ThresholdTable:
    return ThresholdTable({m: {far_key(f): Threshold(value, "test") for f in FAR_LEVELS} for m in models})


@pytest.fixture()
def people() -> dict[str, FaceEmbedding]:
    """Originals of two people on the e0 axis and a random direction, ids a1, a2, a3 and b1."""
    rng = np.random.default_rng(0)
    other = rng.normal(size=4)
    return {
        "a1": FaceEmbedding("a1", _unit_at(0), "alice"),
        "a2": FaceEmbedding("a2", _unit_at(10), "alice"),
        "a3": FaceEmbedding("a3", _unit_at(80), "alice"),
        "b1": FaceEmbedding("b1", other, "bob"),
    }


def test_identical_images_never_dodge(people):
    originals = list(people.values())
    protected = [FaceEmbedding(f.image_id, f.vector.copy() * 3.0, f.identity) for f in originals]  # scale-invariant
    data = {"m": ModelEmbeddings(protected=protected, originals=originals, gallery=originals)}
    rows = protection_success(data, _table(0.5), tasks=["dodging_original"])
    assert all(r.successes == 0 and r.total == 4 and r.rate == 0.0 for r in rows)
    assert [r.far for r in rows] == ["0.1", "0.01", "0.001"]


def test_impersonation_with_the_target_itself_always_succeeds(people):
    target = _unit_at(33)
    protected = [FaceEmbedding(i, target.copy(), "alice") for i in ("a1", "a2")]
    rows = protection_success({"m": ModelEmbeddings(protected, target_eval=target)}, _table(0.9), ["impersonation"])
    assert all(r.rate == 1.0 and r.successes == 2 for r in rows)


def test_known_counts_dodging_vs_original_and_gallery(people):
    # a1 moved 75° away from its original (success vs the original) but sits 5° from a3's photo (failure vs the
    # gallery); a2 barely moved (5°: failure); a3 moved to 0°: 80° from its original (success) but on top of a1.
    protected = [
        FaceEmbedding("a1", _unit_at(75), "alice"),
        FaceEmbedding("a2", _unit_at(15), "alice"),
        FaceEmbedding("a3", _unit_at(0), "alice"),
    ]
    originals = list(people.values())
    sims = similarities_to_original(protected, originals)
    np.testing.assert_allclose(sims, np.cos(np.radians([75, 5, 80])), atol=1e-12)
    assert success_counts(sims, 0.5, "dodging_original") == (2, 3, 0)

    best = max_similarity_to_gallery(protected, originals)
    # a1 vs {a2 at 10°, a3 at 80°}: best cos(5°); a2 vs {a1 at 0°, a3}: cos(15°); a3 vs {a1, a2}: cos(0°)
    np.testing.assert_allclose(best, np.cos(np.radians([5, 15, 0])), atol=1e-12)
    data = {"m": ModelEmbeddings(protected, originals=originals, gallery=originals)}
    rows = protection_success(data, _table(0.5), ["dodging_original", "dodging_gallery"], far_levels=[0.01])
    by_task = {r.task: r for r in rows}
    assert (by_task["dodging_original"].successes, by_task["dodging_original"].total) == (2, 3)
    assert (by_task["dodging_gallery"].successes, by_task["dodging_gallery"].total) == (0, 3)
    assert by_task["dodging_gallery"].to_dict()["rate"] == 0.0


def test_gallery_excludes_own_photo_and_counts_people_without_other_photos_apart(people):
    originals = list(people.values())
    # bob has a single photo: nothing else to be recognised from, so undefined rather than "protected"
    protected = [FaceEmbedding("b1", people["b1"].vector, "bob"), FaceEmbedding("a1", _unit_at(-90), "alice")]
    best = max_similarity_to_gallery(protected, originals)
    assert np.isnan(best[0]) and best[1] == pytest.approx(np.cos(np.radians(100)))  # a2 at 10°
    assert success_counts(best, 0.5, "dodging_gallery") == (1, 1, 1)


def test_pairing_is_by_image_id_not_order(people):
    originals = list(people.values())
    protected = [FaceEmbedding("b1", people["b1"].vector, "bob"), FaceEmbedding("a1", people["a1"].vector, "alice")]
    np.testing.assert_allclose(similarities_to_original(protected, originals[::-1]), [1.0, 1.0])
    with pytest.raises(ConfigError, match="no original photo"):
        similarities_to_original([FaceEmbedding("zz", _unit_at(0))], originals)
    with pytest.raises(ConfigError, match="appears twice"):
        similarities_to_original(protected, [*originals, originals[0]])


def test_match_rule_is_strictly_greater():
    sims = np.array([0.5, 0.5000001, 0.2])
    assert success_counts(sims, 0.5, "impersonation") == (1, 3, 0)
    assert success_counts(sims, 0.5, "dodging_original") == (2, 3, 0)


def test_leave_one_out_evaluates_only_the_held_out_model(people):
    split = leave_one_out("facenet")
    assert split.eval_models == ("facenet",) and "facenet" not in split.attack_models
    assert set(split.attack_models) | {"facenet"} == set(PAPER_MODELS)
    target = _unit_at(0)
    data = {m: ModelEmbeddings([FaceEmbedding("a1", _unit_at(0), "alice")], target_eval=target) for m in PAPER_MODELS}
    table = ThresholdTable.from_registry(PAPER_MODELS)
    rows = protection_success(data, table, ["impersonation"], models=split.eval_models)
    assert {r.model for r in rows} == {"facenet"} and len(rows) == len(FAR_LEVELS)
    with pytest.raises(ConfigError, match="held-out"):
        leave_one_out("arcface")
    with pytest.raises(ConfigError, match="no embeddings"):
        protection_success(data, table, ["impersonation"], models=["arcface"])


def test_registry_thresholds_say_where_they_come_from():
    table = ThresholdTable.from_registry(["irse50", "mobilefacenet_casia"])
    published = get_entry("irse50").thresholds
    assert published is not None
    threshold = table.get("irse50", 0.01)
    assert threshold.value == published.far["0.01"]
    assert threshold.source.startswith("published:") and "AMT-GAN" in threshold.source
    with pytest.raises(ConfigError, match="facecloak fr calibrate"):
        table.get("mobilefacenet_casia", 0.01)


def test_calibration_merges_with_published(tmp_path):
    calibration = tmp_path / "calibration.json"
    calibration.write_text(
        json.dumps(
            {
                "mobilefacenet_casia": {"auc": 0.97, "thresholds": {"0.1": 0.3, "0.01": 0.4, "0.001": 0.5}},
                "irse50": {"auc": 0.99, "thresholds": {"0.1": 0.11, "0.01": 0.22, "0.001": 0.33}},
            }
        )
    )
    models = ["irse50", "mobilefacenet_casia"]
    published_first = build_threshold_table(models, calibration, prefer="published")
    calibrated_first = build_threshold_table(models, calibration, prefer="calibrated")
    assert published_first.get("irse50", 0.01).source.startswith("published")
    assert calibrated_first.get("irse50", "0.01").value == 0.22
    assert calibrated_first.get("irse50", 0.01).source == f"calibrated: {calibration} (AUC 0.990)"
    assert published_first.get("mobilefacenet_casia", 0.001).value == 0.5  # only calibrated: fills the gap
    described = published_first.describe()
    assert described["mobilefacenet_casia"]["0.1"] == {
        "value": 0.3,
        "source": f"calibrated: {calibration} (AUC 0.970)",
        "metric": "cosine",
    }


def test_bad_calibration_files(tmp_path):
    with pytest.raises(ConfigError, match="facecloak fr calibrate"):
        ThresholdTable.from_calibration(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ThresholdTable.from_calibration(broken)
    no_thresholds = tmp_path / "nothr.json"
    no_thresholds.write_text(json.dumps({"irse50": {"auc": 0.9}}))
    with pytest.raises(ConfigError, match="'thresholds'"):
        ThresholdTable.from_calibration(no_thresholds)


def test_a_threshold_in_another_metric_is_refused(tmp_path):
    """A cosine calibration of dlib (the old files) is not read as a distance: recalibrate, says the error."""
    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps({"dlib_native": {"auc": 0.99, "thresholds": {"0.01": 0.9}}}))
    table = build_threshold_table(["dlib_native"], calibration)
    with pytest.raises(ConfigError, match="recalibrate"):
        table.get("dlib_native", 0.01, get_entry("dlib_native").metric)
    with pytest.raises(ConfigError, match=r"fr\.threshold_source"):
        build_threshold_table(["dlib_native"], calibration, prefer="newest")  # type: ignore[arg-type]


def test_dodging_by_distance_uses_the_distance_rule():
    """dlib's PSR: a protected face succeeds when its distance to the original is at or above the threshold."""
    original = [FaceEmbedding("a", np.zeros(4)), FaceEmbedding("b", np.zeros(4))]
    protected = [FaceEmbedding("a", np.array([0.5, 0, 0, 0])), FaceEmbedding("b", np.array([0.7, 0, 0, 0]))]
    data = ModelEmbeddings(protected, originals=original, metric="euclidean")
    assert similarities_to_original(protected, original, "euclidean") == pytest.approx([0.5, 0.7])
    table = ThresholdTable({"m": {"0.01": Threshold(0.6, "test", "euclidean")}})
    [row] = protection_success({"m": data}, table, ["dodging_original"], far_levels=[0.01])
    assert (row.successes, row.total) == (1, 2)  # 0.7 >= 0.6 protected; 0.5 < 0.6 still matches
