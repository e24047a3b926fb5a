"""The human-models loaders on real photos: face-recognition ROC-AUC, expressions, face-mesh geometry."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from facecloak.errors import ConfigError, ImageError
from facecloak.models.tfjs.graph import signature
from facecloak.models.tfjs.human_models import (
    EMOTION_LABELS,
    FACEMESH_POINTS,
    HUMAN_MODELS,
    HumanModel,
    load_human_model,
)

# ArcFace/insightface 5-point template for 112x112 crops (left eye, right eye, nose, mouth left, mouth right).
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]], np.float32
)
PHOTOS_PER_IDENTITY = 3  # first 3 (by path) of each identity: 36 photos, 13 people
DETECT_MAX_SIDE = 640  # MTCNN runs on a downscaled copy (speed); landmarks are scaled back to the photo
MIN_AUC = 0.95

# Hand-labelled by looking at the photos: a broad smile showing teeth, and a closed, unsmiling mouth.
SMILING = (
    "angelina_jolie/img1.jpg",
    "george_clooney/img39.jpg",
    "jack_dorsey/img17.jpg",
    "jeff_bezos/img21.jpg",
    "katy_perry/img28.jpg",
    "marissa_mayer/img22.jpg",
    "marissa_mayer/img23.jpg",
    "mark_zuckerberg/img15.jpg",
    "scarlett_johansson/img49.jpg",
    "sundar_pichai/img24.jpg",
    "sundar_pichai/img25.jpg",
)
NOT_SMILING = (
    "angelina_jolie/img10.jpg",
    "leonardo_dicaprio/img34.jpg",
    "leonardo_dicaprio/img35.jpg",
    "leonardo_dicaprio/img36.jpg",
    "scarlett_johansson/img47.jpg",
)

# MediaPipe FaceMesh indices: outer/inner corners of the subject's right eye (image left) and left eye, nose tip.
MESH_RIGHT_EYE = (33, 133)
MESH_LEFT_EYE = (362, 263)
MESH_NOSE_TIP = 1


@dataclass(frozen=True)
class Face:
    identity: str
    image: np.ndarray  # HxWx3 uint8 RGB
    box: np.ndarray  # x0, y0, x1, y1
    landmarks: np.ndarray  # 5x2 (MTCNN order = ArcFace template order)


@pytest.fixture(scope="module")
def faces(faces_dir: Path) -> dict[str, Face]:
    """MTCNN box + 5 landmarks of every photo the tests use, detected once per module."""
    facenet_pytorch = pytest.importorskip("facenet_pytorch")
    with open(faces_dir / "labels.csv") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["path"])
    chosen: dict[str, str] = {}
    per_identity: dict[str, int] = {}
    for row in rows:
        if per_identity.get(row["identity"], 0) < PHOTOS_PER_IDENTITY or row["path"] in SMILING + NOT_SMILING:
            chosen[row["path"]] = row["identity"]
            per_identity[row["identity"]] = per_identity.get(row["identity"], 0) + 1
    mtcnn = facenet_pytorch.MTCNN(keep_all=False, device="cpu")
    found = {}
    for path, identity in chosen.items():
        photo = Image.open(faces_dir / path).convert("RGB")
        scale = min(1.0, DETECT_MAX_SIDE / max(photo.size))
        small = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.BILINEAR)
        boxes, probs, points = mtcnn.detect(small, landmarks=True)
        if boxes is None:
            continue
        best = int(np.argmax(probs))
        found[path] = Face(identity, np.asarray(photo), boxes[best] / scale, np.asarray(points[best]) / scale)
    assert len(found) >= 0.9 * len(chosen), "MTCNN missed too many faces"
    return found


def _to_tensor(crops: list[np.ndarray]) -> torch.Tensor:
    """HxWx3 uint8 RGB crops -> NCHW float [0, 1], facecloak's image convention."""
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255


def _align(face: Face, size: int) -> np.ndarray:
    """Similarity transform of the 5 landmarks onto the ArcFace template scaled to ``size``."""
    matrix, _ = cv2.estimateAffinePartial2D(
        face.landmarks.astype(np.float32), ARCFACE_112 * (size / 112), method=cv2.LMEDS
    )
    return cv2.warpAffine(face.image, matrix, (size, size), flags=cv2.INTER_LINEAR)


def _square_crop(face: Face, scale: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Square crop around the detector box, ``scale`` times its longer side; returns crop and photo->crop matrix."""
    x0, y0, x1, y1 = face.box
    half = max(x1 - x0, y1 - y0) * scale / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    src = np.float32([[cx - half, cy - half], [cx + half, cy - half], [cx - half, cy + half]])
    matrix = cv2.getAffineTransform(src, np.float32([[0, 0], [size, 0], [0, size]]))
    return cv2.warpAffine(face.image, matrix, (size, size), borderMode=cv2.BORDER_REPLICATE), matrix


def _roc_auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Probability that a genuine pair scores above an impostor pair (ties count half)."""
    above = (genuine[:, None] > impostor[None, :]).mean()
    ties = (genuine[:, None] == impostor[None, :]).mean()
    return float(above + 0.5 * ties)


# --------------------------------------------------------------------------------------------------------------------
# specs and the wrapper
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HUMAN_MODELS))
def test_spec_matches_graph(weights_dir, name):
    spec = HUMAN_MODELS[name]
    sig = signature(weights_dir / "human_models" / spec.filename)
    assert sig.inputs[0].shape[1:] == (*spec.input_size, spec.channels)
    graph_outputs = {s.name for s in sig.outputs}
    assert {out.node for out in spec.outputs} <= graph_outputs


def test_wrapper_preprocesses_and_passes_gradients(weights_dir):
    model = HumanModel.load("emotion", weights_dir / "human_models")
    raw = load_human_model("emotion", weights_dir / "human_models" / "emotion.json")
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    probs = model(images)["probabilities"]
    assert probs.shape == (2, len(EMOTION_LABELS))
    grey = 0.2989 * images[:, 0] + 0.5870 * images[:, 1] + 0.1140 * images[:, 2]
    torch.testing.assert_close(probs, raw(((grey - 0.5) * 2).unsqueeze(-1)))
    probs[:, EMOTION_LABELS.index("happy")].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0

    with pytest.raises(ImageError, match="64, 64"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="faceres"):
        HumanModel.load("arcface")


# --------------------------------------------------------------------------------------------------------------------
# behaviour on real photos
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["faceres", "faceres-deep", "mobileface"])
def test_face_recognition_auc(weights_dir, faces, name, record_property):
    model = HumanModel.load(name, weights_dir / "human_models")
    size = model.spec.input_size[0]
    paths = sorted(faces)
    with torch.no_grad():
        embeddings = model(_to_tensor([_align(faces[p], size) for p in paths]))["embedding"]
    embeddings = torch.nn.functional.normalize(embeddings, dim=1).numpy()
    similarity = embeddings @ embeddings.T
    rows, cols = np.triu_indices(len(paths), k=1)
    same = np.array([faces[paths[i]].identity == faces[paths[j]].identity for i, j in zip(rows, cols)])
    auc = _roc_auc(similarity[rows, cols][same], similarity[rows, cols][~same])
    record_property("auc", auc)
    print(f"{name}: ROC-AUC {auc:.4f} over {same.sum()} genuine / {(~same).sum()} impostor pairs")
    assert auc > MIN_AUC


def test_emotion_smiles_are_happy(weights_dir, faces):
    model = HumanModel.load("emotion", weights_dir / "human_models")
    happy = EMOTION_LABELS.index("happy")

    def predict(paths):
        crops = [_square_crop(faces[p], 1.0, model.spec.input_size[0])[0] for p in paths if p in faces]
        with torch.no_grad():
            return model(_to_tensor(crops))["probabilities"]

    smiling, not_smiling = predict(SMILING), predict(NOT_SMILING)
    top_smiling = (smiling.argmax(dim=1) == happy).float().mean().item()
    top_not_smiling = (not_smiling.argmax(dim=1) == happy).float().mean().item()
    print(f"emotion: 'happy' top-1 on {top_smiling:.0%} of smiles, {top_not_smiling:.0%} of unsmiling faces")
    assert top_smiling >= 0.7  # chance is 1/7
    assert top_not_smiling <= 0.2
    assert smiling[:, happy].mean() > not_smiling[:, happy].mean() + 0.5
    # and the last FER2013 class, "neutral", is what unsmiling faces get most often
    assert torch.mode(not_smiling.argmax(dim=1)).values.item() == EMOTION_LABELS.index("neutral")


def test_facemesh_points_lie_on_the_face(weights_dir, faces):
    model = HumanModel.load("facemesh", weights_dir / "human_models")
    size = model.spec.input_size[0]
    paths = sorted(faces)[::4]
    crops, landmarks = [], []
    for p in paths:
        crop, matrix = _square_crop(faces[p], 1.5, size)
        crops.append(crop)
        landmarks.append(cv2.transform(faces[p].landmarks[None].astype(np.float64), matrix)[0])
    with torch.no_grad():
        out = model(_to_tensor(crops))
    points, score = out["points"].numpy(), out["face_score"].numpy()
    assert points.shape == (len(paths), FACEMESH_POINTS, 3)
    assert (score > 0.9).all()
    # the detector box covers the middle 1/1.5 of the crop; the mesh must stay on it (10% slack)
    margin = size * (1 - 1 / 1.5) / 2 - 0.1 * size
    assert (points[:, :, :2] > margin).all() and (points[:, :, :2] < size - margin).all()
    right_eye = points[:, MESH_RIGHT_EYE, :2].mean(axis=1)
    left_eye = points[:, MESH_LEFT_EYE, :2].mean(axis=1)
    nose = points[:, MESH_NOSE_TIP, :2]
    assert (right_eye[:, 0] < nose[:, 0]).all() and (nose[:, 0] < left_eye[:, 0]).all()
    landmarks = np.stack(landmarks)  # MTCNN: subject's right eye (image left) first
    eye_error = np.linalg.norm(np.stack([right_eye, left_eye], 1) - landmarks[:, :2], axis=-1)
    print(f"facemesh: eye centres within {eye_error.max():.1f} px of MTCNN's ({size}px crops)")
    assert eye_error.max() < 0.06 * size
