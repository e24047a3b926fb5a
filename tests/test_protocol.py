"""Benchmark loaders on tiny trees of the real layouts, and on the shared labelled faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facecloak.errors import FacecloakError
from facecloak.evaluation.protocol import (
    CELEBA_HQ_TEST_SIZE,
    DEFAULT_TARGET,
    PAPER_TARGETS,
    ProtocolLayoutError,
    datasets_dir,
    load_celeba_hq,
    load_labelled_folder,
    load_ladn,
    load_targets,
)


def _photo(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture()
def assets(tmp_path: Path) -> Path:
    """A miniature AMT-GAN assets tree: 3 CelebA-HQ faces, 2 LADN faces, the four targets and their test photos."""
    root = tmp_path / "assets"
    for i, name in enumerate(["000300.jpg", "000012.jpg", "001000.jpg"]):
        _photo(root / "datasets" / "CelebA-HQ" / name, i)
    _photo(root / "datasets" / "LADN" / "before" / "00001.png")
    _photo(root / "datasets" / "LADN" / "before" / "00002.png")
    for spec in PAPER_TARGETS:
        _photo(root / "datasets" / "target" / spec.target_file)
        _photo(root / "datasets" / "test" / spec.eval_file)
    (root / "models").mkdir()
    return root


def test_celeba_hq_items_have_explicit_ids(assets):
    dataset = load_celeba_hq(assets)
    assert [item.image_id for item in dataset] == ["000012", "000300", "001000"]
    assert all(item.identity is None and item.path.is_file() for item in dataset)
    assert dataset.by_id()["000300"].path.name == "000300.jpg"
    assert dataset.expected_size == CELEBA_HQ_TEST_SIZE and not dataset.complete
    # the datasets folder itself is accepted as root too
    assert load_celeba_hq(assets / "datasets").items == dataset.items


def test_ladn_in_before_subfolder_or_directly(assets, tmp_path):
    assert [i.image_id for i in load_ladn(assets)] == ["00001", "00002"]
    flat = tmp_path / "flat"
    _photo(flat / "datasets" / "LADN" / "x.png")
    assert [i.image_id for i in load_ladn(flat)] == ["x"]


def test_targets_use_a_different_photo_of_the_same_person_for_evaluation(assets):
    targets = load_targets(assets)
    assert sorted(targets) == ["1", "2", "3", "4"]
    default = targets[DEFAULT_TARGET]
    assert (default.target.image_id, default.evaluation.image_id) == ("085807", "047073")
    for target in targets.values():
        assert target.target.path != target.evaluation.path
        assert target.target.identity == target.evaluation.identity
        assert target.target.path.parent.name == "target" and target.evaluation.path.parent.name == "test"
        x0, y0, x1, y1 = target.spec.eval_box
        assert 0 <= x0 < x1 <= 1024 and 0 <= y0 < y1 <= 1024  # boxes on the 1024×1024 CelebA-HQ frame


def test_missing_pieces_explain_the_expected_layout(assets, tmp_path):
    (assets / "datasets" / "test" / "047073.jpg").unlink()
    with pytest.raises(ProtocolLayoutError, match=r"(?s)target 2: missing .*047073\.jpg.*Expected layout"):
        load_targets(assets, choices=("2",))
    assert load_targets(assets, choices=("1",))["1"].evaluation.image_id == "008793"
    with pytest.raises(FacecloakError, match="no AMT-GAN datasets folder"):
        load_celeba_hq(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    (empty / "datasets" / "target").mkdir(parents=True)
    with pytest.raises(ProtocolLayoutError, match="CelebA-HQ folder missing"):
        load_celeba_hq(empty)
    with pytest.raises(ProtocolLayoutError, match="LADN images missing"):
        load_ladn(empty)
    with pytest.raises(ProtocolLayoutError, match="unknown target choices"):
        load_targets(assets, choices=("9",))
    assert issubclass(ProtocolLayoutError, FileNotFoundError)


def test_duplicate_ids_are_rejected(assets):
    _photo(assets / "datasets" / "CelebA-HQ" / "000012.png")
    with pytest.raises(ProtocolLayoutError, match="000012"):
        load_celeba_hq(assets)


def test_labelled_folder_in_tmp(tmp_path):
    _photo(tmp_path / "ann" / "a.jpg")
    _photo(tmp_path / "ann" / "b.jpg")
    _photo(tmp_path / "bo" / "a.jpg")
    (tmp_path / "labels.csv").write_text("identity,path\nann,ann/a.jpg\nann,ann/b.jpg\nbo,bo/a.jpg\n")
    dataset = load_labelled_folder(tmp_path)
    assert [(i.image_id, i.identity) for i in dataset] == [("ann/a", "ann"), ("ann/b", "ann"), ("bo/a", "bo")]


@pytest.mark.parametrize(
    "labels, message",
    [
        (None, "labels.csv not found"),
        ("who,file\nann,ann/a.jpg\n", "header must contain identity,path"),
        ("identity,path\nann,ann/missing.jpg\n", "does not exist"),
        ("identity,path\nann,ann/a.jpg\nann,ann/a.jpg\n", "listed twice"),
        ("identity,path\n,ann/a.jpg\n", "empty identity"),
        ("identity,path\n", "lists no photos"),
    ],
)
def test_labelled_folder_errors(tmp_path, labels, message):
    _photo(tmp_path / "ann" / "a.jpg")
    if labels is not None:
        (tmp_path / "labels.csv").write_text(labels)
    with pytest.raises(ProtocolLayoutError, match=message):
        load_labelled_folder(tmp_path)


def test_shared_faces(faces_dir):
    dataset = load_labelled_folder(faces_dir, name="shared_faces")
    assert len(dataset) == 61
    assert len({item.identity for item in dataset}) == 13
    assert len(dataset.by_id()) == 61
    assert dataset.by_id()["angelina_jolie/img1"].identity == "angelina_jolie"


def test_datasets_dir_resolution(assets):
    assert datasets_dir(assets) == assets / "datasets"
    assert datasets_dir(assets / "datasets") == assets / "datasets"
