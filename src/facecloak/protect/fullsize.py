"""Keep what the user gave: a huge photo keeps its size, a grey photo stays grey.

Networks work on a photo of at most :data:`~facecloak.io.images.DEFAULT_MAX_SIDE` pixels a side; a 12000×9000 scan
is protected on a downscaled working copy and only the *change* (protected minus working copy, over the region it
touches) is upsampled and added to the full-resolution original, so every pixel away from the faces is the user's
own and the output has the input's size. A greyscale photo gets a colour change from the generator (makeup); left so,
the face would be tinted on a grey photo, so the protected photo is turned back to grey like its input.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from facecloak.faces.detect import Face
from facecloak.io.images import DEFAULT_MAX_SIDE, Photo

LUMA = np.array([0.299, 0.587, 0.114])
"""ITU-R BT.601 luma weights (what Pillow's ``convert("L")`` uses)."""


def working_copy(full: Photo, max_side: int = DEFAULT_MAX_SIDE) -> Photo:
    """The photo the networks see: ``full`` itself, or a copy downscaled to ``max_side`` (said in its notes)."""
    import cv2

    height, width = full.size
    if max(height, width) <= max_side:
        return full
    factor = max_side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    rgb = cv2.resize(full.rgb, size, interpolation=cv2.INTER_AREA)
    note = (
        f"{width}×{height} photo protected at a working size of {size[0]}×{size[1]}; the change was pasted back "
        "at full resolution (the output keeps the input's size)"
    )
    return replace(full, rgb=rgb, notes=(*full.notes, note))


def scale_face(face: Face, factor: float) -> Face:
    """A face found on the working copy, in the full photo's pixels."""
    return replace(face, box=tuple(v * factor for v in face.box), landmarks5=np.asarray(face.landmarks5) * factor)  # type: ignore[arg-type]


def paste_change_full(full_rgb: np.ndarray, work_rgb: np.ndarray, protected_work: np.ndarray) -> np.ndarray:
    """Add the working-size change, upsampled, to the full-size photo (only over the box the change touches)."""
    import cv2

    if full_rgb.shape == work_rgb.shape:
        return protected_work
    change = protected_work.astype(np.float32) - work_rgb.astype(np.float32)
    rows, cols = np.nonzero(np.abs(change).max(axis=2) > 0)
    if rows.size == 0:
        return full_rgb
    sy, sx = full_rgb.shape[0] / work_rgb.shape[0], full_rgb.shape[1] / work_rgb.shape[1]
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    fy0, fy1 = int(np.floor(y0 * sy)), min(full_rgb.shape[0], int(np.ceil(y1 * sy)))
    fx0, fx1 = int(np.floor(x0 * sx)), min(full_rgb.shape[1], int(np.ceil(x1 * sx)))
    patch = cv2.resize(change[y0:y1, x0:x1], (fx1 - fx0, fy1 - fy0), interpolation=cv2.INTER_LINEAR)
    out = full_rgb.copy()
    region = out[fy0:fy1, fx0:fx1].astype(np.float32) + patch
    out[fy0:fy1, fx0:fx1] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
    return out


def is_grey(rgb: np.ndarray) -> bool:
    """Whether every pixel has equal red, green and blue (a greyscale photo decoded as RGB)."""
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def keep_grey(original_rgb: np.ndarray, protected: np.ndarray) -> np.ndarray:
    """A grey input's protected photo, back to grey (its luma), so the face is not tinted on a grey photo."""
    if not is_grey(original_rgb):
        return protected
    luma = np.clip(np.rint(protected.astype(np.float32) @ LUMA.astype(np.float32)), 0, 255).astype(np.uint8)
    return np.repeat(luma[..., None], 3, axis=2)
