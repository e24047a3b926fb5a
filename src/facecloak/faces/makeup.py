"""Make-up layers from the 68 landmarks: soft masks, each tinted with one plausible colour at a bounded opacity.

Layers: contour (bronzer in the cheek hollows, along the nose and inside the jaw line), cheeks (blush), lips, upper
eyelids (shadow), eyeliner along the upper lash line, and brows; colours live in CIE Lab, restricted to what make-up
of that kind looks like. Why Lab: a colour range there reads as "reds and berries for lips, browns for brows", and
tinting the chroma (a, b) while keeping most of the skin's own lightness keeps its texture and shading under the
layer. A layer changes nothing where its mask is zero: ``out = image + opacity · mask · (tinted − image)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

REGIONS = ("lips", "contour", "cheeks", "eyelids", "eyeliner", "brows")
"""Make-up layers in the order they are applied (contour under blush, liner over shadow)."""

COLOUR_RANGES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "lips": ((30.0, 65.0), (15.0, 55.0), (-5.0, 30.0)),  # nude pinks, reds, berries, browns
    "eyelids": ((30.0, 70.0), (-2.0, 20.0), (-15.0, 25.0)),  # taupe, bronze, mauve, soft brown shadow
    "brows": ((15.0, 45.0), (0.0, 15.0), (0.0, 25.0)),  # dark to mid browns
    "cheeks": ((50.0, 80.0), (10.0, 30.0), (0.0, 25.0)),  # pink and peach blush
    "eyeliner": ((5.0, 30.0), (-3.0, 12.0), (-12.0, 15.0)),  # black, charcoal, dark brown, navy
    "contour": ((25.0, 55.0), (3.0, 18.0), (5.0, 28.0)),  # taupe to bronze
}
"""Plausible make-up colours per layer as (L, a, b) ranges in CIE Lab (D65)."""

MAX_OPACITY = {"lips": 0.6, "eyelids": 0.4, "brows": 0.4, "cheeks": 0.25, "eyeliner": 0.8, "contour": 0.35}
"""Strongest each layer may be applied: lipstick and liner cover, blush and bronzer only tint."""

LUMINANCE_SHARE = {"lips": 0.3, "eyelids": 0.3, "brows": 0.3, "cheeks": 0.3, "eyeliner": 0.9, "contour": 0.7}
"""How much of a layer's own lightness replaces the skin's: colour layers mostly tint (the skin's shading shows
through), liner is a dark line and contour is a shadow, so those two carry their lightness."""

MASK_SOFTNESS = 0.08
"""Mask edges are blurred by this fraction of the inter-ocular distance (a brush, not a stencil)."""

EYELID_HEIGHT = 0.45
"""Eye shadow reaches this fraction of the way from the upper lid up to the brow."""

BROW_THICKEN = 0.06
"""Brow strokes are this fraction of the inter-ocular distance thick (on top of the dlib brow line)."""

CHEEK_RADIUS = 0.22
"""Blush ellipses have this half-width relative to the inter-ocular distance."""

EYELINER_WIDTH = 0.035
"""Eyeliner strokes along the upper lash line are this fraction of the inter-ocular distance thick."""

EYELINER_SOFTNESS = 0.015
"""Liner is drawn with a sharper brush than the other layers (fraction of the inter-ocular distance)."""

CONTOUR_WIDTH = 0.1
"""Bronzer strokes (cheek hollows, jaw line) are this fraction of the inter-ocular distance wide; nose sides half."""


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    radius = max(1, int(np.ceil(3 * sigma)))
    blurred = cv2.GaussianBlur(mask.astype(np.float32), (2 * radius + 1, 2 * radius + 1), sigma)
    return np.clip(blurred, 0.0, 1.0)


def makeup_masks(landmarks68_px: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Soft masks ``[len(REGIONS), H, W]`` in [0, 1] for each make-up layer, from landmarks in crop pixels."""
    import cv2

    points = np.asarray(landmarks68_px, np.float64)
    iod = float(np.linalg.norm(points[42:48].mean(axis=0) - points[36:42].mean(axis=0)))

    def polygon(*rings: np.ndarray, holes: tuple[np.ndarray, ...] = ()) -> np.ndarray:
        mask = np.zeros(size, np.uint8)
        cv2.fillPoly(mask, [np.round(r).astype(np.int32) for r in rings], 1)
        if holes:
            cv2.fillPoly(mask, [np.round(h).astype(np.int32) for h in holes], 0)
        return mask

    lips = polygon(points[48:60], holes=(points[60:68],))
    lids = []
    for eye, brow in ((points[36:40], points[17:22]), (points[42:46], points[22:27])):
        lift = (brow.mean(axis=0) - eye.mean(axis=0)) * EYELID_HEIGHT
        lids.append(np.concatenate([eye, eye[::-1] + lift]))
    eyelids = polygon(*lids)
    brows = np.zeros(size, np.uint8)
    for brow in (points[17:22], points[22:27]):
        thickness = max(1, round(BROW_THICKEN * iod))
        cv2.polylines(brows, [np.round(brow).astype(np.int32)], False, 1, thickness)
    cheeks = np.zeros(size, np.uint8)
    for jaw, nose in ((points[2], points[31]), (points[14], points[35])):
        centre = 0.5 * (jaw + nose) + np.array([0.0, -0.1 * iod])
        axes = (round(CHEEK_RADIUS * iod), round(0.7 * CHEEK_RADIUS * iod))
        cv2.ellipse(cheeks, (round(centre[0]), round(centre[1])), axes, 0.0, 0.0, 360.0, 1, -1)
    eyeliner = np.zeros(size, np.uint8)
    for lash_line in (points[36:40], points[42:46]):
        cv2.polylines(eyeliner, [np.round(lash_line).astype(np.int32)], False, 1, max(1, round(EYELINER_WIDTH * iod)))
    contour = _contour(points, size, iod)
    sigma = MASK_SOFTNESS * iod
    soft = {"lips": lips, "eyelids": eyelids, "brows": brows, "cheeks": cheeks, "contour": contour}
    layers = {name: _soft(mask, sigma) for name, mask in soft.items()}
    layers["eyeliner"] = _soft(eyeliner, EYELINER_SOFTNESS * iod)
    return np.stack([layers[name] for name in REGIONS])


def _contour(points: np.ndarray, size: tuple[int, int], iod: float) -> np.ndarray:
    """Where bronzer goes: the cheek hollows (ear towards the mouth corner), the sides of the nose, inside the jaw."""
    import cv2

    mask = np.zeros(size, np.uint8)
    width = max(1, round(CONTOUR_WIDTH * iod))
    centre = points[27:36].mean(axis=0)

    def stroke(line: np.ndarray, thickness: int) -> None:
        cv2.polylines(mask, [np.round(line).astype(np.int32)], False, 1, thickness)

    for jaw, corner in ((points[1], points[48]), (points[15], points[54])):
        stroke(np.stack([jaw + 0.15 * (corner - jaw), jaw + 0.55 * (corner - jaw)]), width)
    for brow, nostril in ((points[21], points[31]), (points[22], points[35])):
        top = brow + 0.35 * (nostril - brow)
        stroke(np.stack([top, nostril + 0.3 * (nostril - centre)]), max(1, width // 2))
    jaw_line = points[3:14] + 0.08 * (centre - points[3:14])
    stroke(jaw_line, width)
    return mask


def bounded_colours(raw: Tensor, regions: tuple[str, ...] = REGIONS) -> Tensor:
    """Unconstrained parameters ``[B, R, 3]`` → Lab colours inside each layer's plausible range (sigmoid box)."""
    ranges = torch.tensor([COLOUR_RANGES[r] for r in regions], dtype=raw.dtype, device=raw.device)  # [R, 3, 2]
    low, high = ranges[..., 0], ranges[..., 1]
    return low + (high - low) * torch.sigmoid(raw)


def bounded_opacity(raw: Tensor, regions: tuple[str, ...] = REGIONS) -> Tensor:
    """Unconstrained parameters ``[B, R]`` → opacities in ``[0, MAX_OPACITY[region]]``."""
    ceiling = torch.tensor([MAX_OPACITY[r] for r in regions], dtype=raw.dtype, device=raw.device)
    return ceiling * torch.sigmoid(raw)


def apply_makeup(
    images01: Tensor,
    masks: Tensor,
    colours_lab: Tensor,
    opacity: Tensor,
    luminance_share: float | Sequence[float] = 0.3,
) -> Tensor:
    """Layer make-up onto a face, keeping the skin's own shading under each layer.

    Layer make-up onto ``images01`` [B, 3, H, W]: ``masks`` [B or 1, R, H, W], ``colours_lab`` [B, R, 3],
    ``opacity`` [B, R]. Each layer takes its colour's chroma and ``luminance_share`` (one for all, or one per layer)
    of its lightness, so the skin's own shading shows through.
    """
    from kornia.color import lab_to_rgb, rgb_to_lab

    shares = [float(luminance_share)] * masks.shape[1] if isinstance(luminance_share, int | float) else luminance_share
    out = images01
    for r, share in enumerate(shares):
        lab = rgb_to_lab(out.clamp(0.0, 1.0))
        colour = colours_lab[:, r].view(-1, 3, 1, 1)
        lightness = lab[:, :1] + share * (colour[:, :1] - lab[:, :1])
        tinted = lab_to_rgb(torch.cat([lightness, colour[:, 1:].expand_as(lab[:, 1:])], dim=1)).clamp(0.0, 1.0)
        weight = opacity[:, r].view(-1, 1, 1, 1) * masks[:, r : r + 1].to(out)
        out = out + weight * (tinted - out)
    return out
