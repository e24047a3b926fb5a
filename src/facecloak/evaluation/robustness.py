"""What social networks do to uploaded photos, for evaluation (real codecs) and for attacks (differentiable twins).

Evaluation side: ``apply_transform(name, rgb_uint8)`` runs a named degradation on an ``H×W×3`` ``uint8`` photo with
the real tools: PIL's libjpeg encoder (4:2:0 chroma subsampling, as photo sites re-encode), OpenCV area
downscaling and bicubic upscaling back to the original size, OpenCV Gaussian blur. Names are a family and a
parameter: ``jpeg75`` (quality), ``downscale0.5`` (factor), ``blur1.0`` (sigma in pixels), ``identity``.

Attack side: ``diff_jpeg``, ``diff_resize`` and ``diff_blur`` do the same on float tensors ``[B,3,H,W]`` in
``[0, 1]`` with gradients (kornia's differentiable JPEG of Reich et al. 2024), and ``RandomDegradation`` samples
one of them per call for expectation over transformation (EOT).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import kornia
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from facecloak.errors import ConfigError

JPEG_CHROMA_SUBSAMPLING = "4:2:0"  # what Facebook/Instagram/Twitter re-encodes use; also kornia's codec
BLUR_TRUNCATE_SIGMAS = 3.0  # kernel radius = ceil(3 sigma): keeps >99.7% of the Gaussian mass
DEFAULT_TRANSFORMS = ("jpeg95", "jpeg75", "jpeg50", "downscale0.5", "blur1.0")

_CV2_INTERPOLATION = {"area": cv2.INTER_AREA, "bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR}


def blur_kernel_size(sigma: float) -> int:
    """Odd Gaussian kernel size for ``sigma``, shared by the real and differentiable blur so they agree."""
    return 2 * math.ceil(BLUR_TRUNCATE_SIGMAS * sigma) + 1


# ---------------------------------------------------------------- real degradations on uint8 photos


def _check_rgb_uint8(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ConfigError(f"expected an H×W×3 uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    return rgb


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode with the real libjpeg (via PIL): the compression every upload goes through."""
    if not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality must be in 1..100, got {quality}")
    buffer = io.BytesIO()
    Image.fromarray(_check_rgb_uint8(rgb)).save(
        buffer, format="JPEG", quality=int(quality), subsampling=JPEG_CHROMA_SUBSAMPLING
    )
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB")).copy()


def downscale(rgb: np.ndarray, factor: float, down: str = "area", up: str = "bicubic") -> np.ndarray:
    """Shrink by ``factor`` and scale back up: the resolution loss of thumbnails and feeds, at the original size."""
    if not 0 < factor <= 1:
        raise ConfigError(f"downscale factor must be in (0, 1], got {factor}")
    height, width = _check_rgb_uint8(rgb).shape[:2]
    small_size = (max(1, round(width * factor)), max(1, round(height * factor)))
    small = cv2.resize(rgb, small_size, interpolation=_CV2_INTERPOLATION[down])
    return cv2.resize(small, (width, height), interpolation=_CV2_INTERPOLATION[up])


def blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with reflected borders: camera shake, beauty filters, soft re-sampling."""
    if sigma <= 0:
        raise ConfigError(f"blur sigma must be positive, got {sigma}")
    size = blur_kernel_size(sigma)
    return cv2.GaussianBlur(_check_rgb_uint8(rgb), (size, size), sigmaX=sigma, sigmaY=sigma)


@dataclass(frozen=True)
class TransformFamily:
    """A named family of degradations with one numeric parameter, e.g. ``jpeg`` + ``75``."""

    name: str
    apply: TransformFn
    parameter: str


TRANSFORMS: dict[str, TransformFamily] = {}


TransformFn = Callable[[np.ndarray, float], np.ndarray]


def register_transform(name: str, parameter: str) -> Callable[[TransformFn], TransformFn]:
    """Decorator that adds a degradation family so evaluation configs can name it."""

    def add(fn: TransformFn) -> TransformFn:
        TRANSFORMS[name] = TransformFamily(name, fn, parameter)
        return fn

    return add


@register_transform("jpeg", "quality 1..100")
def _jpeg_family(rgb: np.ndarray, quality: float) -> np.ndarray:
    if quality != int(quality):
        raise ConfigError(f"JPEG quality must be an integer, got {quality}")
    return jpeg(rgb, int(quality))


@register_transform("downscale", "factor in (0, 1]")
def _downscale_family(rgb: np.ndarray, factor: float) -> np.ndarray:
    return downscale(rgb, factor)


@register_transform("blur", "sigma in pixels")
def _blur_family(rgb: np.ndarray, sigma: float) -> np.ndarray:
    return blur(rgb, sigma)


_NAME = re.compile(r"^([a-z_]+?)(\d+(?:\.\d+)?)$")


def parse_transform(name: str) -> tuple[TransformFamily, float]:
    """Split ``jpeg75`` into its family and parameter, with the known families in the error message."""
    match = _NAME.match(name.strip().lower())
    if match is None or match.group(1) not in TRANSFORMS:
        known = ", ".join(f"{f.name}<{f.parameter}>" for f in TRANSFORMS.values())
        raise ConfigError(f"unknown transform '{name}'; use 'identity' or one of {known} (e.g. jpeg75, blur1.0)")
    return TRANSFORMS[match.group(1)], float(match.group(2))


def apply_transform(name: str, rgb: np.ndarray) -> np.ndarray:
    """Apply a named degradation (``jpeg75``, ``downscale0.5``, ``blur1.0``, ``identity``) to a uint8 RGB photo."""
    if name == "identity":
        return _check_rgb_uint8(rgb).copy()
    family, value = parse_transform(name)
    return family.apply(rgb, value)


# ---------------------------------------------------------------- differentiable twins on float tensors


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
    """Differentiable Gaussian blur with the same kernel size and reflected borders as ``blur``."""
    size = blur_kernel_size(sigma)
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
