"""face-api.js PyTorch ports against native dlib and plausibility checks, on the shared real photos.

Every photo in ``faces/labels.csv`` is detected with dlib's HOG detector; the recognition port must reproduce the
native dlib descriptor of each face's chip, separate identities, and pass gradients to its input. The expression
and landmark nets have no reference implementation here, so they are checked for plausible outputs: a smile read
as happy, landmarks close to dlib's 68-point shape predictor.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facecloak.errors import ConfigError, CorruptWeightsError, ImageError, MissingWeightsError
from facecloak.models import dlib_native
from facecloak.models.faceapi import (
    EXPRESSION_LABELS,
    FACEAPI_MODELS,
    FaceApiExpressionNet,
    FaceApiLandmarkNet,
    FaceApiRecognitionNet,
    load_faceapi_model,
)

MIN_PORT_COSINE = 0.999
"""Required cosine between port and native dlib on every face (MANIFEST: 0.9997 seen; uint8 weights cost the rest)."""

MIN_AUC = 0.99
"""Genuine/impostor ROC-AUC the port must reach (MANIFEST: 1.00 for native dlib on these photos)."""

MIN_FACES = 48
"""The MANIFEST's evaluations used 48+ faces; fewer detections mean the detector set-up broke."""

DETECT_MAX_SIDE = 800
"""Photos are shrunk to this side for the (slow, single-core) HOG detector; chips are cut from the full photo."""

CROP_SCALE = 1.3
"""Side of the square crop fed to the 112×112 nets, relative to dlib's tight HOG box (face-api's detectors return
looser boxes than dlib's)."""

MAX_LANDMARK_NME = 0.1
"""Mean landmark error vs dlib's 68-point predictor, divided by the outer-eye-corner distance (300-W NME style);
a mis-padded or mis-ordered port lands far above this."""

SMILING_PHOTO = "angelina_jolie/img1.jpg"
"""Broad open-mouth smile (checked by eye)."""

NEUTRAL_PHOTO = "matt_damon/img30.jpg"
"""Closed-mouth neutral portrait (checked by eye)."""

LEFT_EYE, RIGHT_EYE, MOUTH = slice(36, 42), slice(42, 48), slice(48, 68)
"""iBUG 68-point index ranges."""

OUTER_EYE_CORNERS = (36, 45)


@dataclass
class Face:
    identity: str
    path: str
    image: np.ndarray
    box: dlib_native.Box
    chip: np.ndarray


def _detect(image: np.ndarray) -> dlib_native.Box | None:
    scale = min(1.0, DETECT_MAX_SIDE / max(image.shape[:2]))
    small = image
    if scale < 1.0:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    boxes = dlib_native.detect_faces(small)
    if not boxes:
        return None
    left, top, right, bottom = (round(v / scale) for v in boxes[0])
    return left, top, right, bottom


@pytest.fixture(scope="module")
def faces(faces_dir: Path) -> list[Face]:
    started = time.perf_counter()
    found = []
    with open(faces_dir / "labels.csv") as f:
        for row in csv.DictReader(f):
            image = np.asarray(Image.open(faces_dir / row["path"]).convert("RGB"))
            box = _detect(image)
            if box is not None:
                found.append(Face(row["identity"], row["path"], image, box, dlib_native.face_chip(image, box)))
    print(f"\ndetected {len(found)} faces and cut their chips in {time.perf_counter() - started:.1f} s")
    assert len(found) >= MIN_FACES
    return found


@pytest.fixture(scope="module")
def recognition() -> FaceApiRecognitionNet:
    return load_faceapi_model("recognition")


@pytest.fixture(scope="module")
def descriptors(faces: list[Face], recognition: FaceApiRecognitionNet) -> tuple[np.ndarray, np.ndarray]:
    started = time.perf_counter()
    native = np.stack([dlib_native.chip_descriptor(face.chip) for face in faces])
    native_s = time.perf_counter() - started
    started = time.perf_counter()
    with torch.no_grad():
        port = recognition(_chips_tensor(faces)).numpy()
    print(f"\nnative dlib {native_s:.2f} s, PyTorch port {time.perf_counter() - started:.2f} s for {len(faces)} chips")
    return port, native


def _chips_tensor(faces: list[Face]) -> torch.Tensor:
    return torch.from_numpy(np.stack([face.chip for face in faces])).permute(0, 3, 1, 2).float()


def _face_crop(face: Face, size: int) -> torch.Tensor:
    left, top, right, bottom = face.box
    cx, cy, half = (left + right) / 2, (top + bottom) / 2, CROP_SCALE * (right - left) / 2
    crop = Image.fromarray(face.image).crop((cx - half, cy - half, cx + half, cy + half))
    return torch.from_numpy(np.array(crop.resize((size, size), Image.BILINEAR))).permute(2, 0, 1).float()


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _roc_auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Probability that a random genuine pair scores above a random impostor pair (Mann–Whitney U)."""
    greater = (genuine[:, None] > impostor[None, :]).mean()
    ties = (genuine[:, None] == impostor[None, :]).mean()
    return float(greater + 0.5 * ties)


def _pair_auc(embeddings: np.ndarray, identities: list[str]) -> float:
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    scores = unit @ unit.T
    same = np.array(identities)[:, None] == np.array(identities)[None, :]
    upper = np.triu(np.ones_like(same), k=1)
    return _roc_auc(scores[same & upper], scores[~same & upper])


# --- recognition port vs native dlib ---------------------------------------------------------------------------------


def test_recognition_port_matches_native_dlib_on_every_face(faces, descriptors):
    port, native = descriptors
    cosine = _cosine(port, native)
    worst = int(cosine.argmin())
    print(
        f"\nport vs native dlib over {len(faces)} faces: min cosine {cosine.min():.5f} ({faces[worst].path}), "
        f"mean {cosine.mean():.5f}, max |diff| {np.abs(port - native).max():.4f}"
    )
    assert cosine.min() >= MIN_PORT_COSINE, f"{faces[worst].path}: cosine {cosine[worst]:.5f}"


def test_recognition_port_separates_identities(faces, descriptors):
    port, native = descriptors
    identities = [face.identity for face in faces]
    port_auc, native_auc = _pair_auc(port, identities), _pair_auc(native, identities)
    print(f"\ngenuine/impostor ROC-AUC: port {port_auc:.4f}, native dlib {native_auc:.4f}")
    assert port_auc >= MIN_AUC


def test_native_descriptor_of_photo_equals_descriptor_of_its_chip(faces):
    face = faces[0]
    np.testing.assert_array_equal(
        dlib_native.face_descriptor(face.image, face.box), dlib_native.chip_descriptor(face.chip)
    )


def test_recognition_port_gradient_moves_the_descriptor(faces, recognition):
    chip = _chips_tensor(faces[:1])
    with torch.no_grad():
        reference = recognition(chip)
    x = chip.clone().requires_grad_(True)
    similarity = torch.cosine_similarity(recognition(x + 1.0), reference).sum()  # shifted off the reference point
    (grad,) = torch.autograd.grad(similarity, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    step = 2.0  # a few grey levels, a small FGSM-style step
    with torch.no_grad():
        moved = recognition((chip - step * grad.sign()).clamp(0, 255))
    assert torch.cosine_similarity(moved, reference).item() < similarity.item()


# --- expression and landmark nets ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def named_faces(faces: list[Face]) -> dict[str, Face]:
    return {face.path: face for face in faces}


def test_expression_net_reads_a_smile_and_a_neutral_face(named_faces):
    if SMILING_PHOTO not in named_faces or NEUTRAL_PHOTO not in named_faces:
        pytest.skip("the checked photos are not in this face set")
    net = load_faceapi_model("expression")
    assert isinstance(net, FaceApiExpressionNet)
    crops = torch.stack([_face_crop(named_faces[p], net.input_spec.size) for p in (SMILING_PHOTO, NEUTRAL_PHOTO)])
    with torch.no_grad():
        probabilities = net.predict_proba(crops)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(2))
    assert (probabilities >= 0).all()
    predicted = [EXPRESSION_LABELS[i] for i in probabilities.argmax(1)]
    print(f"\nexpressions: {dict(zip((SMILING_PHOTO, NEUTRAL_PHOTO), predicted))}, probabilities {probabilities}")
    assert predicted == ["happy", "neutral"]
    assert EXPRESSION_LABELS == ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")


def test_landmark_net_agrees_with_dlib_68_points(faces):
    net = load_faceapi_model("landmark68")
    assert isinstance(net, FaceApiLandmarkNet)
    size = net.input_spec.size
    sample = faces[:: max(1, len(faces) // 12)]
    with torch.no_grad():
        points = net(torch.stack([_face_crop(face, size) for face in sample])).numpy()
    assert points.shape == (len(sample), 68, 2)
    assert ((points > 0) & (points < 1)).all(), "landmarks must fall inside the crop"
    eyes_y = np.concatenate([points[:, LEFT_EYE, 1], points[:, RIGHT_EYE, 1]], axis=1).max(1)
    assert (eyes_y < points[:, MOUTH, 1].min(1)).all(), "eyes must lie above the mouth"
    assert (points[:, LEFT_EYE, 0].mean(1) < points[:, RIGHT_EYE, 0].mean(1)).all()

    errors = []
    for face, predicted in zip(sample, points):
        left, top, right, bottom = face.box
        side = CROP_SCALE * (right - left)
        origin = np.array([(left + right) / 2 - side / 2, (top + bottom) / 2 - side / 2])
        reference = dlib_native.face_landmarks(face.image, face.box, points=68)
        in_photo = origin + predicted * side
        ocular = np.linalg.norm(reference[OUTER_EYE_CORNERS[0]] - reference[OUTER_EYE_CORNERS[1]])
        errors.append(np.linalg.norm(in_photo - reference, axis=1).mean() / ocular)
    print(f"\nlandmark NME vs dlib over {len(sample)} faces: mean {np.mean(errors):.3f}, max {np.max(errors):.3f}")
    assert np.mean(errors) < MAX_LANDMARK_NME


# --- loading and input errors ----------------------------------------------------------------------------------------


def test_every_kind_loads_strictly_and_frozen():
    for kind in FACEAPI_MODELS:
        model = load_faceapi_model(kind)
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())


def test_wrong_manifest_names_the_mismatches(weights_dir):
    wrong = weights_dir / "face_api" / FACEAPI_MODELS["expression"].manifest_name
    with pytest.raises(CorruptWeightsError, match=r"missing \[.*conv32_down.*unexpected \[.*dense0"):
        load_faceapi_model("recognition", wrong)


def test_missing_manifest_and_unknown_kind(tmp_path):
    with pytest.raises(MissingWeightsError, match="@vladmandic/face-api"):
        load_faceapi_model("recognition", tmp_path / "nothing.json")
    with pytest.raises(ConfigError, match="recognition"):
        load_faceapi_model("arcface")


def test_wrong_input_size_and_image_type_are_explained(recognition):
    with pytest.raises(ImageError, match="get_face_chip"):
        recognition(torch.zeros(1, 3, 112, 112))
    with pytest.raises(ImageError, match="uint8"):
        dlib_native.chip_descriptor(np.zeros((150, 150, 3), dtype=np.float32))
