"""Pivot-tuning settings (the ``pivot`` config section); Lightning-free, so the config layer can import it."""

from __future__ import annotations

from dataclasses import dataclass

from facecloak.errors import ConfigError
from facecloak.losses.perceptual import PERCEPTUAL_CHOICES


@dataclass(frozen=True)
class PivotTuningConfig:
    """Pivot-tuning settings; defaults are CLIP2Protect's stage-1 recipe."""

    lr: float = 5e-4
    """Adam learning rate (CLIP2Protect ``--gt_lr``)."""
    steps: int = 150
    """Optimisation steps per image (CLIP2Protect ``--num_steps``); the Trainer's ``max_steps``."""
    mse_weight: float = 0.1
    """Weight of the pixel MSE next to the perceptual distance (CLIP2Protect ``pivot_tuning.py``)."""
    loss_size: int = 256
    """Resolution at which both images are compared (CLIP2Protect resizes to 256)."""
    perceptual: str = "auto"
    early_stop_perceptual: float | None = None
    """Stop an image once its perceptual loss is at most this (PTI uses 0.06 with LPIPS); None: run every step."""
    batch_size: int = 1
    """Images tuned together in one run of :func:`tune_images` (each still gets its own generator); a ``protect``
    job tunes each batch of ``protect.batch_faces`` faces in one run instead."""
    noise_seed: int = 0
    """Seed of the frozen noise maps, combined with each image id (used when no noise maps are given)."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"pivot.lr must be positive, got {self.lr}")
        for name in ("steps", "loss_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pivot.{name} must be >= 1, got {getattr(self, name)}")
        if self.mse_weight < 0:
            raise ConfigError(f"pivot.mse_weight must be >= 0, got {self.mse_weight}")
        if self.perceptual not in PERCEPTUAL_CHOICES:
            raise ConfigError(f"pivot.perceptual must be in {PERCEPTUAL_CHOICES}, got {self.perceptual!r}")
        if self.early_stop_perceptual is not None and self.early_stop_perceptual <= 0:
            raise ConfigError(f"pivot.early_stop_perceptual must be positive or null, got {self.early_stop_perceptual}")
