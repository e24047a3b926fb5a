"""From a full photo to the crops each model needs: detect once, then align per model template.

Detection runs on a copy downscaled to ``detect_max_side`` (detectors gain nothing from 6000-px photos and slow
down a lot); boxes and landmarks are mapped back so every crop is cut from the full-resolution pixels.

Faces cut by the photo's edge (the friend at the side of a group selfie) are what a detector misses most: its
windows never extend past the border. An edge pass (``faces.edge_pass``) runs the detector again on the photo framed
by a plain grey border and adds the faces the first pass did not find. On the shared group selfie it finds 6 faces
instead of 4; a privacy tool must not leave a visible face unprotected without a word.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from facecloak.faces.align import align_face
from facecloak.faces.config import FacesConfig
from facecloak.faces.detect import Face, FaceDetector, build_detector, landmarks5_from_68
from facecloak.faces.landmarks68 import landmarks68
from facecloak.faces.templates import get_template

DLIB_CHIP_PREFIX = "dlib_chip_"
EDGE_PAD_FRACTION = 0.15
"""The edge pass's border, as a fraction of the longest side: room for the missing part of a face cut at the edge."""
EDGE_PAD_GREY = 128
EDGE_MARGIN_FRACTION = 0.02
"""A face the edge pass adds must come this close to the border (fraction of the longest side)."""
SAME_FACE_IOU = 0.3


def detector_from_config(config: FacesConfig, device: str = "cpu") -> FaceDetector:
    """Build the configured detector (MTCNN by default; SCRFD when an insightface pack is configured)."""
    if config.detector == "mtcnn":
        return build_detector("mtcnn", min_face_size=config.min_face_size, thresholds=config.thresholds, device=device)
    return build_detector(config.detector, model_path=config.scrfd_model)


def _moved(face: Face, scale: float = 1.0, shift: float = 0.0) -> Face:
    """A face mapped from detector pixels back to the photo's: ``(p - shift) / scale``."""
    return replace(
        face,
        box=tuple((float(v) - shift) / scale for v in face.box),  # type: ignore[arg-type]
        landmarks5=(face.landmarks5 - shift) / scale,
    )


def _edge_faces(small: np.ndarray, detector: FaceDetector, known: list[Face]) -> list[Face]:
    """Faces found only with a grey border around the photo (cut by its edge), in ``small``'s pixels."""
    pad = round(EDGE_PAD_FRACTION * max(small.shape[:2]))
    framed = cv2.copyMakeBorder(small, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(EDGE_PAD_GREY,) * 3)
    found = [_moved(face, shift=pad) for face in detector.detect(framed)]
    height, width = small.shape[:2]
    margin = EDGE_MARGIN_FRACTION * max(height, width)

    def at_edge(box: tuple[float, ...]) -> bool:
        return box[0] < margin or box[1] < margin or box[2] > width - margin or box[3] > height - margin

    # Only faces at the border: the larger frame shifts the detector's pyramid, which must not change the rest.
    return [f for f in found if at_edge(f.box) and all(box_iou(f.box, k.box) < SAME_FACE_IOU for k in known)]


def detect_faces(
    rgb: np.ndarray,
    detector: FaceDetector,
    detect_max_side: int,
    refine_landmarks: bool = False,
    edge_pass: bool = False,
    landmark_source: str = "dlib",
) -> list[Face]:
    """Every face in the photo, largest first, in full-resolution coordinates."""
    height, width = rgb.shape[:2]
    scale = min(1.0, detect_max_side / max(height, width))
    small = rgb
    if scale < 1.0:
        small = cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    faces = detector.detect(small)
    if edge_pass:
        faces = sorted(faces + _edge_faces(small, detector, faces), key=lambda face: face.area, reverse=True)
    if scale < 1.0:
        faces = [_moved(face, scale) for face in faces]
    if refine_landmarks:
        faces = [replace(f, landmarks5=landmarks5_from_68(landmarks68(rgb, f, landmark_source))) for f in faces]
    return faces


def detect_with_config(rgb: np.ndarray, detector: FaceDetector, config: FacesConfig) -> list[Face]:
    """Detection as the run's configuration asks (downscaled search, optional landmark refinement)."""
    refine, edge = config.refine_landmarks, config.edge_pass
    return detect_faces(rgb, detector, config.detect_max_side, refine, edge, config.landmarks68)


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
