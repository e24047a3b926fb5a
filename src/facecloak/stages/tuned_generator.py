"""What pivot tuning produces for one photo, and the one definition of the tuned generator: ``base + fp16 delta``.

Lightning-free, so the artifact store (:mod:`facecloak.stages.artifacts`) can rebuild a tuned generator without the
training stack. :func:`render_per_image` renders a batch in which every image has its own synthesis weights in one
batched call, as pivot tuning (base + per-image offsets) and the search (one tuned generator per face) both need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from facecloak.models.stylegan2 import Generator, load_generator_state

MAPPING_PREFIX = "style."
"""State-dict prefix of the mapping network, which pivot tuning leaves alone."""


@dataclass
class TuningResult:
    """Everything stage 2 needs for one photo, keyed by its id, plus the reconstruction metrics of the run."""

    image_id: str
    pivot: Tensor
    """W+ code ``[n_latent, style_dim]``."""
    noise: list[Tensor]
    """Frozen noise maps ``[1, 1, r, r]``."""
    deltas: dict[str, Tensor]
    """fp16 offsets of the tuned synthesis weights; the tuned generator is ``base + delta.float()``."""
    metrics: dict[str, float] = field(default_factory=dict)


def tuned_parameter_names(generator: Generator) -> tuple[str, ...]:
    """State-dict names of the weights pivot tuning changes: every synthesis parameter."""
    return tuple(name for name, _ in generator.named_parameters() if not name.startswith(MAPPING_PREFIX))


def apply_deltas(base: Generator, deltas: Mapping[str, Tensor]) -> Generator:
    """The tuned generator, ``base + delta.float()``: the one definition stage 1 reports and stage 2 uses."""
    state = base.state_dict()
    unknown = set(deltas) - set(tuned_parameter_names(base))
    if unknown:
        raise ValueError(f"deltas name weights that pivot tuning does not tune: {sorted(unknown)[:5]}")
    for name, delta in deltas.items():
        state[name] = state[name] + delta.to(device=state[name].device, dtype=state[name].dtype)
    return load_generator_state(state, base.config)


def stack_weights(generators: Sequence[Generator]) -> dict[str, Tensor]:
    """The tuned weights of per-image generators stacked ``[N, *shape]``, for :func:`render_per_image`."""
    params = [dict(g.named_parameters()) for g in generators]
    return {name: torch.stack([p[name] for p in params]) for name in tuned_parameter_names(generators[0])}


def render_per_image(
    generator: Generator, weights: Mapping[str, Tensor], wplus: Tensor, noise: Sequence[Tensor]
) -> Tensor:
    """Images ``[N, 3, size, size]`` in [-1, 1], image i from W+ ``wplus[i]`` with synthesis weights ``weights[·][i]``.

    One ``vmap`` over ``functional_call`` of ``generator`` (its other weights and buffers are shared), so N generators
    run as one batch instead of N calls; every image still sees only its own weights, code and noise maps.
    """
    names = tuple(weights)

    def render_one(stacked: tuple[Tensor, ...], code: Tensor, maps: tuple[Tensor, ...]) -> Tensor:
        kwargs = {"input_is_latent": True, "noise": [m[None] for m in maps]}
        image, _ = functional_call(generator, dict(zip(names, stacked)), ([code[None]],), kwargs)
        return image[0]

    return vmap(render_one)(tuple(weights.values()), wplus, tuple(noise))
