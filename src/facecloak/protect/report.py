"""What a protected photo's record and outputs say besides its pixels: notes on its faces, the before/after image."""

from __future__ import annotations

import numpy as np

from facecloak.faces.detect import Face
from facecloak.io.images import Photo

SIDE_BY_SIDE_HEIGHT = 512

JUDGEABLE_FACE_SIDE = 32
"""Face-recognition models look at 112-160 px crops; a face under this many pixels a side is mostly upsampling
blur to them, so similarities measured on it say little about how it would fare at a readable size."""


def face_notes(faces: list[Face], found: int, max_faces: int) -> list[str]:
    """Notes about the faces: ones left unprotected by ``protect.max_faces``, ones too small to judge."""
    notes = []
    if found > len(faces):
        notes.append(f"{found} faces found, only the {max_faces} largest protected (raise protect.max_faces)")
    for index, face in enumerate(faces):
        side = min(face.width, face.box[3] - face.box[1])
        if side < JUDGEABLE_FACE_SIDE:
            notes.append(
                f"face {index} is {side:.0f} px, below the {JUDGEABLE_FACE_SIDE} px where protection can be judged: "
                "its verdicts are unreliable"
            )
    return notes


def small_photo_hint(photo: Photo, min_face_size: int) -> str:
    """Why a small photo may show no face: the detector skips faces under ``faces.min_face_size`` pixels."""
    if min(photo.size) >= 4 * min_face_size:
        return ""
    return (
        f" (a {photo.size[1]}×{photo.size[0]} photo: faces under faces.min_face_size={min_face_size} px are not "
        "searched; protection cannot be judged on faces that small)"
    )


def side_by_side(before: np.ndarray, after: np.ndarray, height: int = SIDE_BY_SIDE_HEIGHT) -> np.ndarray:
    """Original and protected photo next to each other, scaled to a common height."""
    import cv2

    scale = min(1.0, height / before.shape[0])
    size = (max(1, round(before.shape[1] * scale)), max(1, round(before.shape[0] * scale)))
    left = cv2.resize(before, size, interpolation=cv2.INTER_AREA)
    right = cv2.resize(after, size, interpolation=cv2.INTER_AREA)
    gap = np.full((size[1], 8, 3), 255, np.uint8)
    return np.concatenate([left, gap, right], axis=1)
