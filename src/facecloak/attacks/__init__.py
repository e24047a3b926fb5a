"""Attacks that protect faces by perturbing pixels directly: the papers' L∞ noise baselines."""

from facecloak.attacks.pixel import (
    MIFGSM,
    PGD,
    PIXEL_ATTACKS,
    TIDIM,
    PixelAttack,
    PixelAttackConfig,
    build_pixel_attack,
    diverse_input,
    gaussian_kernel,
    protect_photo_pixels,
    smooth_gradient,
)

__all__ = [
    "MIFGSM",
    "PGD",
    "PIXEL_ATTACKS",
    "TIDIM",
    "PixelAttack",
    "PixelAttackConfig",
    "build_pixel_attack",
    "diverse_input",
    "gaussian_kernel",
    "protect_photo_pixels",
    "smooth_gradient",
]
