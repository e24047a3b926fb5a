"""What social networks do to uploaded photos, with the real codecs: the degradations evaluation measures under.

Evaluation side: ``apply_transform(name, rgb_uint8)`` runs a named degradation on an ``H×W×3`` ``uint8`` photo with
the real tools: PIL's libjpeg encoder (4:2:0 chroma subsampling, as photo sites re-encode), OpenCV area
downscaling and bicubic upscaling back to the original size, OpenCV Gaussian blur. Names are a family and a
parameter: ``jpeg75`` (quality), ``downscale0.5`` (factor), ``blur1.0`` (sigma in pixels), ``identity``.

Their differentiable twins, which attacks optimise through (expectation over transformation), live in
:mod:`facecloak.losses.degrade` and share its blur kernel size, so the real and differentiable blurs agree.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from facecloak.errors import ConfigError
from facecloak.losses.degrade import blur_kernel_size

JPEG_CHROMA_SUBSAMPLING = "4:2:0"  # what Facebook/Instagram/Twitter re-encodes use; also kornia's codec
DEFAULT_TRANSFORMS = ("jpeg95", "jpeg75", "jpeg50", "downscale0.5", "blur1.0")

_CV2_INTERPOLATION = {"area": cv2.INTER_AREA, "bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR}


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
