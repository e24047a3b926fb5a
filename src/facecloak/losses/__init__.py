"""Losses shared by the optimisation stages; plain PyTorch (no Lightning, no W&B)."""

from facecloak.losses.perceptual import (
    PERCEPTUAL_CHOICES,
    LPIPSDistance,
    MSSSIMDistance,
    build_perceptual,
    resize_for_loss,
)

__all__ = ["PERCEPTUAL_CHOICES", "LPIPSDistance", "MSSSIMDistance", "build_perceptual", "resize_for_loss"]
