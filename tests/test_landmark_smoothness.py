"""Laplacian smoothness of landmarks on crafted point sets: invariances, zero at rest, growth with distortion."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from facecloak.errors import ConfigError
from facecloak.losses.landmark_smoothness import (
    LandmarkSmoothness,
    delaunay_edges,
    laplacian_coordinates,
    mesh_laplacian,
)


def face_like_points(seed: int = 0) -> torch.Tensor:
    """A jittered grid standing in for a landmark set (general position, so Delaunay is well defined)."""
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0.2, 0.8, 7), torch.linspace(0.2, 0.8, 6), indexing="ij")
    grid = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)
    return grid + 0.01 * torch.randn(grid.shape, generator=generator)


def test_mesh_is_a_connected_triangulation_with_zero_row_sums() -> None:
    points = face_like_points()
    edges = delaunay_edges(points.numpy())
    n = points.shape[0]
    # A planar triangulation of n points has at most 3n - 6 edges and at least n - 1 (connected).
    assert n - 1 <= len(edges) <= 3 * n - 6
    laplacian = mesh_laplacian(points)
    torch.testing.assert_close(laplacian.sum(dim=1), torch.zeros(n))
    assert torch.all(torch.diagonal(laplacian) == 1.0)


def test_zero_for_identical_sets_and_translation_invariant() -> None:
    points = face_like_points()[None]
    loss = LandmarkSmoothness(points)
    assert loss(points).item() == 0.0
    assert loss(points + torch.tensor([0.3, -0.7])).item() == pytest.approx(0.0, abs=1e-12)


def test_scale_is_penalised_unless_normalised() -> None:
    points = face_like_points()[None]
    centre = points.mean(dim=1, keepdim=True)
    zoomed = centre + 1.3 * (points - centre)
    assert LandmarkSmoothness(points)(zoomed).item() > 1e-5
    assert LandmarkSmoothness(points, scale_invariant=True)(zoomed + 0.2).item() == pytest.approx(0.0, abs=1e-10)


def test_grows_with_a_local_distortion_of_one_feature() -> None:
    points = face_like_points()[None]
    loss = LandmarkSmoothness(points)
    losses = []
    for amount in (0.005, 0.01, 0.02, 0.04):
        distorted = points.clone()
        distorted[0, 20] += torch.tensor([amount, -amount])  # one landmark pulled away from its neighbours
        losses.append(loss(distorted).item())
    assert all(b > a for a, b in itertools.pairwise(losses))
    assert losses[-1] / losses[0] == pytest.approx(64.0, rel=1e-3)  # quadratic in the displacement


def test_a_smooth_global_motion_costs_less_than_a_local_one_of_equal_size() -> None:
    points = face_like_points()[None]
    loss = LandmarkSmoothness(points)
    shift = torch.zeros_like(points)
    shift[0, :, 1] = 0.02 * points[0, :, 0]  # a gentle shear that moves every point a little
    local = torch.zeros_like(points)
    local[0, 20, 1] = shift.norm()  # the same total displacement on a single point
    # A linear map A changes δ only by A·δ, which is small; a lone displaced point changes δ by its full offset.
    assert loss(points + shift).item() < 1e-2 * loss(points + local).item()


def test_per_face_meshes_and_gradients() -> None:
    batch = torch.stack([face_like_points(0), face_like_points(1)])
    loss = LandmarkSmoothness(batch)
    assert loss.laplacian.shape == (2, 42, 42)
    edited = batch.clone().requires_grad_(True)
    value = loss(edited + 0.01 * torch.randn_like(batch)).sum()
    value.backward()
    assert edited.grad is not None and edited.grad.abs().sum() > 0
    delta = laplacian_coordinates(batch, loss.laplacian)
    assert delta.shape == batch.shape


def test_degenerate_input_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        delaunay_edges(np.zeros((2, 2)))
