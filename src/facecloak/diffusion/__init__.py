"""Diffusion machinery kept apart from the score network: the noise schedule and the DDIM samplers."""

from __future__ import annotations

from facecloak.diffusion.ddim import (
    DDIMStep,
    EpsModel,
    GradMode,
    ddim_generate,
    ddim_invert,
    ddim_step,
    ddim_timesteps,
    iter_ddim_generation,
)
from facecloak.diffusion.schedule import NoiseSchedule, ScheduleConfig

__all__ = [
    "DDIMStep",
    "EpsModel",
    "GradMode",
    "NoiseSchedule",
    "ScheduleConfig",
    "ddim_generate",
    "ddim_invert",
    "ddim_step",
    "ddim_timesteps",
    "iter_ddim_generation",
]
