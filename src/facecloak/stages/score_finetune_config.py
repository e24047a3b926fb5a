"""MAP fine-tuning settings (the ``map`` config section's stage options); Lightning-free for the config layer.

``FACE_CROP_SCALE`` (from :mod:`facecloak.faces.regions`) is the default of ``map.crop_scale``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, get_args

from facecloak.diffusion import GradMode
from facecloak.errors import ConfigError
from facecloak.faces.regions import FACE_CROP_SCALE
from facecloak.losses.expression import DEFAULT_BOX_MARGIN
from facecloak.losses.identity import MODES
from facecloak.validate import from_plain_dict

__all__ = ["FACE_CROP_SCALE", "LossWeights", "ScoreFinetuneConfig"]


@dataclass(frozen=True)
class LossWeights:
    """Weight of each loss term; identity and expression are projected against each other, the rest added."""

    identity: float = 1.0
    expression: float = 1.0
    pixel: float = 1.0
    ssim: float = 0.5
    landmark: float = 1.0
    score: float = 1.0

    def __post_init__(self) -> None:
        negative = {name: value for name, value in asdict(self).items() if value < 0}
        if negative:
            raise ConfigError(f"map.weights must be non-negative, got {negative}")


@dataclass(frozen=True)
class ScoreFinetuneConfig:
    """Options of the MAP fine-tuning stage; defaults follow DiffusionCLIP's fine-tuning (t0 = 500, 40/6 steps)."""

    expression: str = "happy"
    identity_mode: str = "dodge"
    t0: int = 500
    inversion_steps: int = 40
    generation_steps: int = 6
    grad_mode: str = "full"
    lr: float = 8e-6
    weights: LossWeights = field(default_factory=LossWeights)
    project_gradients: bool = True
    gradient_ema: float = 0.0
    max_grad_norm: float | None = None
    box_margin: float = DEFAULT_BOX_MARGIN
    landmark_scale_invariant: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.weights, Mapping):
            object.__setattr__(self, "weights", LossWeights(**self.weights))
        if self.identity_mode not in MODES:
            raise ConfigError(f"map.identity_mode={self.identity_mode!r} must be one of {list(MODES)}")
        if self.grad_mode not in get_args(GradMode) or self.grad_mode == "none":
            raise ConfigError(f"map.grad_mode={self.grad_mode!r} must be one of full, checkpoint, detach")
        if self.t0 < 1:
            raise ConfigError(f"map.t0={self.t0} must be a positive timestep")
        if self.inversion_steps < 2 or self.generation_steps < 2:
            raise ConfigError(
                f"map.inversion_steps={self.inversion_steps} and map.generation_steps={self.generation_steps} "
                "must be at least 2"
            )
        if self.lr <= 0:
            raise ConfigError(f"map.lr={self.lr} must be positive")
        if not 0.0 <= self.gradient_ema < 1.0:
            raise ConfigError(f"map.gradient_ema={self.gradient_ema} must be in [0, 1) (0 turns the EMA off)")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"map.max_grad_norm={self.max_grad_norm} must be positive or null")
        if self.box_margin <= 0:
            raise ConfigError(f"map.box_margin={self.box_margin} must be positive")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for logging and checkpoints (no dataclass objects to unpickle)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ScoreFinetuneConfig:
        """Build from a plain dict (e.g. a YAML section); unknown keys are an error, not silently dropped."""
        return from_plain_dict(cls, values, "map")
