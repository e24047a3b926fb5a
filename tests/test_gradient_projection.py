"""PCGrad-style combination of objective gradients, on crafted vectors and on a real parameter list."""

from __future__ import annotations

import pytest
import torch

from facecloak.errors import ConfigError
from facecloak.losses.gradient_projection import (
    GradientProjector,
    flatten_grads,
    gradient_cosine,
    project_conflicting,
    unflatten_like,
)


def test_conflicting_gradients_are_projected_onto_each_others_normal_plane() -> None:
    g1 = torch.tensor([1.0, 0.0, 0.0])
    g2 = torch.tensor([-2.0, 1.0, 0.0])  # g1 · g2 = -2 < 0
    combined = project_conflicting([g1, g2])
    # g1' = g1 - (-2/5) g2 = (0.2, 0.4, 0); g2' = g2 - (-2/1) g1 = (0, 1, 0).
    torch.testing.assert_close(combined, torch.tensor([0.2, 1.4, 0.0]))
    assert torch.dot(combined, g1) >= 0
    assert torch.dot(combined, g2) >= 0
    assert torch.dot(g1 + g2, g1) < 0  # the plain sum would have worked against g1


def test_random_conflicting_pairs_never_work_against_either_objective() -> None:
    generator = torch.Generator().manual_seed(0)
    conflicts = 0
    for _ in range(200):
        g1, g2 = torch.randn(2, 50, generator=generator).unbind(0)
        g2 = g2 * torch.rand(1, generator=generator) * 10  # unequal magnitudes
        conflicts += int(torch.dot(g1, g2) < 0)
        combined = project_conflicting([g1, g2])
        assert torch.dot(combined, g1) >= -1e-5
        assert torch.dot(combined, g2) >= -1e-5
    assert conflicts > 50  # the test really exercised the projection


@pytest.mark.parametrize(
    ("g1", "g2"),
    [
        ([1.0, 2.0, 0.0], [2.0, 1.0, 1.0]),  # aligned (positive inner product)
        ([1.0, 0.0, 0.0], [0.0, 3.0, 0.0]),  # orthogonal
        ([1.0, 1.0, 0.0], [0.0, 0.0, 0.0]),  # one objective has no gradient
    ],
)
def test_agreeing_or_orthogonal_gradients_are_summed_unchanged(g1: list[float], g2: list[float]) -> None:
    a, b = torch.tensor(g1), torch.tensor(g2)
    torch.testing.assert_close(project_conflicting([a, b]), a + b)
    torch.testing.assert_close(GradientProjector(2).combine([a, b]), a + b)


def test_projection_can_be_switched_off() -> None:
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    torch.testing.assert_close(GradientProjector(2, project=False).combine([g1, g2]), g1 + g2)


def test_ema_starts_at_the_first_gradient_then_averages() -> None:
    projector = GradientProjector(2, ema_decay=0.9)
    a1, b1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    torch.testing.assert_close(projector.combine([a1, b1]), a1 + b1)  # no start-up bias
    a2, b2 = torch.tensor([3.0, 0.0]), torch.tensor([0.0, -2.0])
    combined = projector.combine([a2, b2])
    ema_a, ema_b = 0.9 * a1 + 0.1 * a2, 0.9 * b1 + 0.1 * b2
    torch.testing.assert_close(projector.averages[0], ema_a)
    torch.testing.assert_close(projector.averages[1], ema_b)
    torch.testing.assert_close(combined, ema_a + ema_b)  # orthogonal averages: plain sum


def test_ema_smooths_the_conflict_test() -> None:
    # A one-step spike against the history does not flip the direction: the averages still agree.
    projector = GradientProjector(2, ema_decay=0.9)
    for _ in range(5):
        projector.combine([torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.1])])
    spike = torch.tensor([-1.0, 0.0])
    combined = projector.combine([torch.tensor([1.0, 0.0]), spike])
    assert torch.dot(projector.averages[0], projector.averages[1]) > 0
    torch.testing.assert_close(combined, projector.averages[0] + projector.averages[1])
    raw = GradientProjector(2).combine([torch.tensor([1.0, 0.0]), spike])
    torch.testing.assert_close(raw, torch.zeros(2))  # without EMA, exactly opposite gradients cancel to zero


def test_ema_state_round_trips_and_rejects_other_settings() -> None:
    projector = GradientProjector(2, ema_decay=0.5)
    projector.combine([torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])])
    restored = GradientProjector(2, ema_decay=0.5)
    restored.load_state_dict(projector.state_dict())
    nxt = [torch.tensor([0.5, -1.0]), torch.tensor([-2.0, 1.0])]
    torch.testing.assert_close(restored.combine(nxt), projector.combine(nxt))
    with pytest.raises(ConfigError, match="resume with the original settings"):
        GradientProjector(2, ema_decay=0.9).load_state_dict(projector.state_dict())


def test_flatten_and_unflatten_over_a_parameter_list() -> None:
    layer = torch.nn.Linear(3, 2)
    extra = torch.nn.Parameter(torch.zeros(4))
    params = [*layer.parameters(), extra]
    loss = layer(torch.ones(1, 3)).sum()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    assert grads[-1] is None
    flat = flatten_grads(list(grads), params)
    assert flat.shape == (3 * 2 + 2 + 4,)
    back = unflatten_like(flat, params)
    torch.testing.assert_close(back[0], grads[0])
    torch.testing.assert_close(back[-1], torch.zeros(4))
    assert gradient_cosine(flat, flat).item() == pytest.approx(1.0)


def test_invalid_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        GradientProjector(2, ema_decay=1.0)
    with pytest.raises(ConfigError):
        GradientProjector(0)
