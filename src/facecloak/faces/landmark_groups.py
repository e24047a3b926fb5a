"""How far each of the 68 landmarks may move, measured against the feature it belongs to.

A bound relative to the inter-ocular distance alone is the wrong yardstick for small features: 6 % of the eye
distance is half an eye's opening or a closed mouth's lip height, so an optimiser that spends the whole budget there
turns the face into a squint, a frown or a grimace. Here a landmark's move is split in two:

- a **translation of its feature** (jaw, each brow, nose, each eye, mouth), bounded by the global cap: where a
  feature sits (eye position, mouth height, nose width through its points) is a change of shape, not of expression;
- a **local move** of the landmark within its feature, bounded per axis by a fraction of that feature's own extent
  in the face's frame (an eye's width and opening, the lips' width and height, a brow's length and arch), so a
  feature keeps its proportions.

A brow's vertical translation is bounded by a fraction of its height over the eye, since that height *is* its
expression.
"""

from __future__ import annotations

import numpy as np

FEATURES: dict[str, tuple[int, int]] = {
    "jaw": (0, 17),
    "brow_right": (17, 22),
    "brow_left": (22, 27),
    "nose": (27, 36),
    "eye_right": (36, 42),
    "eye_left": (42, 48),
    "mouth": (48, 68),
}
"""dlib's 68-point layout as features (half-open index ranges), in the iBUG order (subject's right first)."""

BROWS = ("brow_right", "brow_left")
EYE_OF_BROW = {"brow_right": "eye_right", "brow_left": "eye_left"}


def feature_of_landmark() -> np.ndarray:
    """Index into ``FEATURES`` of each of the 68 landmarks ``[68]``."""
    index = np.empty(68, np.int64)
    for k, (start, stop) in enumerate(FEATURES.values()):
        index[start:stop] = k
    return index


def face_frame(landmarks68: np.ndarray) -> np.ndarray:
    """Rotation ``[2, 2]`` whose columns are the face's x axis (eye to eye) and y axis (down the face)."""
    points = np.asarray(landmarks68, np.float64)
    axis = points[42:48].mean(axis=0) - points[36:42].mean(axis=0)
    x = axis / max(float(np.linalg.norm(axis)), 1e-12)
    return np.stack([x, np.array([-x[1], x[0]])], axis=1)


def feature_extents(landmarks68: np.ndarray) -> np.ndarray:
    """Each feature's width and height ``[len(FEATURES), 2]`` in the face's frame (the landmarks' units)."""
    points = np.asarray(landmarks68, np.float64) @ face_frame(landmarks68)
    return np.stack([points[a:b].max(axis=0) - points[a:b].min(axis=0) for a, b in FEATURES.values()])


def brow_heights(landmarks68: np.ndarray) -> dict[str, float]:
    """How far each brow sits above its eye (face frame): what a person reads as a raised or lowered brow."""
    points = np.asarray(landmarks68, np.float64) @ face_frame(landmarks68)
    heights = {}
    for brow in BROWS:
        (a, b), (c, d) = FEATURES[brow], FEATURES[EYE_OF_BROW[brow]]
        heights[brow] = abs(float(points[c:d, 1].mean() - points[a:b, 1].mean()))
    return heights


def move_bounds(landmarks68: np.ndarray, fraction: float | None, cap: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis bounds (face frame, the landmarks' units) of each feature's translation and each landmark's local move.

    Returns ``(translation [len(FEATURES), 2], local [68, 2])``. With ``fraction`` None every bound is ``cap`` (the
    inter-ocular yardstick alone); otherwise a local move is at most ``fraction`` of its feature's extent on that axis,
    a brow's vertical translation at most ``fraction`` of its height over the eye, and nothing more than ``cap``.
    """
    translation = np.full((len(FEATURES), 2), cap)
    if fraction is None:
        return translation, np.full((68, 2), cap)
    local = np.minimum(cap, fraction * feature_extents(landmarks68))[feature_of_landmark()]
    for brow, height in brow_heights(landmarks68).items():
        translation[list(FEATURES).index(brow), 1] = min(cap, fraction * height)
    return translation, local
