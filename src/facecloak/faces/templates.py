"""Five-point alignment templates: where each face-recognition model expects the eyes, nose and mouth.

A recognition model only works on crops aligned the way its training data was aligned, so the template
is part of the model's preprocessing contract (the weights registry names one per model). Templates
are data with provenance, not code: points are ``(x, y)`` in output-crop pixels, in the order left eye,
right eye, nose tip, left mouth corner, right mouth corner *as seen in the image*.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from facecloak.errors import ConfigError

POINT_COUNT = 5


@dataclass(frozen=True)
class AlignmentTemplate:
    """Reference landmark positions in a crop of a given size, and where they come from."""

    name: str
    size: tuple[int, int]
    """(height, width) of the aligned crop."""
    points: tuple[tuple[float, float], ...]
    source: str

    def __post_init__(self) -> None:
        if len(self.points) != POINT_COUNT or any(len(point) != 2 for point in self.points):
            raise ConfigError(f"template '{self.name}' needs {POINT_COUNT} (x, y) points, got {self.points}")
        if min(self.size) < 1:
            raise ConfigError(f"template '{self.name}' needs a positive (height, width), got {self.size}")

    def points_array(self) -> np.ndarray:
        """The reference points as a float32 5×2 array, ready for a transform fit."""
        return np.asarray(self.points, dtype=np.float32)

    def scaled(self, size: tuple[int, int] | int, name: str | None = None) -> AlignmentTemplate:
        """The same template for another crop size: point coordinates scale with the crop, per axis."""
        height, width = (size, size) if isinstance(size, int) else size
        sy, sx = height / self.size[0], width / self.size[1]
        points = tuple((x * sx, y * sy) for x, y in self.points)
        return AlignmentTemplate(
            name=name or f"{self.name}@{height}x{width}",
            size=(height, width),
            points=points,
            source=f"{self.source}; coordinates scaled to {height}×{width}",
        )


# insightface `utils/face_align.py: arcface_dst`, the template used to build MS1M-ArcFace/Glint training crops.
ARCFACE_112 = AlignmentTemplate(
    name="arcface_112",
    size=(112, 112),
    points=((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041)),
    source="insightface python-package insightface/utils/face_align.py, arcface_dst (112×112)",
)

# SphereFace's MATLAB preprocessing (wy1031/sphereface preprocess/code/face_align_demo.m, coord5points, 112×96);
# the same REFERENCE_FACIAL_POINTS are used by MobileFaceNet_Pytorch (CASIA) and by the ArcFace template minus 8 px.
SPHEREFACE_112X96 = AlignmentTemplate(
    name="sphereface_112x96",
    size=(112, 96),
    points=((30.2946, 51.6963), (65.5318, 51.5014), (48.0252, 71.7366), (33.5493, 92.3655), (62.7299, 92.2041)),
    source="SphereFace face_align_demo.m coord5points (112×96 h×w); used by Xiaoccer/MobileFaceNet_Pytorch",
)


def arcface_template(size: int) -> AlignmentTemplate:
    """ArcFace template for a square crop of any size (e.g. 224 for HSE FaceRes, 160 for FaceNet-style inputs).

    Points scale uniformly with the side, which is what insightface's ``estimate_norm`` does for sizes that are
    multiples of 112 (its other rule, for multiples of 128, adds an 8/128 horizontal margin instead).
    """
    if size < 1:
        raise ConfigError(f"ArcFace template size must be positive, got {size}")
    if size == ARCFACE_112.size[0]:
        return ARCFACE_112
    return ARCFACE_112.scaled(size, name=f"arcface_{size}")


_TEMPLATES: dict[str, AlignmentTemplate] = {
    ARCFACE_112.name: ARCFACE_112,
    "arcface": ARCFACE_112,
    SPHEREFACE_112X96.name: SPHEREFACE_112X96,
    "sphereface": SPHEREFACE_112X96,
    "mobilefacenet_casia": SPHEREFACE_112X96,
    "arcface_160": arcface_template(160),
    "arcface_224": arcface_template(224),
}
_ARCFACE_ANY_SIZE = re.compile(r"arcface_(\d+)")


def template_names() -> list[str]:
    """Names ``get_template`` accepts (plus ``arcface_<size>`` for any size)."""
    return sorted(_TEMPLATES)


def get_template(name: str) -> AlignmentTemplate:
    """Look up a template by the name a model's registry entry or a config uses."""
    key = name.strip().lower()
    if key in _TEMPLATES:
        return _TEMPLATES[key]
    match = _ARCFACE_ANY_SIZE.fullmatch(key)
    if match:
        return arcface_template(int(match.group(1)))
    raise ConfigError(
        f"unknown alignment template '{name}'; known: {', '.join(template_names())}, "
        "or arcface_<size> for any square size (e.g. arcface_256)"
    )
