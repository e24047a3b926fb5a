"""Laplacian smoothness of facial landmarks: let an expression move the face, but not erode its features.

Each landmark gets neighbours on a triangle mesh, derived here by a Delaunay triangulation of the *original* face's
landmarks (``scipy.spatial.Delaunay``; no third-party topology table). Its Laplacian (differential) coordinate
``δ_i = p_i − mean(p_j for j in N(i))`` describes the local shape around it: a smile that lifts the mouth corners
together with their neighbours changes δ little, a feature squeezed or torn on its own changes it a lot. The loss is
``mean_i ‖δ_i(edited) − δ_i(original)‖²``.

δ is translation-invariant by construction (each row of the Laplacian sums to zero). With ``normalise_scale`` each
point set is first divided by its own RMS radius about the centroid, so a uniform zoom costs nothing either;
without it (the default, since edited and original faces are cropped with the same box) a zoom is penalised.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import Delaunay

from facecloak.errors import ConfigError

MIN_POINTS = 3
"""A triangulation needs at least three points that are not collinear."""

SCALE_EPS = 1e-12
"""Floor on the RMS radius when normalising scale, so a degenerate point set does not divide by zero."""


def delaunay_edges(points: np.ndarray) -> np.ndarray:
    """Unique undirected mesh edges ``[E, 2]`` (i < j) of the Delaunay triangulation of ``points`` ``[N, 2]``."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < MIN_POINTS:
        raise ConfigError(f"landmark mesh needs [N >= {MIN_POINTS}, 2] points, got shape {points.shape}")
    triangles = Delaunay(points).simplices
    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [0, 2]]])
    return np.unique(np.sort(edges, axis=1), axis=0)


def uniform_laplacian(num_points: int, edges: np.ndarray) -> torch.Tensor:
    """The uniform graph Laplacian ``L = I − D⁻¹A`` ``[N, N]`` (float32), so that ``δ = L p``."""
    adjacency = np.zeros((num_points, num_points), dtype=np.float64)
    adjacency[edges[:, 0], edges[:, 1]] = 1.0
    adjacency[edges[:, 1], edges[:, 0]] = 1.0
    degree = adjacency.sum(axis=1, keepdims=True)
    if (degree == 0).any():
        isolated = np.flatnonzero(degree[:, 0] == 0).tolist()
        raise ConfigError(f"landmarks {isolated} have no mesh neighbours; check for duplicate or invalid points")
    laplacian = np.eye(num_points) - adjacency / degree
    return torch.from_numpy(laplacian).float()


def mesh_laplacian(reference: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Laplacian of the Delaunay mesh of reference landmarks ``[N, 2]`` or one per face ``[B, N, 2]``."""
    points = reference.detach().cpu().numpy() if isinstance(reference, torch.Tensor) else np.asarray(reference)
    if points.ndim == 2:
        return uniform_laplacian(points.shape[0], delaunay_edges(points))
    return torch.stack([uniform_laplacian(p.shape[0], delaunay_edges(p)) for p in points])


def normalise_scale(points: torch.Tensor) -> torch.Tensor:
    """Divide each point set ``[..., N, 2]`` by its RMS distance from its centroid (differentiable)."""
    centred = points - points.mean(dim=-2, keepdim=True)
    radius = centred.pow(2).sum(dim=-1).mean(dim=-1).sqrt().clamp_min(SCALE_EPS)
    return points / radius[..., None, None]


def laplacian_coordinates(points: torch.Tensor, laplacian: torch.Tensor, scale_invariant: bool = False) -> torch.Tensor:
    """δ = L p for points ``[B, N, 2]`` and a shared ``[N, N]`` or per-face ``[B, N, N]`` Laplacian."""
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"landmarks must be [B, N, 2], got {tuple(points.shape)}")
    if scale_invariant:
        points = normalise_scale(points)
    return torch.matmul(laplacian.to(points), points)


def laplacian_smoothness_loss(
    points: torch.Tensor,
    reference_delta: torch.Tensor,
    laplacian: torch.Tensor,
    scale_invariant: bool = False,
) -> torch.Tensor:
    """Per-face ``mean_i ‖δ_i(points) − δ_i(reference)‖²`` ``[B]``; ``reference_delta`` from the original face."""
    delta = laplacian_coordinates(points, laplacian, scale_invariant)
    return (delta - reference_delta.to(delta)).pow(2).sum(dim=-1).mean(dim=-1)


class LandmarkSmoothness:
    """The loss for one set of original faces: mesh and reference δ computed once, compared at every step."""

    def __init__(self, reference_points: torch.Tensor, scale_invariant: bool = False) -> None:
        if reference_points.ndim == 2:
            reference_points = reference_points[None]
        self.scale_invariant = scale_invariant
        self.laplacian = mesh_laplacian(reference_points)
        self.reference_delta = laplacian_coordinates(reference_points.detach().float(), self.laplacian, scale_invariant)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """Per-face loss of edited landmarks ``[B, N, 2]`` against the originals."""
        return laplacian_smoothness_loss(points, self.reference_delta, self.laplacian, self.scale_invariant)
