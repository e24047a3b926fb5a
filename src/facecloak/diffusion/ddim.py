"""Deterministic DDIM inversion (image → latent x_t0) and generation (x_t0 → image), DiffusionCLIP style.

DiffusionCLIP and DiffAM invert a real image with DDIM (η = 0) up to an intermediate timestep ``t0`` and then
regenerate it with a fine-tuned score network. Both directions walk the same sequence
``int(linspace(0, 1, n) * t0)`` (forward for inversion, backward for generation), so with enough steps the
round trip reproduces the image. Any ``eps_model(x, t)`` callable works; ``t`` is passed as a float tensor of shape
``[B]``, as the reference does.

Gradients (for fine-tuning the score network through the generation) are controlled by ``grad_mode``:

* ``"none"``: no autograd graph (inversion, plain sampling);
* ``"full"``: backpropagate through every step (memory grows with the number of steps);
* ``"checkpoint"``: the same gradients as ``"full"``, recomputing each step's activations during backward;
* ``"detach"``: each step starts from a detached ``x``, so gradients reach the network only through the current
  step: DiffusionCLIP's GPU-efficient fine-tuning, paired with a loss on each step's ``x0_pred``
  (see :func:`iter_ddim_generation`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal, get_args

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from facecloak.diffusion.schedule import NoiseSchedule

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A noise predictor ``eps = eps_model(x_t, t)`` with ``t`` of shape ``[B]``."""

GradMode = Literal["none", "full", "checkpoint", "detach"]
"""How autograd follows the DDIM chain (see the module docstring)."""

CLEAN = -1
"""Timestep index of clean data (ᾱ = 1): the target of the last generation step, as in the reference."""


def ddim_timesteps(schedule: NoiseSchedule, t0: int, num_steps: int) -> list[int]:
    """The reference sequence ``[int(s) for s in np.linspace(0, 1, num_steps) * t0]``, from 0 up to ``t0``.

    Computed with NumPy exactly as DiffusionCLIP/DiffAM do, so the integer truncation matches theirs.
    """
    if not 0 < t0 < schedule.num_timesteps:
        raise ValueError(f"t0={t0} must lie in [1, {schedule.num_timesteps - 1}] for this noise schedule")
    if num_steps < 2:
        raise ValueError(f"num_steps={num_steps} must be at least 2 (the sequence holds 0 and t0)")
    return [int(s) for s in np.linspace(0, 1, num_steps) * t0]


@dataclass(frozen=True)
class DDIMStep:
    """One generation step: ``x`` is the sample at ``t_next``; ``x0_pred`` the clean estimate made at ``t``."""

    t: int
    t_next: int
    x: torch.Tensor
    x0_pred: torch.Tensor


def ddim_step(
    eps_model: EpsModel, schedule: NoiseSchedule, x: torch.Tensor, t: int, t_next: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move ``x`` from timestep ``t`` to ``t_next`` along the η = 0 DDIM path; also return the x0 estimate.

    The same update serves both directions: inversion uses ``t_next > t``, generation ``t_next < t``.
    """
    timesteps = torch.full((x.shape[0],), float(t), device=x.device, dtype=torch.float32)
    eps = eps_model(x, timesteps)
    x0_pred = schedule.predict_x0(x, eps, t)
    a_next = schedule.alpha_bar(t_next, x)
    return a_next.sqrt() * x0_pred + (1.0 - a_next).sqrt() * eps, x0_pred


def ddim_invert(
    eps_model: EpsModel,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    *,
    t0: int,
    num_steps: int,
    grad_mode: GradMode = "none",
) -> torch.Tensor:
    """Encode clean images ``x0`` into the DDIM latent ``x_t0``, the starting point of editing/fine-tuning.

    Follows the reference: ``x0`` is taken as the sample at timestep 0 and moved along consecutive pairs of
    :func:`ddim_timesteps` (``num_steps - 1`` network calls).
    """
    seq = ddim_timesteps(schedule, t0, num_steps)
    x = x0
    for t, t_next in pairwise(seq):
        x, _ = _run_step(eps_model, schedule, x, t, t_next, grad_mode)
    return x


def iter_ddim_generation(
    eps_model: EpsModel,
    schedule: NoiseSchedule,
    x_t0: torch.Tensor,
    *,
    t0: int,
    num_steps: int,
    grad_mode: GradMode = "full",
) -> Iterator[DDIMStep]:
    """Denoise ``x_t0`` step by step, yielding every intermediate sample and x0 estimate.

    Lazily evaluated, so a trainer can compute a loss on each step's ``x0_pred`` and update the network before
    the next step runs (DiffusionCLIP's per-step fine-tuning, with ``grad_mode="detach"``). The sequence is
    :func:`ddim_timesteps` walked backwards, ending at the clean-data index ``CLEAN`` (``num_steps`` calls).
    """
    seq = ddim_timesteps(schedule, t0, num_steps)
    targets = [CLEAN, *seq[:-1]]
    x = x_t0
    for t, t_next in zip(reversed(seq), reversed(targets)):
        x, x0_pred = _run_step(eps_model, schedule, x, t, t_next, grad_mode)
        yield DDIMStep(t=t, t_next=t_next, x=x, x0_pred=x0_pred)


def ddim_generate(
    eps_model: EpsModel,
    schedule: NoiseSchedule,
    x_t0: torch.Tensor,
    *,
    t0: int,
    num_steps: int,
    grad_mode: GradMode = "full",
) -> torch.Tensor:
    """Decode the DDIM latent ``x_t0`` into images; differentiable w.r.t. the network unless ``grad_mode="none"``."""
    x = x_t0
    for step in iter_ddim_generation(eps_model, schedule, x_t0, t0=t0, num_steps=num_steps, grad_mode=grad_mode):
        x = step.x
    return x


def _run_step(
    eps_model: EpsModel, schedule: NoiseSchedule, x: torch.Tensor, t: int, t_next: int, grad_mode: GradMode
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step under the requested gradient policy.

    Grad mode is switched per step, never across a ``yield``, so the caller's autograd state is never altered.
    """
    if grad_mode not in get_args(GradMode):
        raise ValueError(f"grad_mode={grad_mode!r} is not one of {list(get_args(GradMode))}")
    if grad_mode == "none":
        with torch.no_grad():
            return ddim_step(eps_model, schedule, x, t, t_next)
    if grad_mode == "detach":
        x = x.detach()
    if grad_mode == "checkpoint" and torch.is_grad_enabled():
        return checkpoint(ddim_step, eps_model, schedule, x, t, t_next, use_reentrant=False)
    return ddim_step(eps_model, schedule, x, t, t_next)
