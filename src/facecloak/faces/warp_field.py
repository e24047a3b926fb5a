"""A smooth, bounded geometric edit of a face: landmark displacements → thin-plate spline → dense warp of the crop.

Coordinates are normalised to the crop, ``u = (x + 0.5) / W`` (pixel centres), so one displacement field describes
the same edit at the working resolution the attack optimises at and at the photo's full resolution. The field is a
*backward* map: an output pixel at ``q`` shows the input at ``q + f(q)``; a landmark moved from ``p`` to ``p + d``
gives ``f(p + d) = −d``.

The background never moves: fixed anchors on a ring around the face pin the spline there, and the field is
multiplied by a support mask that ramps from 1 on the face to exactly 0 on that ring, so every pixel outside the ring
is the input pixel itself (copied, not resampled).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

FIELD_BOUNDS = ("rescale", "clamp")
"""How :func:`dense_field` keeps the field within its cap: scale the whole lattice, or shorten each long vector."""

DEFAULT_STIFFNESS = 1e-3
"""Ridge on the spline's kernel matrix (crop-normalised units): 0 interpolates the landmark moves exactly, which
between close landmarks moved apart (inner and outer lip) overshoots several-fold and can fold the image; a smoothing
spline follows the moves loosely and stays near their size (measured: random moves of at most 6 % of the eye
distance gave a field up to 34 % at 1e-6, 11 % at 1e-3, 7 % at 1e-2)."""

FOREHEAD_LIFT = 0.5
"""The ring reaches over the forehead: brow points are lifted by this fraction of the brow-to-chin distance."""


def normalise_points(points_px: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pixel coordinates (x, y) → crop-normalised ``(x + 0.5) / W``, ``(y + 0.5) / H``."""
    height, width = size
    return (np.asarray(points_px, np.float64) + 0.5) / np.array([width, height], np.float64)


def inter_ocular(landmarks68: np.ndarray | Tensor) -> float:
    """Distance between the two eye centres (dlib points 36–41 and 42–47), in the landmarks' own units."""
    points = landmarks68.detach().cpu().numpy() if isinstance(landmarks68, Tensor) else np.asarray(landmarks68)
    return float(np.linalg.norm(points[42:48].mean(axis=0) - points[36:42].mean(axis=0)))


def anchor_ring(landmarks68: np.ndarray, margin: float, count: int = 32) -> np.ndarray:
    """Fixed points around the face, where the edit must have faded out.

    ``count`` fixed points around the face: the hull of the landmarks (brows lifted over the forehead), pushed
    outward by ``margin`` (same units as the landmarks) and resampled evenly along its length.
    """
    import cv2

    points = np.asarray(landmarks68, np.float64)
    brows = points[17:27]
    lifted = brows - (points[8] - brows.mean(axis=0)) * FOREHEAD_LIFT
    hull = cv2.convexHull(np.concatenate([points, lifted]).astype(np.float32))[:, 0].astype(np.float64)
    centre = hull.mean(axis=0)
    outward = hull - centre
    hull = hull + outward / np.linalg.norm(outward, axis=1, keepdims=True) * margin
    closed = np.concatenate([hull, hull[:1]])
    lengths = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    along = np.concatenate([[0.0], np.cumsum(lengths)])
    wanted = np.linspace(0.0, along[-1], count, endpoint=False)
    return np.stack([np.interp(wanted, along, closed[:, k]) for k in range(2)], axis=1)


def support_mask(ring_px: np.ndarray, size: tuple[int, int], ramp_px: float) -> np.ndarray:
    """How much the field may act at each pixel, so nothing beyond the anchor ring moves.

    Where the field may act ``[H, W]`` in [0, 1]: 1 deeper than ``ramp_px`` inside the ring, 0 on and outside it,
    a smoothstep between (so the edit fades out with a continuous slope).
    """
    import cv2

    inside = np.zeros(size, np.uint8)
    cv2.fillPoly(inside, [np.round(ring_px).astype(np.int32)], 1)
    depth = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    t = np.clip(depth / max(ramp_px, 1e-6), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _tps_kernel(a: Tensor, b: Tensor) -> Tensor:
    """U(r) = r² log r² between every point of ``a`` [B, M, 2] and ``b`` [B, N, 2] (0 at r = 0)."""
    squared = torch.cdist(a, b).square()
    return squared * torch.log(squared.clamp_min(1e-20))


def tps_fit(centres: Tensor, values: Tensor, stiffness: float = DEFAULT_STIFFNESS) -> tuple[Tensor, Tensor]:
    """Smoothing thin-plate spline of ``values`` [B, N, 2] at ``centres`` [B, N, 2]: kernel weights, affine part."""
    batch, count, _ = centres.shape
    ones = torch.ones(batch, count, 1, dtype=centres.dtype, device=centres.device)
    affine = torch.cat([ones, centres], dim=2)  # [B, N, 3]
    eye = torch.eye(count, dtype=centres.dtype, device=centres.device)
    top = torch.cat([_tps_kernel(centres, centres) + stiffness * eye, affine], dim=2)
    bottom = torch.cat([affine.transpose(1, 2), centres.new_zeros(batch, 3, 3)], dim=2)
    system = torch.cat([top, bottom], dim=1)
    rhs = torch.cat([values, values.new_zeros(batch, 3, 2)], dim=1)
    solution = torch.linalg.solve(system, rhs)
    return solution[:, :count], solution[:, count:]


def tps_evaluate(queries: Tensor, centres: Tensor, weights: Tensor, affine: Tensor) -> Tensor:
    """The spline at ``queries`` [B, M, 2]."""
    ones = torch.ones(*queries.shape[:2], 1, dtype=queries.dtype, device=queries.device)
    return _tps_kernel(queries, centres) @ weights + torch.cat([ones, queries], dim=2) @ affine


def dense_field(
    landmarks: Tensor,
    displacement: Tensor,
    anchors: Tensor,
    support: Tensor,
    grid: int = 64,
    max_norm: float | None = None,
    stiffness: float = DEFAULT_STIFFNESS,
    bound: str = "rescale",
) -> Tensor:
    """The dense, bounded field of a landmark edit: landmarks moved, anchors held, faded out.

    Backward displacement field ``[B, 2, H, W]`` (normalised units) for landmarks ``[B, N, 2]`` moved by
    ``displacement`` ``[B, N, 2]``, anchors ``[B, K, 2]`` held still, faded out by ``support`` ``[B or 1, 1, H, W]``.

    The spline is evaluated on a ``grid``×``grid`` lattice and upsampled bilinearly (it is smooth at that scale),
    which keeps the cost independent of the photo's resolution. With ``max_norm`` and ``bound`` "rescale" the lattice
    is scaled down as a whole when its longest vector exceeds it (one feature at the cap shrinks every other move);
    with "clamp" each lattice vector longer than ``max_norm`` is shortened to it and the rest keep their size.
    Bilinear upsampling and a support in [0, 1] only take convex combinations, so either way no pixel of the field
    moves further than ``max_norm``.
    """
    moved = torch.cat([landmarks + displacement, anchors], dim=1)
    back = torch.cat([-displacement, torch.zeros_like(anchors)], dim=1)
    weights, affine = tps_fit(moved, back, stiffness)
    axis = (torch.arange(grid, dtype=landmarks.dtype, device=landmarks.device) + 0.5) / grid
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    queries = torch.stack([xx, yy], dim=-1).reshape(1, -1, 2).expand(landmarks.shape[0], -1, -1)
    coarse = tps_evaluate(queries, moved, weights, affine).reshape(-1, grid, grid, 2).permute(0, 3, 1, 2)
    if max_norm is not None and bound == "clamp":
        coarse = coarse * (max_norm / coarse.norm(dim=1, keepdim=True).clamp_min(max_norm))
    elif max_norm is not None:
        longest = coarse.norm(dim=1).flatten(1).max(dim=1).values.clamp_min(max_norm)
        coarse = coarse * (max_norm / longest).view(-1, 1, 1, 1)
    field = F.interpolate(coarse, size=support.shape[-2:], mode="bilinear", align_corners=False)
    return field * support.to(field)


def apply_field(images: Tensor, field: Tensor, support: Tensor) -> Tensor:
    """Apply a field to images; the background is copied, not resampled.

    Resample ``images`` [B, C, H, W] along a backward ``field`` [B, 2, H, W]; pixels outside ``support``
    [B or 1, 1, H, W] (where the field is zero by construction) are copied from the input unchanged.
    """
    height, width = images.shape[-2:]
    ys = (torch.arange(height, dtype=images.dtype, device=images.device) + 0.5) / height
    xs = (torch.arange(width, dtype=images.dtype, device=images.device) + 0.5) / width
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    source = torch.stack([xx, yy], dim=0)[None] + field  # normalised [0, 1] source coordinates
    grid = (source * 2.0 - 1.0).permute(0, 2, 3, 1)
    sampled = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    moved = (support > 0).to(images)
    return images + moved * (sampled - images)


def displacement_stats(field: Tensor, size: tuple[int, int], iod_px: float, region: Tensor | None = None) -> dict:
    """Largest and mean displacement in pixels relative to the inter-ocular distance (mean over ``region``)."""
    height, width = size
    scale = torch.tensor([width, height], dtype=field.dtype, device=field.device).view(1, 2, 1, 1)
    magnitude = (field * scale).norm(dim=1)  # [B, H, W] pixels
    weights = region.to(magnitude).reshape(magnitude.shape) if region is not None else torch.ones_like(magnitude)
    mean = float((magnitude * weights).sum() / weights.sum().clamp_min(1.0))
    return {"max_over_iod": round(float(magnitude.max()) / iod_px, 4), "mean_over_iod": round(mean / iod_px, 4)}
