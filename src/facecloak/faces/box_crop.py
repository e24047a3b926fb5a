"""CLIP2Protect's face-recognition input (``fr.preprocess: box``): the source photo's detector box, cut from the image.

The reference (``adversarial_optimization.py``) runs MTCNN (margin 0) once on the FFHQ-aligned source photo, rounds
the box with Python's ``round`` and slices ``[top - margin : bottom + margin, left - margin : right + margin]`` from
the source photo and, every step, from the render (same geometry: the render reconstructs that photo). Each model
then gets that crop resized bilinearly (``align_corners=False``) to its input side (112, FaceNet 160) in
``(x - 0.5) · 2``; :class:`~facecloak.models.fr.zoo.FaceEmbedder` does that resize and range from the registry entry.
No rotation, no landmark alignment: AMT-GAN's verification thresholds were computed for crops made this way.

Our default (``fr.preprocess: align5``) warps each face onto the model's own five-point template instead
(:func:`facecloak.faces.align.align_tensor`), which does not depend on the detector's box.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from facecloak.errors import ConfigError, NoFaceError

BoxXYXY = tuple[float, float, float, float]


def box_slices(box: Sequence[float], height: int, width: int, margin: int = 0) -> tuple[slice, slice]:
    """Row and column slices of ``box`` (x0, y0, x1, y1) as the reference rounds them (Python's ``round``)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    top, bottom = round(y0) - margin, round(y1) + margin
    left, right = round(x0) - margin, round(x1) + margin
    if top < 0 or left < 0 or bottom > height or right > width or bottom - top < 2 or right - left < 2:
        # The reference would wrap a negative start around (a Python slice) and crop nonsense; say so instead.
        raise ConfigError(
            f"face box {tuple(round(v, 1) for v in (x0, y0, x1, y1))} with margin {margin} does not lie inside the "
            f"{width}×{height} image; fr.preprocess=box needs the whole face in the aligned crop"
        )
    return slice(top, bottom), slice(left, right)


def crop_box(images: Tensor, box: Sequence[float], margin: int = 0) -> Tensor:
    """The ``[B, C, h, w]`` window of ``images`` inside ``box`` (differentiable: a slice)."""
    rows, cols = box_slices(box, images.shape[-2], images.shape[-1], margin)
    return images[..., rows, cols]


def crop_boxes(images: Tensor, boxes: Tensor, margin: int = 0) -> list[Tensor]:
    """One crop per image ``[1, C, h_i, w_i]`` from per-image boxes ``[B, 4]`` (sizes differ, hence a list)."""
    if boxes.ndim != 2 or boxes.shape != (images.shape[0], 4):
        raise ConfigError(f"need one box (x0, y0, x1, y1) per image: {images.shape[0]} images, boxes {boxes.shape}")
    return [crop_box(images[i : i + 1], boxes[i].tolist(), margin) for i in range(images.shape[0])]


def detector_box(rgb_uint8: object, detector: object, faces_config: object) -> BoxXYXY:
    """The reference's box of one photo: the first detected face's box (MTCNN, margin 0), in its pixels."""
    from facecloak.faces.crops import detect_with_config

    found = detect_with_config(rgb_uint8, detector, faces_config)  # type: ignore[arg-type]
    if not found:
        raise NoFaceError("no face found in the aligned crop for the box-crop face-recognition input")
    x0, y0, x1, y1 = (float(v) for v in found[0].box)
    return x0, y0, x1, y1


def boxes_tensor(boxes: Sequence[BoxXYXY], device: torch.device | str = "cpu") -> Tensor:
    """Boxes as the ``[B, 4]`` float64 tensor :class:`~facecloak.losses.identity.IdentityReference` carries."""
    return torch.tensor([list(b) for b in boxes], dtype=torch.float64, device=device)
