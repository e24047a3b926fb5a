"""The forward (noising) process of a DDPM, kept apart from the score network as in diffusers.

Defaults are the ``diffusion:`` section of SDEdit / DiffusionCLIP / DiffAM ``configs/celeba.yml`` (linear betas
1e-4…0.02 over 1000 steps, Ho et al. 2020) with the fixed-small posterior variance (``var_type: fixedsmall``).
Timesteps are 0-based; ``t = -1`` denotes clean data (ᾱ = 1), the convention of the reference DDIM step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from facecloak.errors import ConfigError

Timesteps = torch.Tensor | int | float
"""One timestep for the whole batch, or one per image (0-based; -1 means clean data)."""

SCHEDULES = ("linear",)
"""Beta schedules we implement (the CelebA-HQ checkpoint was trained with the linear one)."""


@dataclass(frozen=True)
class ScheduleConfig:
    """Noise schedule options, named as in the reference yml ``diffusion:`` section so it can be read directly."""

    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_diffusion_timesteps: int = 1000

    def __post_init__(self) -> None:
        if self.beta_schedule not in SCHEDULES:
            raise ConfigError(f"diffusion.beta_schedule={self.beta_schedule!r} is not one of {list(SCHEDULES)}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ConfigError(
                f"diffusion.beta_start={self.beta_start} and beta_end={self.beta_end} must satisfy 0 < start <= end < 1"
            )
        if self.num_diffusion_timesteps < 2:
            raise ConfigError(f"diffusion.num_diffusion_timesteps={self.num_diffusion_timesteps} must be at least 2")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, so the schedule can be logged and saved with a run."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ScheduleConfig:
        """Build from a dict such as the yml ``diffusion:`` section; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown diffusion schedule keys {unknown}; known keys are {sorted(known)}")
        return cls(**dict(values))


class NoiseSchedule:
    """Per-timestep constants of the forward process and the closed-form operations built on them.

    Tables are computed once in float64 on the CPU (``betas`` as the reference's ``np.linspace``) and handed out
    per device/dtype on demand, so the same object serves CPU tests and GPU training.
    """

    def __init__(self, config: ScheduleConfig | None = None) -> None:
        self.config = config or ScheduleConfig()
        c = self.config
        self.num_timesteps = c.num_diffusion_timesteps
        self.betas = torch.linspace(c.beta_start, c.beta_end, c.num_diffusion_timesteps, dtype=torch.float64)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        # Fixed-small variance: the true posterior q(x_{t-1} | x_t, x_0) variance β̃_t (zero at t = 0).
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # ᾱ with an entry for t = -1 in front, so that index t + 1 works for every t in [-1, T - 1].
        self._alpha_bar_ext = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        self._cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @classmethod
    def from_config(cls, config: ScheduleConfig | Mapping[str, Any] | None = None) -> NoiseSchedule:
        """Build from a :class:`ScheduleConfig` or a plain dict (e.g. the yml ``diffusion:`` section)."""
        if config is None or isinstance(config, ScheduleConfig):
            return cls(config)
        return cls(ScheduleConfig.from_dict(config))

    def alpha_bar(self, t: Timesteps, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t for a batch of timesteps, shaped to broadcast against ``like`` ([B, 1, 1, …]); ᾱ_{-1} = 1.

        Timesteps given as numbers or host tensors (how the stages draw them) are checked on the host; timesteps
        already on a GPU are checked there without waiting for it (a host read per step would stall it).
        """
        t = torch.as_tensor(t)
        steps = t.round().long() if t.is_floating_point() else t.long()
        outside = (steps < -1) | (steps >= self.num_timesteps)
        message = f"timesteps must lie in [-1, {self.num_timesteps - 1}]"
        if steps.device.type == "cpu":
            if bool(outside.any()):
                raise ValueError(f"{message}, got {steps.tolist()}")
        else:
            torch._assert_async(~outside.any(), message)
        steps = steps.to(like.device)
        table = self._table(like.device, like.dtype)
        values = table[steps.reshape(-1) + 1]
        if values.shape[0] == 1 and like.shape[0] != 1:
            values = values.expand(like.shape[0])
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: Timesteps) -> torch.Tensor:
        """Sample ``x_t ~ q(x_t | x_0)`` as ``sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·noise`` (training targets, SDEdit starts)."""
        a = self.alpha_bar(t, x0)
        return a.sqrt() * x0 + (1.0 - a).sqrt() * noise

    def predict_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: Timesteps) -> torch.Tensor:
        """Invert :meth:`add_noise` given the predicted noise: the denoised estimate used by DDIM and the losses."""
        a = self.alpha_bar(t, x_t)
        return (x_t - (1.0 - a).sqrt() * eps) / a.sqrt()

    def _table(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """ᾱ (with the t = -1 entry) on ``device``, cached to avoid a copy per step.

        Half-precision inputs get a float32 table: ᾱ near 1 (e.g. 0.9999) is not representable in bf16/fp16.
        """
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        key = (device, dtype)
        if key not in self._cache:
            self._cache[key] = self._alpha_bar_ext.to(device=device, dtype=dtype)
        return self._cache[key]
