"""Differentiable twins of what social networks do to uploaded photos: JPEG, resize, blur, drawn at random.

``diff_jpeg``, ``diff_resize`` and ``diff_blur`` work on float tensors ``[B,3,H,W]`` in ``[0, 1]`` with gradients
(kornia's differentiable JPEG of Reich et al. 2024); ``RandomDegradation`` samples one of them per call for
expectation over transformation (EOT) in the latent search and the pixel baselines. The real codecs evaluation
measures with are in :mod:`facecloak.evaluation.robustness`; both use :func:`blur_kernel_size`, so they agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import kornia
import torch
import torch.nn.functional as F

from facecloak.errors import ConfigError

BLUR_TRUNCATE_SIGMAS = 3.0
"""Gaussian kernel radius = ceil(3 sigma): keeps >99.7% of the Gaussian mass."""


def blur_kernel_size(sigma: float) -> int:
    """Odd Gaussian kernel size for ``sigma``, shared by the real and differentiable blur so they agree."""
    return 2 * math.ceil(BLUR_TRUNCATE_SIGMAS * sigma) + 1


def diff_jpeg(image: torch.Tensor, quality: float | torch.Tensor) -> torch.Tensor:
    """Differentiable JPEG round trip (kornia), so attacks can optimise through the compression they will meet."""
    q = torch.as_tensor(quality, dtype=image.dtype, device=image.device).reshape(-1)
    return kornia.enhance.jpeg_codec_differentiable(image, q)


def diff_resize(image: torch.Tensor, factor: float, down: str = "area", up: str = "bicubic") -> torch.Tensor:
    """Differentiable shrink-and-restore at the original size (area down, bicubic up, clamped to [0, 1])."""
    if not 0 < factor <= 1:
        raise ConfigError(f"resize factor must be in (0, 1], got {factor}")
    height, width = image.shape[-2:]
    small = F.interpolate(image, size=(max(1, round(height * factor)), max(1, round(width * factor))), mode=down)
    return F.interpolate(small, size=(height, width), mode=up, align_corners=False).clamp(0, 1)


def diff_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Differentiable Gaussian blur with the real ``blur``'s kernel size and reflected borders.

    On an image smaller than the kernel the kernel is cut to fit inside it (reflect padding needs that).
    """
    size = min(blur_kernel_size(sigma), 2 * ((min(image.shape[-2:]) - 1) // 2) + 1)
    return kornia.filters.gaussian_blur2d(image, (size, size), (sigma, sigma), border_type="reflect")


_DIFFERENTIABLE: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "identity": lambda image, _value: image,
    "jpeg": diff_jpeg,
    "resize": diff_resize,
    "blur": diff_blur,
}


@dataclass
class DegradationConfig:
    """Which degradations ``RandomDegradation`` draws, how often, and over which parameter ranges."""

    probabilities: dict[str, float] = field(
        default_factory=lambda: {"identity": 0.25, "jpeg": 0.25, "resize": 0.25, "blur": 0.25}
    )
    jpeg_quality: tuple[float, float] = (50.0, 95.0)
    resize_factor: tuple[float, float] = (0.5, 0.9)
    blur_sigma: tuple[float, float] = (0.5, 1.5)

    def __post_init__(self) -> None:
        unknown = set(self.probabilities) - set(_DIFFERENTIABLE)
        if unknown:
            raise ConfigError(f"degradation.probabilities: unknown {sorted(unknown)}; known {sorted(_DIFFERENTIABLE)}")
        if any(p < 0 for p in self.probabilities.values()) or sum(self.probabilities.values()) <= 0:
            raise ConfigError(
                f"degradation.probabilities must be non-negative with a positive sum: {self.probabilities}"
            )
        for key, (low, high), bounds in (
            ("jpeg_quality", self.jpeg_quality, (1.0, 100.0)),
            ("resize_factor", self.resize_factor, (1e-3, 1.0)),
            ("blur_sigma", self.blur_sigma, (1e-3, math.inf)),
        ):
            if not bounds[0] <= low <= high <= bounds[1]:
                raise ConfigError(
                    f"degradation.{key} must satisfy {bounds[0]} <= low <= high <= {bounds[1]}: {low, high}"
                )


class RandomDegradation(torch.nn.Module):
    """Apply one randomly drawn differentiable degradation per call (the same one to the whole batch)."""

    def __init__(self, config: DegradationConfig | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config or DegradationConfig()
        self.generator = generator
        names = list(self.config.probabilities)
        self._names: Sequence[str] = names
        self._weights = torch.tensor([self.config.probabilities[n] for n in names], dtype=torch.float64)
        self.last: tuple[str, float] | None = None  # what the previous call applied, for logging

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.generator, dtype=torch.float64))

    def sample(self) -> tuple[str, float]:
        """Draw a degradation name and its parameter."""
        name = self._names[int(torch.multinomial(self._weights, 1, generator=self.generator))]
        ranges = {
            "identity": (0.0, 0.0),
            "jpeg": self.config.jpeg_quality,
            "resize": self.config.resize_factor,
            "blur": self.config.blur_sigma,
        }
        return name, self._uniform(*ranges[name])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Degrade a batch ``[B,3,H,W]`` in [0, 1] with one freshly drawn transform."""
        name, value = self.sample()
        self.last = (name, value)
        return _DIFFERENTIABLE[name](image, value)
