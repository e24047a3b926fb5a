"""Pasting crops back into full photos changes the faces and nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facecloak.errors import ConfigError, ImageError
from facecloak.faces import (
    Face,
    MTCNNDetector,
    align_face,
    align_ffhq,
    feather_mask,
    get_template,
    paste_back,
    transform_points,
)
from facecloak.io import load_photo

PHOTOS = [
    "_multi/couple.jpg",
    "_multi/selfie-many-people.jpg",
    "elon_musk/img18.jpg",
    "katy_perry/img43.jpg",
    "jack_dorsey/img16.jpg",
    "scarlett_johansson/img50.jpg",
]
MIN_PSNR_DB = 40.0
MAX_MEAN_CHANGE_OUTSIDE = 1.0  # in 0..255 units: 1/255 of the range
FFHQ_TEST_SIZE = 512
ARCFACE = get_template("arcface_112")


@pytest.fixture(scope="module")
def detections(faces_dir: Path) -> dict[str, tuple[np.ndarray, list[Face]]]:
    detector = MTCNNDetector()
    found = {}
    for name in PHOTOS:
        rgb = load_photo(faces_dir / name).rgb
        found[name] = (rgb, detector.detect(rgb))
    return found


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _mean_change_outside(photo: np.ndarray, result: np.ndarray, face: Face) -> float:
    outside = np.ones(photo.shape[:2], bool)
    x1, y1, x2, y2 = (round(v) for v in face.box)
    outside[max(y1, 0) : y2, max(x1, 0) : x2] = False
    return float(np.abs(result.astype(np.int16) - photo)[outside].mean())


def _footprint(matrix: np.ndarray, crop_size: tuple[int, int], photo_size: tuple[int, int]) -> np.ndarray:
    """Photo pixels the crop can touch (its quadrilateral's bounding box, generously)."""
    h, w = crop_size
    corners = transform_points(np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2], [[0, 0], [w, 0], [0, h], [w, h]])
    inside = np.zeros(photo_size, bool)
    x0, y0 = np.floor(corners.min(axis=0)).astype(int) - 3
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 3
    inside[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return inside


@pytest.mark.parametrize("name", PHOTOS)
def test_unmodified_arcface_crops_leave_the_photo_unchanged(detections: dict, name: str) -> None:
    photo, faces = detections[name]
    assert faces, f"no face found in {name}"
    for face in faces:
        aligned = align_face(photo, face.landmarks5, ARCFACE)
        result = paste_back(photo, aligned.crop, aligned.matrix)
        assert result.shape == photo.shape and result.dtype == np.uint8
        assert _psnr(result, photo) > MIN_PSNR_DB
        assert _mean_change_outside(photo, result, face) < MAX_MEAN_CHANGE_OUTSIDE
        # Blending the change (crop − reference) makes the round trip exact, not just close.
        np.testing.assert_array_equal(result, photo)


@pytest.mark.parametrize("name", PHOTOS)
def test_unmodified_ffhq_crops_leave_the_photo_unchanged(detections: dict, name: str) -> None:
    photo, faces = detections[name]
    for face in faces:
        aligned = align_ffhq(photo, face.landmarks5, FFHQ_TEST_SIZE)
        delta = paste_back(photo, aligned.crop, aligned.matrix, reference_crop=aligned.crop)
        np.testing.assert_array_equal(delta, photo)
        # Pasting the crop itself resamples twice, yet stays far above the bar.
        replaced = paste_back(photo, aligned.crop, aligned.matrix, mode="replace")
        assert _psnr(replaced, photo) > MIN_PSNR_DB
        assert _mean_change_outside(photo, replaced, face) < MAX_MEAN_CHANGE_OUTSIDE


def test_an_edited_crop_lands_on_the_face_and_nowhere_else(detections: dict) -> None:
    photo, faces = detections["elon_musk/img18.jpg"]
    face = faces[0]
    aligned = align_face(photo, face.landmarks5, ARCFACE)
    # A coarse checkerboard: lands misplaced or blurred if the inverse warp is off by a pixel or two.
    yy, xx = np.mgrid[:112, :112]
    pattern = np.where(((yy // 14) + (xx // 14)) % 2 == 0, 25, -25)[..., None]
    edited = np.clip(aligned.crop.astype(int) + pattern, 0, 255).astype(np.uint8)
    result = paste_back(photo, edited, aligned.matrix)

    assert result.shape == photo.shape
    untouched = ~_footprint(aligned.matrix, (112, 112), photo.shape[:2])
    np.testing.assert_array_equal(result[untouched], photo[untouched])
    assert _mean_change_outside(photo, result, face) < MAX_MEAN_CHANGE_OUTSIDE * 5  # only the crop's margin

    realigned = align_face(result, face.landmarks5, ARCFACE).crop.astype(int)
    core = feather_mask((112, 112)) > 0.99
    assert np.abs(realigned - edited)[core].mean() < 3.0
    assert np.abs(realigned - aligned.crop)[core].mean() > 15.0  # the edit really arrived


def test_every_face_of_a_group_photo_can_be_edited(detections: dict) -> None:
    photo, faces = detections["_multi/couple.jpg"]
    result = photo
    for face in faces:
        aligned = align_face(result, face.landmarks5, ARCFACE)
        result = paste_back(result, np.clip(aligned.crop.astype(int) + 30, 0, 255).astype(np.uint8), aligned.matrix)
    for face in faces:
        cx, cy = face.landmarks5[2].round().astype(int)  # nose tip: deep inside each face
        change = result[cy - 5 : cy + 5, cx - 5 : cx + 5].astype(int) - photo[cy - 5 : cy + 5, cx - 5 : cx + 5]
        assert change.mean() > 20


def test_zero_mask_changes_nothing(detections: dict) -> None:
    photo, faces = detections["jack_dorsey/img16.jpg"]
    aligned = align_face(photo, faces[0].landmarks5, ARCFACE)
    result = paste_back(photo, 255 - aligned.crop, aligned.matrix, mask=np.zeros((112, 112), np.float32))
    np.testing.assert_array_equal(result, photo)


def test_feather_mask_is_soft_at_the_edge_and_full_inside() -> None:
    weights = feather_mask((112, 96), feather=0.1)
    assert weights.shape == (112, 96) and weights.min() >= 0 and weights.max() <= 1
    assert weights[0].max() < 0.01 and weights[:, 0].max() < 0.01
    assert weights[40:70, 30:66].min() > 0.99
    np.testing.assert_array_equal(feather_mask((8, 8), feather=0.0), 1.0)
    custom = np.zeros((112, 112), np.float32)
    custom[30:80, 30:80] = 1
    assert feather_mask((112, 112), 0.05, custom)[:20].max() < 0.01
    with pytest.raises(ConfigError, match="feather"):
        feather_mask((8, 8), feather=0.6)
    with pytest.raises(ConfigError, match="shape"):
        feather_mask((8, 8), mask=np.ones((4, 4)))


def test_crop_outside_the_photo_and_bad_inputs() -> None:
    photo = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    crop = np.zeros((16, 16, 3), np.uint8)
    far_away = np.array([[1.0, 0.0, 500.0], [0.0, 1.0, 500.0]])  # photo→crop: the crop sees x, y < -480
    np.testing.assert_array_equal(paste_back(photo, crop, far_away), photo)
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    with pytest.raises(ConfigError, match="mode"):
        paste_back(photo, crop, identity, mode="overwrite")
    with pytest.raises(ImageError, match="crop"):
        paste_back(photo, crop.astype(np.float32), identity)
    with pytest.raises(ImageError, match="reference"):
        paste_back(photo, crop, identity, reference_crop=np.zeros((8, 8, 3), np.uint8))
