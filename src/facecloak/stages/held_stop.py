"""Per-image early stop decided on the device, shared by the stages that stop images one by one.

A stage that optimises several images at once (pivot tuning, the latent search) stops each image on its own: the
step it first passes goes into ``stopped_at`` and its trainable values are held, then put back after every optimizer
step (Adam's momentum would keep moving them). Every piece here is a masked copy on the device, so a GPU never waits
for the decision; only :func:`end_when_all_stopped` reads a value back, at the Trainer's logging cadence.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    """A per-image ``[B]`` mask shaped to broadcast over ``like`` ``[B, ...]``."""
    return mask.view(-1, *[1] * (like.ndim - 1))


@torch.no_grad()
def copy_rows(target: Tensor, source: Tensor, rows: Tensor) -> None:
    """Overwrite the images ``rows`` (a ``[B]`` mask) of ``target`` with those of ``source``, in place."""
    target.copy_(torch.where(_rows(rows, target), source.detach(), target))


@torch.no_grad()
def mark_stopped(stopped_at: Tensor, newly: Tensor, step: int) -> None:
    """Record ``step`` as the stop step of the images ``newly`` stopping (a ``[B]`` mask)."""
    stopped_at.copy_(torch.where(newly.to(stopped_at.device), step, stopped_at))


def end_when_all_stopped(stopped_at: Tensor, global_step: int, trainer: Any) -> int | None:
    """``-1`` (end the single epoch) once every image has stopped, looked at every ``log_every_n_steps`` steps.

    The look is a host read (a GPU sync), hence the cadence; steps run after the last image stopped change nothing,
    since stopped images are put back after every step.
    """
    if global_step % int(getattr(trainer, "log_every_n_steps", 1)):
        return None
    return -1 if bool((stopped_at >= 0).all()) else None
