"""Native dlib face descriptor: a held-out black-box face-recognition evaluator (not differentiable).

dlib's ResNet descriptor (``dlib_face_recognition_resnet_model_v1``) is the strongest offline face-recognition
model we have, and :class:`facecloak.models.faceapi.FaceApiRecognitionNet` is a differentiable port of it. This
module runs the original through ``dlib`` (the ``dlib-bin`` wheel) with the models of the ``face_recognition_models``
package, to score protected photos and to check the port against the real thing.

Images are RGB ``uint8`` arrays of shape (H, W, 3); face boxes are ``(left, top, right, bottom)`` pixels. The dlib
models are loaded on first use and cached for the process.
"""

from __future__ import annotations

import warnings
from functools import cache
from typing import Any

import numpy as np

from facecloak.errors import ImageError, MissingWeightsError

Box = tuple[int, int, int, int]
"""A face box as (left, top, right, bottom) pixel coordinates."""

CHIP_SIZE = 150
"""Side of the aligned face chip the descriptor network takes (dlib ``compute_face_descriptor``)."""

CHIP_PADDING = 0.25
"""Margin around the landmarks' bounding square, as a fraction of its side (dlib's default)."""

DEFAULT_UPSAMPLE = 1
"""Times the HOG detector upsamples the photo: 1 finds faces down to about 40 px (dlib's examples use 1)."""

_PREDICTOR_LOCATIONS = {
    5: "pose_predictor_five_point_model_location",
    68: "pose_predictor_model_location",
}
"""``face_recognition_models`` functions that locate the 5- and 68-point shape predictors; dlib recommends the
5-point one for descriptor alignment."""


def _models_package() -> Any:
    try:
        with warnings.catch_warnings():  # the package imports the deprecated pkg_resources
            warnings.simplefilter("ignore", UserWarning)
            import face_recognition_models
    except ImportError as error:
        raise MissingWeightsError(
            "dlib's models come from the face_recognition_models package: "
            "pip install face-recognition-models 'setuptools<81' dlib-bin"
        ) from error
    return face_recognition_models


def _dlib() -> Any:
    try:
        import dlib
    except ImportError as error:
        raise MissingWeightsError("the native dlib evaluator needs dlib: pip install dlib-bin") from error
    return dlib


@cache
def _detector() -> Any:
    return _dlib().get_frontal_face_detector()


@cache
def _shape_predictor(points: int) -> Any:
    if points not in _PREDICTOR_LOCATIONS:
        raise ValueError(f"dlib shape predictors have 5 or 68 points, not {points}")
    location = getattr(_models_package(), _PREDICTOR_LOCATIONS[points])()
    return _dlib().shape_predictor(location)


@cache
def _recognizer() -> Any:
    return _dlib().face_recognition_model_v1(_models_package().face_recognition_model_location())


def _rgb_uint8(image: np.ndarray, what: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ImageError(f"dlib needs an RGB uint8 array of shape (H, W, 3) as {what}, got {dtype} {shape}")
    return np.ascontiguousarray(image)


def detect_faces(image: np.ndarray, upsample: int = DEFAULT_UPSAMPLE) -> list[Box]:
    """Find faces with dlib's HOG detector, largest first, so callers can take the main subject as ``[0]``."""
    rects = _detector()(_rgb_uint8(image), upsample)
    boxes = [(r.left(), r.top(), r.right(), r.bottom()) for r in rects]
    return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)


def face_shape(image: np.ndarray, box: Box, points: int = 5) -> Any:
    """Fit dlib's shape predictor in ``box``; the result (``dlib.full_object_detection``) drives chip alignment."""
    left, top, right, bottom = (int(v) for v in box)
    return _shape_predictor(points)(_rgb_uint8(image), _dlib().rectangle(left, top, right, bottom))


def face_landmarks(image: np.ndarray, box: Box, points: int = 68) -> np.ndarray:
    """Return the (points, 2) float (x, y) landmarks dlib finds in ``box``, e.g. as reference geometry."""
    shape = face_shape(image, box, points)
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def face_chip(
    image: np.ndarray, box: Box, points: int = 5, size: int = CHIP_SIZE, padding: float = CHIP_PADDING
) -> np.ndarray:
    """Cut the aligned face chip dlib's descriptor (and the face-api port) expects, as (size, size, 3) RGB uint8."""
    image = _rgb_uint8(image)
    return _dlib().get_face_chip(image, face_shape(image, box, points), size=size, padding=padding)


def chip_descriptor(chip: np.ndarray) -> np.ndarray:
    """Return the 128-D float32 descriptor of an aligned 150×150 chip, the reference for the PyTorch port."""
    chip = _rgb_uint8(chip, "face chip")
    if chip.shape[:2] != (CHIP_SIZE, CHIP_SIZE):
        raise ImageError(f"dlib's descriptor takes {CHIP_SIZE}×{CHIP_SIZE} chips (see face_chip), got {chip.shape}")
    return np.asarray(_recognizer().compute_face_descriptor(chip), dtype=np.float32)


def face_descriptor(image: np.ndarray, box: Box, points: int = 5) -> np.ndarray:
    """Return the 128-D float32 descriptor of the face in ``box``, aligned the way dlib does it end to end."""
    return chip_descriptor(face_chip(image, box, points))
