"""The 68 iBUG landmarks of a detected face, from one of two sources (the ``faces.landmarks68`` config key).

The FFHQ alignment recipe and the face-region mask are defined on 68 points. ``dlib``: dlib's shape predictor
(``face-recognition-models``, a 100 MB file; the recipe's own source). ``faceapi``: face-api.js's landmark network
(`$FACECLOAK_SHARED/weights/face_api`, 350 kB), for machines that cannot carry dlib's model, such as a GPU check
with a 64 MiB budget. It runs the way face-api runs it: the detector's box, padded to a centred square with black,
resized to 112 px; its outputs are fractions of that square.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch

from facecloak.errors import ConfigError
from facecloak.faces.config import LANDMARK68_SOURCES
from facecloak.faces.detect import Face, _check_rgb, dlib_landmarks68


@functools.lru_cache(maxsize=1)
def _faceapi_net() -> torch.nn.Module:
    from facecloak.models.faceapi import load_faceapi_model

    return load_faceapi_model("landmark68")


def faceapi_landmarks68(rgb: np.ndarray, face: Face) -> np.ndarray:
    """The 68 points of face-api's landmark network in the face's box, in photo pixels (float64, 68×2)."""
    from facecloak.models.faceapi import FaceApiLandmarkNet

    rgb = _check_rgb(rgb)
    height, width = rgb.shape[:2]
    left, top = max(0, round(face.box[0])), max(0, round(face.box[1]))
    right, bottom = min(width, round(face.box[2])), min(height, round(face.box[3]))
    if right - left < 2 or bottom - top < 2:
        raise ConfigError(f"face box {face.box} holds no pixels of the {width}×{height} photo")
    crop = rgb[top:bottom, left:right]
    side = max(crop.shape[:2])
    pad_y, pad_x = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square = np.zeros((side, side, 3), dtype=np.uint8)
    square[pad_y : pad_y + crop.shape[0], pad_x : pad_x + crop.shape[1]] = crop
    size = FaceApiLandmarkNet.input_spec.size
    resized = cv2.resize(square, (size, size), interpolation=cv2.INTER_LINEAR if side < size else cv2.INTER_AREA)
    with torch.no_grad():
        fractions = _faceapi_net()(torch.from_numpy(resized).permute(2, 0, 1)[None].float())[0]
    return fractions.double().numpy() * side + np.array([left - pad_x, top - pad_y], dtype=np.float64)


def landmarks68(rgb: np.ndarray, face: Face, source: str = "dlib") -> np.ndarray:
    """The face's 68 iBUG points (photo pixels, 68×2) from ``source``: ``dlib`` or ``faceapi``."""
    if source == "dlib":
        return dlib_landmarks68(rgb, face)
    if source == "faceapi":
        return faceapi_landmarks68(rgb, face)
    raise ConfigError(f"faces.landmarks68 must be one of {LANDMARK68_SOURCES}, got {source!r}")
