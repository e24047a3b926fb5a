"""From a full photo to the crops each model needs: detect once, then align per model template.

Detection runs on a copy downscaled to ``detect_max_side`` (detectors gain nothing from 6000-px photos and slow
down a lot); boxes and landmarks are mapped back so every crop is cut from the full-resolution pixels.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from facecloak.faces.align import align_face
from facecloak.faces.config import FacesConfig
from facecloak.faces.detect import Face, FaceDetector, build_detector, dlib_landmarks68, landmarks5_from_68
from facecloak.faces.templates import get_template

DLIB_CHIP_PREFIX = "dlib_chip_"


def detector_from_config(config: FacesConfig, device: str = "cpu") -> FaceDetector:
    """Build the configured detector (MTCNN by default; SCRFD when an insightface pack is configured)."""
    if config.detector == "mtcnn":
        return build_detector("mtcnn", min_face_size=config.min_face_size, thresholds=config.thresholds, device=device)
    return build_detector(config.detector, model_path=config.scrfd_model)


def detect_faces(
    rgb: np.ndarray, detector: FaceDetector, detect_max_side: int, refine_landmarks: bool = False
) -> list[Face]:
    """Every face in the photo, largest first, in full-resolution coordinates."""
    height, width = rgb.shape[:2]
    scale = min(1.0, detect_max_side / max(height, width))
    if scale >= 1.0:
        faces = detector.detect(rgb)
    else:
        small = cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        faces = [
            replace(face, box=tuple(float(v) / scale for v in face.box), landmarks5=face.landmarks5 / scale)  # type: ignore[arg-type]
            for face in detector.detect(small)
        ]
    if refine_landmarks:
        faces = [replace(face, landmarks5=landmarks5_from_68(dlib_landmarks68(rgb, face))) for face in faces]
    return faces


def detect_with_config(rgb: np.ndarray, detector: FaceDetector, config: FacesConfig) -> list[Face]:
    """Detection as the run's configuration asks (downscaled search, optional landmark refinement)."""
    return detect_faces(rgb, detector, config.detect_max_side, config.refine_landmarks)


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes: finds the same face again after an edit."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def crop_for_template(rgb: np.ndarray, face: Face, template: str) -> np.ndarray:
    """The face aligned the way a model's training data was: a 5-point template, or dlib's face chip."""
    if template.startswith(DLIB_CHIP_PREFIX):
        from facecloak.models import dlib_native

        left, top, right, bottom = (round(v) for v in face.box)
        return dlib_native.face_chip(rgb, (left, top, right, bottom), size=int(template[len(DLIB_CHIP_PREFIX) :]))
    return align_face(rgb, face.landmarks5, get_template(template)).crop
