"""MAP's expression objective: make an expression model read the chosen expression on the generated face.

MAP hides the adversarial identity change inside a natural change of expression (happy, surprised, …). The
objective is the negative log-probability of that expression under a differentiable expression classifier (by
default face-api's ``FaceApiExpressionNet``), evaluated on a square face crop cut from the generated image.

The crop box is derived from the five landmarks of the *original* photo, so it stays fixed while the face changes:
the landmarks are fitted to the ArcFace 112×112 template by a similarity transform, and the box is the square that
template crop covers in the photo, without its rotation (face-api's networks were trained on axis-aligned detector
boxes, not on rotation-normalised crops). Cropping is a differentiable bilinear resampling of the pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from facecloak.errors import ConfigError
from facecloak.faces.align import estimate_similarity
from facecloak.faces.templates import ARCFACE_112
from facecloak.models.faceapi import EXPRESSION_LABELS, load_faceapi_model

FACEAPI_CROP_SIZE = 112
"""Input side of face-api's expression and 68-landmark networks (``FaceFeatureExtractor``)."""

FACEAPI_PIXEL_SCALE = 255.0
"""face-api networks take RGB in [0, 255]; the generator produces [0, 1]."""

DEFAULT_BOX_MARGIN = 1.0
"""Side of the face box relative to the ArcFace-template square; 1.0 covers brows to chin like a detector box."""


# --- face box and crop -----------------------------------------------------------------------------------------------


def face_boxes_from_landmarks(landmarks5: torch.Tensor, margin: float = DEFAULT_BOX_MARGIN) -> torch.Tensor:
    """Axis-aligned square face boxes ``[B, 4]`` (left, top, right, bottom; pixel edges) from landmarks ``[B, 5, 2]``.

    The box is where the ArcFace template's 112×112 square lands in the photo under the fitted similarity,
    scaled by ``margin`` about its centre. Differentiable, though callers usually pass the original landmarks.
    """
    if landmarks5.ndim != 3 or landmarks5.shape[-2:] != (5, 2):
        raise ConfigError(f"face boxes need landmarks of shape [B, 5, 2], got {tuple(landmarks5.shape)}")
    if margin <= 0:
        raise ConfigError(f"face box margin must be positive, got {margin}")
    template = torch.as_tensor(ARCFACE_112.points_array(), dtype=landmarks5.dtype, device=landmarks5.device)
    matrix = estimate_similarity(landmarks5, template.expand_as(landmarks5))  # photo → template crop
    linear, shift = matrix[:, :, :2], matrix[:, :, 2]
    height, width = ARCFACE_112.size
    # Template pixel centres are integers; the crop's centre point is at (size - 1) / 2.
    centre_crop = torch.tensor([(width - 1) / 2.0, (height - 1) / 2.0], dtype=linear.dtype, device=linear.device)
    centre = torch.linalg.solve(linear, (centre_crop - shift).unsqueeze(-1)).squeeze(-1)
    scale = torch.sqrt(torch.abs(torch.linalg.det(linear)))
    half = 0.5 * margin * max(height, width) / scale
    return torch.stack([centre[:, 0] - half, centre[:, 1] - half, centre[:, 0] + half, centre[:, 1] + half], dim=1)


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Differentiably resample each box of ``images`` ``[B, C, H, W]`` to ``size``×``size`` (zeros outside).

    Boxes are pixel edges with pixel centres at integer coordinates. Bilinear sampling does not antialias: crop
    photos at about the network's resolution (upscaling, as for generator outputs, is fine).
    """
    if images.ndim != 4 or boxes.shape != (images.shape[0], 4):
        raise ConfigError(f"crop_boxes needs images [B, C, H, W] and boxes [B, 4], got {images.shape}, {boxes.shape}")
    boxes = boxes.to(images)
    height, width = images.shape[-2:]
    left, top, right, bottom = boxes.unbind(dim=1)
    zeros = torch.zeros_like(left)
    # Output normalised coordinate v ∈ [-1, 1] maps to input normalised u = a·v + b (grid_sample, align_corners=False).
    theta = torch.stack(
        [
            torch.stack([(right - left) / width, zeros, (left + right + 1.0) / width - 1.0], dim=1),
            torch.stack([zeros, (bottom - top) / height, (top + bottom + 1.0) / height - 1.0], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, [images.shape[0], images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def faceapi_crop(images01: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The 112×112 RGB [0, 255] input of face-api's expression and landmark networks, from images in [0, 1]."""
    return crop_boxes(images01, boxes, FACEAPI_CROP_SIZE) * FACEAPI_PIXEL_SCALE


# --- the objective ---------------------------------------------------------------------------------------------------


def expression_index(expression: str, labels: Sequence[str] = EXPRESSION_LABELS) -> int:
    """Position of a named expression in the classifier's output, or a ConfigError listing the known names."""
    key = expression.strip().lower()
    if key not in labels:
        raise ConfigError(f"unknown expression {expression!r}; the expression model knows {list(labels)}")
    return list(labels).index(key)


class ExpressionObjective(nn.Module):
    """``−log p(expression | face crop)`` per image under a frozen, differentiable expression network."""

    def __init__(self, expression: str, network: nn.Module | None = None) -> None:
        super().__init__()
        network = network if network is not None else load_faceapi_model("expression")
        self.labels: tuple[str, ...] = tuple(getattr(network, "labels", EXPRESSION_LABELS))
        self.expression = expression.strip().lower()
        self.index = expression_index(self.expression, self.labels)
        self.network = network.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> ExpressionObjective:
        """The classifier is a frozen judge: it stays in eval mode whatever the surrounding module does."""
        return super().train(False)

    def logits(self, images01: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Expression logits ``[B, K]`` of the face in each box."""
        return self.network(faceapi_crop(images01, boxes))

    def probability(self, images01: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Probability of the chosen expression per image ``[B]``, the number MAP reports."""
        return torch.softmax(self.logits(images01, boxes), dim=1)[:, self.index]

    def forward(self, images01: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Per-image cross-entropy toward the chosen expression ``[B]``."""
        return self.nll(self.logits(images01, boxes))

    def nll(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-image ``−log p(expression)`` from logits, for callers that also log the probabilities."""
        target = torch.full((logits.shape[0],), self.index, dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits, target, reduction="none")
