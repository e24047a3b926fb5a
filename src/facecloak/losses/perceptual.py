"""Perceptual distances for reconstruction losses (inversion, pivot tuning), one interface, chosen by config.

CLIP2Protect (and PTI, and StyleGAN2's projector) measure reconstruction with LPIPS on VGG-16 features (Zhang et
al., 2018). Its backbone is torchvision's ImageNet VGG-16 (registry entry ``lpips_vgg``); the LPIPS linear heads ship
inside torchmetrics. When the VGG file is not on the search path we fall back to a weight-free distance instead of
failing, but never silently: ``perceptual: auto`` logs which distance it picked, and asking for ``lpips_vgg``
explicitly without the weights raises :class:`MissingWeightsError` with the fetch command.

The fallback, ``msssim``, is ``1 - MS-SSIM`` (Wang et al., 2003). Why this one: it needs no weights, it is a
full-reference measure validated against human judgements (unlike a random-feature network, whose ranking of
distortions has no such evidence), it compares local structure and contrast at several scales (what LPIPS adds over
MSE), and it is an established training loss for image restoration (Zhao et al., "Loss Functions for Image
Restoration with Neural Networks", 2017, where MS-SSIM + pixel loss beat pixel losses alone). Its limits: it is
blind to colour shifts that keep structure, so it is always paired with the pixel MSE term, and it is weaker than
LPIPS on textures.

Every distance takes images in [-1, 1] (StyleGAN's range), ``[B, 3, H, W]``, and returns one value per image
``[B]``, so a batch of independent optimisations stays independent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facecloak.errors import ConfigError, CorruptWeightsError, MissingWeightsError
from facecloak.registry import store
from facecloak.runtime.precision import full_precision, widened

log = logging.getLogger(__name__)

LPIPS_ENTRY = "lpips_vgg"
"""Registry entry of the VGG-16 backbone LPIPS(VGG) uses."""

PERCEPTUAL_CHOICES = ("auto", "lpips_vgg", "msssim")
"""Values of the ``perceptual`` config key."""

IMAGE_RANGE = 2.0
"""Width of the [-1, 1] value range the distances receive (MS-SSIM's ``data_range``)."""

MSSSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Per-scale exponents of MS-SSIM, finest first (Wang, Simoncelli & Bovik, 2003, Table 1)."""

MSSSIM_KERNEL = 11
"""Gaussian window size of SSIM (Wang et al., 2004)."""


# --- resizing --------------------------------------------------------------------------------------------------------


def resize_for_loss(x: Tensor, size: int) -> Tensor:
    """Resize to the loss resolution with area averaging when shrinking, so a 1024 px render does not alias.

    StyleGAN2's projector averages 4×4 blocks (area pooling for integer factors); CLIP2Protect's pivot tuning uses
    nearest-neighbour, which aliases. Enlarging (tiny test generators) is bilinear.
    """
    if x.shape[-2:] == (size, size):
        return x
    if x.shape[-1] > size:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


# --- the two distances -----------------------------------------------------------------------------------------------


def _msssim_scales(size: int, kernel: int = MSSSIM_KERNEL) -> int:
    """How many MS-SSIM scales fit in ``size`` px under torchmetrics' size checks (5 from 176 px up)."""
    n = len(MSSSIM_BETAS)
    while n > 1 and (size < 2**n or size // max(1, n - 1) ** 2 <= kernel - 1):
        n -= 1
    return n


def _rescaled_betas(n: int) -> tuple[float, ...]:
    """The first ``n`` exponents rescaled to the full set's sum (fewer scales on small images weigh the same)."""
    betas = torch.tensor(MSSSIM_BETAS[:n])
    return tuple((betas * (sum(MSSSIM_BETAS) / betas.sum())).tolist())


_MSSSIM_BETAS_BY_SCALES = {n: _rescaled_betas(n) for n in range(1, len(MSSSIM_BETAS) + 1)}
"""Computed once at import: a per-call tensor round trip is a host read in every optimisation step."""


class MSSSIMDistance(nn.Module):
    """``1 - MS-SSIM`` per image: the weight-free fallback (see the module docstring for why).

    Small inputs (tests at 64 px) use the finest scales that fit, with their exponents renormalised to sum to the
    full set's sum so values stay comparable across resolutions. ``normalize="simple"`` maps each scale's term to
    [0, 1] before the power, which keeps gradients finite where SSIM is negative (pytorch-msssim's training mode).
    """

    name = "msssim"

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Distance in [0, 1] per image (0: identical)."""
        from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as msssim

        betas = _MSSSIM_BETAS_BY_SCALES[_msssim_scales(min(x.shape[-2:]))]
        with full_precision():  # 1 − MS-SSIM of near-identical images is a difference of numbers close to 1
            score = msssim(
                widened(x),
                widened(y),
                data_range=IMAGE_RANGE,
                kernel_size=MSSSIM_KERNEL,
                betas=betas,
                normalize="simple",
                reduction="none",
            )
            return 1.0 - score


def _vgg_features_to_lpips(vgg_state: dict[str, Tensor], lpips_backbone: nn.Module) -> dict[str, Tensor]:
    """Rename torchvision ``features.{i}.*`` weights to the LPIPS backbone's ``slice{k}.{i}.*`` keys.

    torchmetrics splits VGG-16's feature layers into five slices that keep the layer indices as child names.
    """
    renamed = {}
    for key in lpips_backbone.state_dict():
        _, index, leaf = key.split(".")
        renamed[key] = vgg_state[f"features.{index}.{leaf}"]
    return renamed


class LPIPSDistance(nn.Module):
    """LPIPS(VGG) per image, the distance CLIP2Protect and PTI use; needs the ``lpips_vgg`` backbone file.

    The backbone is read from the registry file with ``weights_only`` and loaded strictly into torchmetrics' LPIPS
    network (built with a random backbone, so nothing is ever downloaded); the linear heads are torchmetrics'.
    """

    name = "lpips_vgg"

    def __init__(self, vgg_path: str | Path) -> None:
        super().__init__()
        from torchmetrics.functional.image.lpips import _LPIPS

        self.net = _LPIPS(pretrained=True, net="vgg", pnet_rand=True)
        try:
            vgg_state = torch.load(Path(vgg_path), map_location="cpu", weights_only=True)
            self.net.net.load_state_dict(_vgg_features_to_lpips(vgg_state, self.net.net), strict=True)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CorruptWeightsError(
                f"{vgg_path} is not torchvision's VGG-16 state dict ({type(exc).__name__}: {exc}); delete it and run: "
                f"{store.fetch_command(LPIPS_ENTRY)}"
            ) from exc
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> LPIPSDistance:
        """Stay in eval mode: LPIPS has dropout before its heads, which must never be active."""
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """LPIPS per image (inputs in [-1, 1])."""
        return self.net(x, y, normalize=False).flatten()


# --- choosing one ----------------------------------------------------------------------------------------------------


def _build_lpips() -> nn.Module:
    return LPIPSDistance(store.resolve_one(LPIPS_ENTRY, verify=False))


_BUILDERS: dict[str, Callable[[], nn.Module]] = {"lpips_vgg": _build_lpips, "msssim": MSSSIMDistance}


def build_perceptual(name: str = "auto") -> nn.Module:
    """The configured perceptual distance; ``auto`` prefers LPIPS(VGG) and logs when it falls back.

    Raises :class:`MissingWeightsError` (with the fetch command) when ``lpips_vgg`` is asked for explicitly and its
    weights are absent, and :class:`ConfigError` for an unknown name.
    """
    if name not in PERCEPTUAL_CHOICES:
        raise ConfigError(f"perceptual must be one of {PERCEPTUAL_CHOICES}, got {name!r}")
    if name == "auto":
        if store.is_available(LPIPS_ENTRY):
            name = "lpips_vgg"
            log.info("perceptual=auto: using LPIPS(VGG) (registry entry %s found)", LPIPS_ENTRY)
        else:
            name = "msssim"
            log.warning(
                "perceptual=auto: LPIPS(VGG) weights (%s) not found, using the weight-free 1 - MS-SSIM distance "
                "instead; results differ from the paper's recipe. Fetch them with: %s",
                LPIPS_ENTRY,
                store.fetch_command(LPIPS_ENTRY),
            )
    try:
        return _BUILDERS[name]()
    except MissingWeightsError as exc:
        raise MissingWeightsError(
            f"perceptual={name!r} needs the LPIPS VGG-16 backbone: {exc}. Fetch it, or set perceptual: auto or msssim"
        ) from exc
