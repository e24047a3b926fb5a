"""What pivot tuning produces for one photo, and the one definition of the tuned generator: ``base + fp16 delta``.

Lightning-free, so the artifact store (:mod:`facecloak.stages.artifacts`) can rebuild a tuned generator without the
training stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

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
