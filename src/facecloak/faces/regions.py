"""Face geometry the protection methods share: where the face is in a crop, square face crops, landmark jitter.

- :func:`face_region_mask`: the part of a crop paste-back may change (hull of the 68 landmarks plus the forehead);
- :func:`square_face_crop`: the axis-aligned square around a detected face that MAP's score network sees;
- :func:`jitter_landmarks`: a random similarity of the five landmarks, so the latent search's change does not depend
  on one exact alignment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from facecloak.errors import ConfigError
from facecloak.faces.align import transform_points, warp_image
from facecloak.faces.detect import Face

FACE_CROP_SCALE = 1.6
"""Side of the square network input relative to the detector box's larger side: the whole head with a little
background, roughly the framing of the CelebA-HQ images the reference score network was trained on."""

FOREHEAD_RAISE = 0.6
"""The forehead is covered by lifting the brow points by this fraction of the brow-to-chin distance."""


def face_region_mask(landmarks68: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Filled convex hull of the 68 landmarks with the brows lifted over the forehead (crop pixels, 0/1)."""
    brows = landmarks68[17:27]
    chin = landmarks68[8]
    lift = (chin - brows.mean(axis=0)) * FOREHEAD_RAISE
    points = np.concatenate([landmarks68, brows - lift]).round().astype(np.int32)
    mask = np.zeros(size, np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(points), 1)
    return mask


@dataclass(frozen=True, eq=False)
class FaceCrop:
    """A square face crop at the network's resolution, its landmarks, and the photo→crop matrix for paste-back."""

    image01: torch.Tensor
    """``[3, size, size]`` RGB in [0, 1]."""
    landmarks5: torch.Tensor
    """``[5, 2]`` landmarks in crop pixels."""
    matrix: np.ndarray


def square_face_crop(rgb: np.ndarray, face: Face, size: int, scale: float = FACE_CROP_SCALE) -> FaceCrop:
    """Cut the square around a detected face that the score network sees (axis-aligned, antialiased)."""
    if scale <= 0 or size < 1:
        raise ConfigError(f"face crop scale={scale} and size={size} must be positive")
    left, top, right, bottom = face.box
    side = scale * max(right - left, bottom - top)
    zoom = size / side
    # Box centre (pixel-centre coordinates) goes to the crop centre ((size - 1) / 2).
    cx, cy = (left + right) / 2.0, (top + bottom) / 2.0
    matrix = np.array([[zoom, 0.0, (size - 1) / 2.0 - zoom * cx], [0.0, zoom, (size - 1) / 2.0 - zoom * cy]])
    crop = warp_image(rgb, matrix, (size, size), interpolation="bilinear", border="reflect")
    return FaceCrop(
        image01=torch.from_numpy(crop).permute(2, 0, 1).float() / 255.0,
        landmarks5=torch.from_numpy(transform_points(matrix, face.landmarks5)).float(),
        matrix=matrix,
    )


def jitter_landmarks(landmarks5: Tensor, strength: float, rng: torch.Generator) -> Tensor:
    """Landmarks ``[1, 5, 2]`` moved by a random similarity about their centre (scale, rotation, shift)."""
    draws = (torch.rand(4, generator=rng, dtype=torch.float64) * 2 - 1) * strength
    scale, angle = 1.0 + float(draws[0]), float(draws[1])
    eye_distance = (landmarks5[0, 1] - landmarks5[0, 0]).norm()
    shift = draws[2:].to(landmarks5) * eye_distance
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    rotation = torch.tensor([[cos, -sin], [sin, cos]], dtype=landmarks5.dtype, device=landmarks5.device)
    centre = landmarks5.mean(dim=1, keepdim=True)
    return (landmarks5 - centre) @ rotation.T + centre + shift
