"""Face detection and alignment settings (the ``faces`` config group), owned by the faces layer."""

from __future__ import annotations

from dataclasses import dataclass, field

from facecloak.validate import require

KNOWN_DETECTORS = ("mtcnn", "scrfd")
LANDMARK68_SOURCES = ("dlib", "faceapi")


@dataclass
class FacesConfig:
    """Face detection and alignment for full photos."""

    detector: str = "mtcnn"
    # MTCNN: smallest face side in pixels (smaller faces are not searched: lower it for crowds and distant faces, at
    # the cost of time and false detections), and the P/R/O-Net score thresholds (facenet-pytorch defaults).
    min_face_size: int = 20
    thresholds: list[float] = field(default_factory=lambda: [0.6, 0.7, 0.7])
    # Detection runs on a copy downscaled to this longest side; landmarks are mapped back to the full photo.
    detect_max_side: int = 1600
    # Photos with more pixels are refused (decompression-bomb guard); raise it for gigapixel scans.
    max_pixels: int = 100_000_000
    # A second detection pass on the photo framed by a grey border finds faces cut by its edge (faces/crops.py).
    edge_pass: bool = True
    # Replace the detector's five points by ones derived from dlib's 68-point predictor (eye centres from six
    # contour points each). On the shared photo set this lifts the weaker recognisers' ROC-AUC (faceres-deep
    # 0.982 -> 0.984) because MTCNN's eye points are coarse; see docs/benchmarks.md.
    refine_landmarks: bool = True
    # Where the 68 points (FFHQ alignment, face region, refinement) come from: dlib's shape predictor (100 MB, the
    # FFHQ recipe's own) or face-api's landmark net (350 kB; within ~8 % of the eye distance of dlib's on the shared
    # photos), e.g. for a GPU machine that cannot carry dlib's model (scripts/gpu_check.sh).
    landmarks68: str = "dlib"
    # Output size of FFHQ-style crops for the generator (the FFHQ recipe uses 1024).
    ffhq_size: int = 1024
    scrfd_model: str | None = None

    def __post_init__(self) -> None:
        require(self.detector in KNOWN_DETECTORS, "faces.detector", f"must be one of {KNOWN_DETECTORS}")
        require(self.landmarks68 in LANDMARK68_SOURCES, "faces.landmarks68", f"must be one of {LANDMARK68_SOURCES}")
        require(self.min_face_size >= 8, "faces.min_face_size", "must be at least 8 pixels")
        require(
            len(self.thresholds) == 3 and all(0 < t < 1 for t in self.thresholds),
            "faces.thresholds",
            "needs three MTCNN stage thresholds in (0, 1)",
        )
        require(self.detect_max_side >= 64, "faces.detect_max_side", "must be at least 64")
        require(self.max_pixels > 0, "faces.max_pixels", "must be positive")
        require(16 <= self.ffhq_size <= 1024, "faces.ffhq_size", "must be between 16 and 1024")
