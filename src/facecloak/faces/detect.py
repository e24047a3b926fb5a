"""Find every face in a full photo, with the five landmarks that alignment needs.

Protection is applied per face, so a detector must return *all* faces (a group photo protected for
one person only still exposes the others). Detectors sit behind one small protocol and a registry:
MTCNN (weights ship inside the ``facenet-pytorch`` wheel, so it works offline) is the default; SCRFD
runs from an insightface ``.onnx`` file the user supplies. Heavy models are built on first use, so
importing this module or configuring a detector costs nothing.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from facecloak.errors import ConfigError, ImageError, MissingWeightsError, WeightsError

LANDMARK_COUNT = 5
# MTCNN defaults from the paper's reference code (kpzhang93/MTCNN_face_detection_alignment, also davidsandberg/facenet
# align/detect_face.py and facenet-pytorch): smallest face in pixels, P/R/O-Net score thresholds, image-pyramid step.
MTCNN_MIN_FACE_SIZE = 20
MTCNN_THRESHOLDS = (0.6, 0.7, 0.7)
MTCNN_SCALE_FACTOR = 0.709
# insightface FaceAnalysis defaults for SCRFD: network input size, score threshold and NMS IoU.
SCRFD_INPUT_SIZE = (640, 640)
SCRFD_SCORE_THRESHOLD = 0.5
SCRFD_NMS_THRESHOLD = 0.4
# dlib 68-point indices (iBUG 300-W markup) of the points that make up the 5-point set.
DLIB68_LEFT_EYE = slice(36, 42)
DLIB68_RIGHT_EYE = slice(42, 48)
DLIB68_NOSE_TIP = 30
DLIB68_MOUTH_LEFT = 48
DLIB68_MOUTH_RIGHT = 54


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face in photo pixel coordinates.

    ``landmarks5`` is 5×2 ``(x, y)``: left eye, right eye, nose tip, left and right mouth corner as seen in the
    image (the detector's semantic order; for an upright face the "left" eye has the smaller x).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks5: np.ndarray

    @property
    def width(self) -> float:
        """Box width in pixels."""
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        """Box height in pixels."""
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        """Box area, the sort key: the largest face is usually the subject."""
        return max(self.width, 0.0) * max(self.height, 0.0)


@runtime_checkable
class FaceDetector(Protocol):
    """Anything that finds every face in an RGB photo."""

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces in ``rgb`` (H×W×3 uint8), largest first."""
        ...


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        found = f"{rgb.dtype} array of shape {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ImageError(f"face detection needs an H×W×3 uint8 RGB array (see facecloak.io.load_photo), got {found}")
    return np.ascontiguousarray(rgb)


def faces_from_arrays(boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray) -> list[Face]:
    """Package a detector's raw N×4 / N / N×5×2 outputs as ``Face`` objects, largest first."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, LANDMARK_COUNT, 2)
    faces = [
        Face(box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])), score=float(s), landmarks5=points.copy())
        for b, s, points in zip(boxes, scores, landmarks, strict=True)
    ]
    return sorted(faces, key=lambda face: face.area, reverse=True)


class MTCNNDetector:
    """MTCNN from facenet-pytorch: P/R/O-Net cascade with 5 landmarks; its weights ship in the wheel."""

    def __init__(
        self,
        min_face_size: int = MTCNN_MIN_FACE_SIZE,
        thresholds: Sequence[float] = MTCNN_THRESHOLDS,
        scale_factor: float = MTCNN_SCALE_FACTOR,
        device: str | torch.device = "cpu",
    ) -> None:
        if min_face_size < 1:
            raise ConfigError(f"MTCNN min_face_size must be a positive number of pixels, got {min_face_size}")
        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise ConfigError(f"MTCNN thresholds must be three scores in [0, 1] (P-, R-, O-Net), got {thresholds}")
        if not 0.0 < scale_factor < 1.0:
            raise ConfigError(f"MTCNN scale_factor (pyramid step) must be in (0, 1), got {scale_factor}")
        self.min_face_size = int(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scale_factor = float(scale_factor)
        self.device = torch.device(device)

    @functools.cached_property
    def _mtcnn(self) -> Any:
        try:
            from facenet_pytorch import MTCNN
        except ImportError as error:
            raise MissingWeightsError(
                "the MTCNN detector needs facenet-pytorch: pip install --no-deps facenet-pytorch "
                "(its metadata pins an old torch; it works with current torch)"
            ) from error
        return MTCNN(
            keep_all=True,
            min_face_size=self.min_face_size,
            thresholds=list(self.thresholds),
            factor=self.scale_factor,
            device=self.device,
        ).eval()

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces in the photo, largest first (empty list when there is none)."""
        rgb = _check_rgb(rgb)
        with torch.inference_mode():
            boxes, scores, landmarks = self._mtcnn.detect(rgb, landmarks=True)
        if boxes is None:
            return []
        return faces_from_arrays(boxes, scores, landmarks)


class SCRFDDetector:
    """SCRFD from an insightface model pack (e.g. ``det_10g.onnx``), run by onnxruntime; the user supplies the file."""

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None,
        input_size: tuple[int, int] = SCRFD_INPUT_SIZE,
        score_threshold: float = SCRFD_SCORE_THRESHOLD,
        nms_threshold: float = SCRFD_NMS_THRESHOLD,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        if model_path is None:
            raise ConfigError(
                "detector 'scrfd' needs model_path: an insightface pack's det_*.onnx file (e.g. buffalo_l/det_10g.onnx)"
            )
        self.model_path = Path(model_path).expanduser()
        if not self.model_path.is_file():
            raise MissingWeightsError(
                f"SCRFD model file not found at {self.model_path}; SCRFD comes in insightface model packs "
                "(e.g. buffalo_l/det_10g.onnx) that you download yourself, or use detector 'mtcnn' (works offline)"
            )
        if not 0.0 <= score_threshold <= 1.0 or not 0.0 <= nms_threshold <= 1.0:
            raise ConfigError(
                f"SCRFD score_threshold and nms_threshold must be in [0, 1], got {score_threshold}, {nms_threshold}"
            )
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.providers = list(providers)

    @functools.cached_property
    def _model(self) -> Any:
        from insightface.model_zoo import get_model

        try:
            model = get_model(str(self.model_path), providers=self.providers)
        except Exception as error:  # onnxruntime raises its own exception types for unreadable graphs
            raise WeightsError(f"{self.model_path}: cannot be loaded as an ONNX model ({error})") from error
        if getattr(model, "taskname", None) != "detection":
            raise WeightsError(
                f"{self.model_path} is not a face detector (insightface routed it to "
                f"{type(model).__name__}); pass the pack's det_*.onnx file"
            )
        model.prepare(
            ctx_id=-1, input_size=self.input_size, det_thresh=self.score_threshold, nms_thresh=self.nms_threshold
        )
        return model

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces in the photo, largest first."""
        rgb = _check_rgb(rgb)
        bgr = np.ascontiguousarray(rgb[..., ::-1])  # insightface models take OpenCV's BGR order
        detections, landmarks = self._model.detect(bgr, input_size=self.input_size)
        if detections is None or len(detections) == 0:
            return []
        if landmarks is None:
            raise WeightsError(f"{self.model_path} predicts no landmarks; alignment needs a SCRFD model with keypoints")
        return faces_from_arrays(detections[:, :4], detections[:, 4], landmarks)


DETECTORS: dict[str, Callable[..., FaceDetector]] = {
    "mtcnn": MTCNNDetector,
    "scrfd": SCRFDDetector,
}


def build_detector(name: str, **kwargs: Any) -> FaceDetector:
    """Build a detector from its config name and options."""
    key = name.strip().lower()
    if key not in DETECTORS:
        raise ConfigError(f"unknown face detector '{name}'; known: {', '.join(sorted(DETECTORS))}")
    try:
        return DETECTORS[key](**kwargs)
    except TypeError as error:
        raise ConfigError(f"bad options for face detector '{key}': {error}") from error


# ------------------------------------------------------------------------------------ 68-point landmarks


@functools.lru_cache(maxsize=1)
def _dlib_shape_predictor() -> Any:
    try:
        import dlib

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # face_recognition_models imports the deprecated pkg_resources
            import face_recognition_models
    except ImportError as error:
        raise MissingWeightsError(
            "68-point landmarks need dlib and its models: pip install dlib-bin face-recognition-models 'setuptools<81'"
        ) from error
    return dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())


def dlib_landmarks68(rgb: np.ndarray, face: Face) -> np.ndarray:
    """The 68 iBUG landmarks of dlib's shape predictor in a face box: the FFHQ alignment recipe is defined on them.

    dlib's predictor was trained on its HOG detector's boxes; MTCNN boxes work as well: on the shared photos the
    resulting eye, nose and mouth points agree with MTCNN's own landmarks within about 5 % of the eye distance.
    """
    import dlib

    rgb = _check_rgb(rgb)
    left, top, right, bottom = (round(v) for v in face.box)
    shape = _dlib_shape_predictor()(rgb, dlib.rectangle(left, top, right, bottom))
    return np.array([(point.x, point.y) for point in shape.parts()], dtype=np.float64)


def landmarks5_from_68(landmarks68: np.ndarray) -> np.ndarray:
    """The 5-point set (eye centres, nose tip, mouth corners) from 68 iBUG points, for one alignment code path."""
    points = np.asarray(landmarks68, dtype=np.float64)
    if points.shape != (68, 2):
        raise ConfigError(f"expected 68×2 landmarks, got shape {points.shape}")
    return np.stack(
        [
            points[DLIB68_LEFT_EYE].mean(axis=0),
            points[DLIB68_RIGHT_EYE].mean(axis=0),
            points[DLIB68_NOSE_TIP],
            points[DLIB68_MOUTH_LEFT],
            points[DLIB68_MOUTH_RIGHT],
        ]
    )
