"""How natural a protected photo still looks: full-reference image-quality metrics on the face and the whole photo.

Inputs are float tensors ``[B, 3, H, W]`` (or ``[3, H, W]``) in ``[0, 1]``; ``original`` is the reference and
``protected`` the distorted image. Every metric is registered by name with a decorator and says whether it needs
downloaded weights. ``measure_quality`` reports each metric as
``{"available": True, "value": mean, "per_image": [...], "higher_is_better": ...}`` or, when it cannot run,
``{"available": False, "reason": "..."}``; a metric is never silently replaced by another.

Metrics:

- ``psnr``, ``ssim``, ``ms_ssim``: torchmetrics functional. MS-SSIM drops its coarsest scales on small crops and
  says so in a ``note``; below three scales it is unavailable.
- ``haarpsi``: Reisenhofer et al., "A Haar wavelet-based perceptual similarity index for image quality assessment",
  Signal Processing: Image Communication 61 (2018). Written here from the paper and its reference code's
  conventions (YIQ, 2×2 mean subsampling, MATLAB ``conv2(..., 'same')`` zero padding), 1 for identical images.
- ``gmsd``: Xue et al., "Gradient magnitude similarity deviation", IEEE TIP 23(2) 2014: the population standard
  deviation of the gradient-magnitude similarity map (Prewitt, after 2×2 mean subsampling), 0 for identical images.
- ``lpips`` (VGG backbone, registry entry ``lpips_vgg``) and the set-level ``fid``/``kid`` (registry entry
  ``fid_inception``, plus the ``torch-fidelity`` package torchmetrics needs for its Inception) run only when their
  weights are found by ``facecloak.registry.store``. FID/KID load the Inception from that local file and hand it to
  torchmetrics as its feature extractor: nothing is ever downloaded at run time, and without the file both are
  reported unavailable with the fetch command. Both need at least two photos per set.

``measure_quality`` takes batches of one size; ``measure_photo_set`` takes lists of photos of any sizes (what an
evaluation has), which set-level metrics see resized to Inception's input.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from facecloak.errors import ConfigError, FacecloakError
from facecloak.registry.store import fetch_command, is_available, resolve_one

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels, end exclusive
MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# ---------------------------------------------------------------- constants and their sources
DATA_RANGE = 1.0
PIXEL_SCALE = 255.0  # HaarPSI's C and GMSD's T were tuned on 8-bit pixel values
# ITU-R BT.601 luma and the NTSC YIQ chroma rows, as in the HaarPSI reference code.
RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))

HAARPSI_C = 30.0  # Reisenhofer et al. 2018, Sec. 4: C = 30 (8-bit pixel range)
HAARPSI_ALPHA = 4.2  # ibid.: alpha = 4.2
HAARPSI_SCALES = 3  # ibid.: three Haar scales; the coarsest one gives the weight maps

GMSD_T = 170.0  # Xue et al. 2014, Sec. III: T = 170 (8-bit pixel range)
PREWITT_X = ((1.0, 0.0, -1.0), (1.0, 0.0, -1.0), (1.0, 0.0, -1.0))  # divided by 3, Xue et al. eq. (1)

SSIM_KERNEL = 11  # Wang et al. 2004: 11×11 Gaussian window, sigma 1.5
SSIM_SIGMA = 1.5
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli & Bovik 2003, Table 1
MS_SSIM_MIN_SCALES = 3  # fewer scales than this is no longer "multi-scale" in a meaningful way

FID_INPUT_SIZE = 299  # Inception-v3 input
FID_FEATURES = 2048  # the pool3 features of Heusel et al. 2017, the layer every FID table uses
FID_INCEPTION_NAME = "inception-v3-compat"  # torch-fidelity's name of its port of the TF 2015-12-05 graph
MIN_SET_SIZE = 2  # a covariance (FID) or an unbiased MMD (KID) needs two samples per set
KID_SUBSET_SIZE = 50  # torchmetrics' default is 1000; capped at the number of images below


class MetricUnavailableError(FacecloakError):
    """A metric cannot be computed for this input or installation; the message says why and what to do."""


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class QualityMetric:
    """A registered metric: per-image values ``[B]`` or, for set metrics, one value for the whole batch."""

    name: str
    fn: MetricFn
    higher_is_better: bool
    needs_weights: str | None = None
    needs_packages: tuple[str, ...] = ()
    per_image: bool = True
    note: Callable[[int, int], str | None] | None = None


QUALITY_METRICS: dict[str, QualityMetric] = {}


def register_metric(
    name: str,
    *,
    higher_is_better: bool,
    needs_weights: str | None = None,
    needs_packages: tuple[str, ...] = (),
    per_image: bool = True,
    note: Callable[[int, int], str | None] | None = None,
) -> Callable[[MetricFn], MetricFn]:
    """Decorator that adds a metric to ``QUALITY_METRICS`` so reports and the CLI list every metric in one place."""

    def add(fn: MetricFn) -> MetricFn:
        if name in QUALITY_METRICS:
            raise ConfigError(f"quality metric '{name}' is registered twice")
        QUALITY_METRICS[name] = QualityMetric(
            name, fn, higher_is_better, needs_weights, needs_packages, per_image, note
        )
        return fn

    return add


def unavailable_reason(metric: QualityMetric) -> str | None:
    """Why a metric cannot run in this installation (missing weights or package), or None when it can."""
    if metric.needs_weights is not None and not is_available(metric.needs_weights):
        return f"weights '{metric.needs_weights}' not found, run: {fetch_command(metric.needs_weights)}"
    for package in metric.needs_packages:
        if importlib.util.find_spec(package) is None:
            return f"python package '{package}' is not installed, run: pip install {package.replace('_', '-')}"
    return None


# ---------------------------------------------------------------- shared helpers


def _as_batch(image: torch.Tensor, what: str) -> torch.Tensor:
    batch = image.unsqueeze(0) if image.dim() == 3 else image
    if batch.dim() != 4 or batch.shape[1] != 3:
        raise ConfigError(f"{what} must be an RGB tensor [B,3,H,W] or [3,H,W], got shape {tuple(image.shape)}")
    if not batch.is_floating_point():
        raise ConfigError(f"{what} must be a float tensor in [0, 1], got {batch.dtype}")
    return batch


def _check_pair(original: torch.Tensor, protected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_batch(original, "original"), _as_batch(protected, "protected")
    if x.shape != y.shape:
        raise ConfigError(f"original {tuple(x.shape)} and protected {tuple(y.shape)} must have the same shape")
    return x, y.to(x.dtype)


def _yiq(rgb: torch.Tensor) -> torch.Tensor:
    matrix = torch.tensor(RGB_TO_YIQ, dtype=rgb.dtype, device=rgb.device)
    return torch.einsum("kc,bchw->bkhw", matrix, rgb)


def _conv_same(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """MATLAB ``conv2(image, kernel, 'same')`` per channel with zero padding (true convolution, even kernels too).

    The papers' reference code uses this exact alignment; for an even size K the window reaches K/2 - 1 pixels
    up/left and K/2 down/right.
    """
    kh, kw = kernel.shape
    padded = F.pad(image, (kw // 2 - (1 - kw % 2), kw // 2, kh // 2 - (1 - kh % 2), kh // 2))
    weight = kernel.flip(0, 1).to(image).expand(image.shape[1], 1, kh, kw)
    return F.conv2d(padded, weight, groups=image.shape[1])


def _subsample(image: torch.Tensor) -> torch.Tensor:
    """2×2 mean then every second pixel: both papers' model of a typical viewing distance."""
    mean_kernel = torch.full((2, 2), 0.25, dtype=image.dtype)
    return _conv_same(image, mean_kernel)[..., ::2, ::2]


# ---------------------------------------------------------------- pixel metrics (torchmetrics)


@register_metric("psnr", higher_is_better=True)
def psnr(original: torch.Tensor, protected: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: the plain pixel-error baseline every paper reports."""
    x, y = _check_pair(original, protected)
    return peak_signal_noise_ratio(y, x, data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3))


@register_metric("ssim", higher_is_better=True)
def ssim(original: torch.Tensor, protected: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (11×11 Gaussian window), the structure-aware baseline of the papers."""
    x, y = _check_pair(original, protected)
    if min(x.shape[-2:]) < SSIM_KERNEL:
        raise MetricUnavailableError(
            f"SSIM needs at least {SSIM_KERNEL}×{SSIM_KERNEL} pixels, got {tuple(x.shape[-2:])}"
        )
    values = structural_similarity_index_measure(
        y, x, data_range=DATA_RANGE, kernel_size=SSIM_KERNEL, sigma=SSIM_SIGMA, reduction="none"
    )
    assert isinstance(values, torch.Tensor)  # a tuple only with return_full_image / return_contrast_sensitivity
    return values


def ms_ssim_scales(height: int, width: int) -> int:
    """How many MS-SSIM scales fit an image, so small face crops get a reduced but still multi-scale score.

    Mirrors the size check of torchmetrics' MS-SSIM: side >= 2**S and side // max(1, S-1)**2 > kernel - 1.
    Returns 0 when even ``MS_SSIM_MIN_SCALES`` do not fit.
    """
    side = min(height, width)
    for scales in range(len(MS_SSIM_BETAS), MS_SSIM_MIN_SCALES - 1, -1):
        if side >= 2**scales and side // max(1, scales - 1) ** 2 > SSIM_KERNEL - 1:
            return scales
    return 0


def _ms_ssim_note(height: int, width: int) -> str | None:
    scales = ms_ssim_scales(height, width)
    if 0 < scales < len(MS_SSIM_BETAS):
        return f"{scales} of {len(MS_SSIM_BETAS)} scales (image {height}×{width} too small for all)"
    return None


@register_metric("ms_ssim", higher_is_better=True, note=_ms_ssim_note)
def ms_ssim(original: torch.Tensor, protected: torch.Tensor) -> torch.Tensor:
    """Multi-scale SSIM per image; on small crops the coarsest scales are dropped and the weights renormalised."""
    x, y = _check_pair(original, protected)
    scales = ms_ssim_scales(*x.shape[-2:])
    if scales == 0:
        raise MetricUnavailableError(
            f"MS-SSIM needs at least {MS_SSIM_MIN_SCALES} scales; image {tuple(x.shape[-2:])} is too small "
            "(use a larger face crop or report SSIM)"
        )
    betas = MS_SSIM_BETAS[:scales]
    betas = tuple(b / sum(betas) for b in betas)
    return multiscale_structural_similarity_index_measure(
        y, x, data_range=DATA_RANGE, kernel_size=SSIM_KERNEL, sigma=SSIM_SIGMA, betas=betas, reduction="none"
    )


# ---------------------------------------------------------------- HaarPSI (Reisenhofer et al. 2018)


def _haar_kernel(size: int, dtype: torch.dtype) -> torch.Tensor:
    """Haar filter of one scale: +2^-s on the lower half, -2^-s on the upper half (responds to horizontal edges)."""
    kernel = torch.full((size, size), 1.0 / size, dtype=dtype)
    kernel[: size // 2] *= -1
    return kernel


def _dice(a: torch.Tensor, b: torch.Tensor, constant: float) -> torch.Tensor:
    return (2 * a * b + constant) / (a**2 + b**2 + constant)


def _haar_coefficients(luma: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(horizontal, vertical) Haar responses at scales 1..HAARPSI_SCALES."""
    out = []
    for scale in range(1, HAARPSI_SCALES + 1):
        kernel = _haar_kernel(2**scale, luma.dtype)
        out.append((_conv_same(luma, kernel), _conv_same(luma, kernel.T)))
    return out


def _haarpsi_maps(x255: torch.Tensor, y255: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Local similarity and weight maps ``[B, 3, h, w]`` (horizontal, vertical, chroma) of the paper."""
    x_yiq, y_yiq = _subsample(_yiq(x255)), _subsample(_yiq(y255))
    cx, cy = _haar_coefficients(x_yiq[:, :1]), _haar_coefficients(y_yiq[:, :1])
    similarities, weights = [], []
    for orientation in range(2):
        # The two finest scales measure local similarity; the coarsest one weighs how visible a region is.
        fine = [_dice(cx[s][orientation].abs(), cy[s][orientation].abs(), HAARPSI_C) for s in range(2)]
        similarities.append((fine[0] + fine[1]) / 2)
        weights.append(torch.maximum(cx[-1][orientation].abs(), cy[-1][orientation].abs()))
    mean_kernel = torch.full((2, 2), 0.25, dtype=x255.dtype)
    chroma_x, chroma_y = _conv_same(x_yiq[:, 1:], mean_kernel).abs(), _conv_same(y_yiq[:, 1:], mean_kernel).abs()
    chroma = _dice(chroma_x, chroma_y, HAARPSI_C)
    similarities.append(chroma.mean(dim=1, keepdim=True))
    weights.append((weights[0] + weights[1]) / 2)
    return torch.cat(similarities, dim=1), torch.cat(weights, dim=1)


@register_metric("haarpsi", higher_is_better=True)
def haarpsi(original: torch.Tensor, protected: torch.Tensor) -> torch.Tensor:
    """HaarPSI in [0, 1] per image: a weight-free perceptual similarity that tracks human judgements closely."""
    x, y = _check_pair(original, protected)
    min_side = 2 ** (HAARPSI_SCALES + 1)  # the coarsest Haar filter must fit the subsampled image
    if min(x.shape[-2:]) < min_side:
        raise MetricUnavailableError(f"HaarPSI needs at least {min_side}×{min_side} pixels, got {tuple(x.shape[-2:])}")
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    similarity, weight = _haarpsi_maps(x.to(work) * PIXEL_SCALE, y.to(work) * PIXEL_SCALE)
    pooled = (torch.sigmoid(HAARPSI_ALPHA * similarity) * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3))
    # A flat image has no visible structure (all weights zero): treat identical flat images as identical.
    pooled = torch.where(weight.sum(dim=(1, 2, 3)) > 0, pooled, torch.sigmoid(torch.tensor(HAARPSI_ALPHA)).to(work))
    logit = torch.log(pooled / (1 - pooled)) / HAARPSI_ALPHA
    return (logit**2).to(x.dtype)


# ---------------------------------------------------------------- GMSD (Xue et al. 2014)


@register_metric("gmsd", higher_is_better=False)
def gmsd(original: torch.Tensor, protected: torch.Tensor) -> torch.Tensor:
    """GMSD per image (0 = identical): spread of local gradient similarity, sensitive to uneven damage."""
    x, y = _check_pair(original, protected)
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    luma_x = _subsample(_yiq(x.to(work) * PIXEL_SCALE)[:, :1])
    luma_y = _subsample(_yiq(y.to(work) * PIXEL_SCALE)[:, :1])
    prewitt = torch.tensor(PREWITT_X, dtype=work) / 3.0

    def magnitude(luma: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(_conv_same(luma, prewitt) ** 2 + _conv_same(luma, prewitt.T) ** 2)

    gms = _dice(magnitude(luma_x), magnitude(luma_y), GMSD_T)
    return gms.flatten(1).std(dim=1, correction=0).to(x.dtype)


# ---------------------------------------------------------------- weight-backed metrics


@contextlib.contextmanager
def _torch_hub_dir(hub_dir: Path) -> Iterator[None]:
    """Point torch.hub at our verified weights so torchvision loads them instead of downloading."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(hub_dir))
    try:
        yield
    finally:
        torch.hub.set_dir(previous)


@functools.cache
def _lpips_vgg() -> torch.nn.Module:
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    vgg_file = resolve_one("lpips_vgg")  # <hub>/checkpoints/vgg16-397923af.pth, the name torchvision looks for
    with _torch_hub_dir(vgg_file.parent.parent):
        return LearnedPerceptualImagePatchSimilarity(net_type="vgg", reduction="none", normalize=True).eval()


@register_metric("lpips", higher_is_better=False, needs_weights="lpips_vgg")
def lpips(original: torch.Tensor, protected: torch.Tensor) -> torch.Tensor:
    """LPIPS(VGG) distance per image, the learned perceptual metric CLIP2Protect and DiffAM report."""
    x, y = _check_pair(original, protected)
    module = _lpips_vgg().to(x.device)
    with torch.no_grad():
        return module(y.float().clamp(0, 1), x.float().clamp(0, 1)).reshape(-1).to(x.dtype)


@functools.cache
def _fid_inception_from(weights: str) -> torch.nn.Module:
    from torchmetrics.image.fid import NoTrainInceptionV3

    inception = NoTrainInceptionV3(
        name=FID_INCEPTION_NAME, features_list=[str(FID_FEATURES)], feature_extractor_weights_path=weights
    )
    inception.num_features = FID_FEATURES  # torchmetrics reads this instead of probing with an image
    return inception


def fid_inception() -> torch.nn.Module:
    """The FID Inception-v3 (pool3 features, uint8 input) with the registry's local weights; never downloads.

    Raises ``MissingWeightsError`` with the fetch command when the weights file is absent. Loaded once per file.
    """
    return _fid_inception_from(str(resolve_one("fid_inception")))


def _uint8_sets(original: torch.Tensor, protected: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets as the uint8 images torch-fidelity's Inception expects, after checking the set size."""
    x, y = _check_pair(original, protected)
    if x.shape[0] < MIN_SET_SIZE:
        raise MetricUnavailableError(f"{what} needs at least {MIN_SET_SIZE} photos per set, got {x.shape[0]}")
    return tuple(t.clamp(0, 1).mul(255).round().to(torch.uint8) for t in (x, y))  # type: ignore[return-value]


@register_metric(
    "fid", higher_is_better=False, needs_weights="fid_inception", needs_packages=("torch_fidelity",), per_image=False
)
def fid(original: torch.Tensor, protected: torch.Tensor) -> torch.Tensor:
    """Fréchet Inception distance between the sets of originals and protected photos (a set-level metric)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    x, y = _uint8_sets(original, protected, "FID")
    metric = FrechetInceptionDistance(feature=fid_inception()).to(x.device)
    metric.update(x, real=True)
    metric.update(y, real=False)
    return metric.compute().reshape(()).to(original.dtype)


@register_metric(
    "kid", higher_is_better=False, needs_weights="fid_inception", needs_packages=("torch_fidelity",), per_image=False
)
def kid(original: torch.Tensor, protected: torch.Tensor) -> torch.Tensor:
    """Kernel Inception distance (mean over subsets): unbiased on small sets, unlike FID."""
    from torchmetrics.image.kid import KernelInceptionDistance

    x, y = _uint8_sets(original, protected, "KID")
    subset = min(KID_SUBSET_SIZE, x.shape[0])
    metric = KernelInceptionDistance(feature=fid_inception(), subset_size=subset).to(x.device)
    metric.update(x, real=True)
    metric.update(y, real=False)
    mean, _std = metric.compute()
    return mean.reshape(()).to(original.dtype)


# ---------------------------------------------------------------- measuring a batch

DEFAULT_METRICS = ("psnr", "ssim", "ms_ssim", "haarpsi", "gmsd", "lpips")


def crop(image: torch.Tensor, box: Box) -> torch.Tensor:
    """Pixels inside ``box`` (clipped to the image); raises when nothing of the box lies inside."""
    height, width = image.shape[-2:]
    x0, y0, x1, y1 = (round(v) for v in box)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    if x1 <= x0 or y1 <= y0:
        raise ConfigError(f"face box {tuple(box)} does not overlap the {width}×{height} image")
    return image[..., y0:y1, x0:x1]


def _unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason}


def _measure_one(metric: QualityMetric, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """Run one metric on (original, protected) pairs of possibly different sizes."""
    if not pairs:
        return _unavailable("no photos to measure")
    try:
        if metric.per_image:
            values = torch.cat([metric.fn(x, y).reshape(-1) for x, y in pairs])
        else:
            xs = torch.cat([_to_common_size(x) for x, _ in pairs])
            ys = torch.cat([_to_common_size(y) for _, y in pairs])
            values = metric.fn(xs, ys).reshape(1)
    except MetricUnavailableError as err:
        return _unavailable(str(err))
    per_image = [float(v) for v in values]
    result: dict[str, Any] = {
        "available": True,
        "value": float(values.mean()),  # PSNR of identical images is +inf, and stays so
        "higher_is_better": metric.higher_is_better,
    }
    if metric.per_image:
        result["per_image"] = per_image
    notes = {metric.note(*x.shape[-2:]) for x, _ in pairs} if metric.note else set()
    notes.discard(None)
    if notes:
        result["note"] = "; ".join(sorted(n for n in notes if n))
    return result


def _to_common_size(image: torch.Tensor) -> torch.Tensor:
    if tuple(image.shape[-2:]) == (FID_INPUT_SIZE, FID_INPUT_SIZE):
        return image
    return F.interpolate(image, size=(FID_INPUT_SIZE, FID_INPUT_SIZE), mode="bilinear", antialias=True)


def _face_pairs(x: torch.Tensor, y: torch.Tensor, box: Box | Sequence[Box]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    boxes = [box] * x.shape[0] if isinstance(box[0], numbers.Real) else list(box)  # type: ignore[list-item]
    if len(boxes) != x.shape[0]:
        raise ConfigError(f"got {len(boxes)} face boxes for {x.shape[0]} images; give one box or one per image")
    return [(crop(x[i : i + 1], b), crop(y[i : i + 1], b)) for i, b in enumerate(boxes)]  # type: ignore[arg-type]


def _check_metrics(metrics: Sequence[str]) -> None:
    unknown = [m for m in metrics if m not in QUALITY_METRICS]
    if unknown:
        raise ConfigError(f"unknown quality metrics {unknown}; known: {', '.join(sorted(QUALITY_METRICS))}")


def _measure_regions(
    regions: dict[str, list[tuple[torch.Tensor, torch.Tensor]]], metrics: Sequence[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    report: dict[str, dict[str, dict[str, Any]]] = {region: {} for region in regions}
    for name in metrics:
        metric = QUALITY_METRICS[name]
        reason = unavailable_reason(metric)
        for region, pairs in regions.items():
            report[region][name] = _unavailable(reason) if reason else _measure_one(metric, pairs)
    return report


def measure_quality(
    original: torch.Tensor,
    protected: torch.Tensor,
    box: Box | Sequence[Box] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every requested metric on the whole photo and, given a face box (one, or one per image), on the face.

    Returns ``{"photo": {metric: result}, "face": {...}}``; metrics that cannot run are reported with the reason.
    """
    _check_metrics(metrics)
    x, y = _check_pair(original, protected)
    regions = {"photo": [(x, y)]}
    if box is not None:
        regions["face"] = _face_pairs(x, y, box)
    return _measure_regions(regions, metrics)


def measure_photo_set(
    originals: Sequence[torch.Tensor],
    protected: Sequence[torch.Tensor],
    boxes: Sequence[Box] | None = None,
    metrics: Sequence[str] = ("fid", "kid"),
) -> dict[str, dict[str, dict[str, Any]]]:
    """Metrics over a set of photos of different sizes (one original, protected photo and box each).

    Reported as ``measure_quality`` reports them; this is what set-level metrics (FID, KID) of an evaluation need.
    """
    _check_metrics(metrics)
    if len(originals) != len(protected) or (boxes is not None and len(boxes) != len(originals)):
        raise ConfigError(
            f"got {len(originals)} originals, {len(protected)} protected photos and "
            f"{'no' if boxes is None else len(boxes)} boxes; give one of each per photo"
        )
    pairs = [_check_pair(x, y) for x, y in zip(originals, protected)]
    regions = {"photo": pairs}
    if boxes is not None:
        regions["face"] = [(crop(x, box), crop(y, box)) for (x, y), box in zip(pairs, boxes)]
    return _measure_regions(regions, metrics)
