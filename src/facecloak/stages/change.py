"""How the latent search shapes the change it pastes into a photo: bounded, smooth, grey-leaning, hidden in texture.

With an anchor (delta paste-back) the search renders ``anchor + change``; these operators shape that change the way
the eye forgives it (:meth:`facecloak.stages.latent_search.AdversarialLatentSearch.render`). They are plain tensor
functions, differentiable, with no Lightning.
"""

from __future__ import annotations

import torch
from torch import Tensor

from facecloak.losses.degrade import diff_blur

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma: the grey part of a change that ``change_chroma`` keeps whole."""

TEXTURE_WINDOW_FRACTION = 1 / 64
"""Local contrast (for ``change_flat_share``) is measured in a Gaussian window of this fraction of the crop side:
2 px on the offline 128 px generator, 16 px on the 1024 px FFHQ one, i.e. the same part of a face."""

TEXTURE_FULL_CONTRAST = 0.08
"""Local contrast (:func:`texture_visibility`, luma in [0, 1]) at which a place counts as fully textured. Measured on
the shared photos' 128 px face crops: the 90th percentile of sharp faces is 0.09-0.13, smooth skin's 10th percentile
0.005-0.02, and an out-of-focus face in a crowd stays below 0.005 throughout, so it is treated as smooth skin."""


def pasted_change(
    change: Tensor, max_delta: float | None, blur_sigma: float, chroma: float, visibility: Tensor | None
) -> Tensor:
    """The render's change as delta paste-back will add it: softly bounded, shaped, less where the eye sees it.

    ``max_delta · tanh(change / max_delta)`` bounds it; :func:`shape_change` then low-passes and de-saturates it
    (after the bound: the tanh turns a large smooth change into flat plateaus with sharp edges, so a blur before it
    would not keep the pasted change smooth; both shapings keep ``|change| <= max_delta``); ``visibility``
    (:func:`texture_visibility`) scales it down on smooth skin.
    """
    if max_delta is not None:
        change = max_delta * torch.tanh(change / max_delta)
    change = shape_change(change, blur_sigma, chroma)
    if visibility is not None:
        change = change * visibility
    return change


def shape_change(change: Tensor, blur_sigma: float, chroma: float) -> Tensor:
    """A change ``[B, 3, H, W]`` blurred by a Gaussian of ``blur_sigma`` pixels, its colour scaled by ``chroma``.

    Both are linear, so they commute and keep a zero change zero, and both take convex combinations (a normalised
    positive kernel; grey is a weighted mean of R, G, B), so neither enlarges the largest ``|change|``. Smooth, grey
    changes read as shading or lighting; fine texture and colour casts read as damage (and cost perceptual metrics
    like HaarPSI most).
    """
    if blur_sigma > 0:
        change = diff_blur(change, blur_sigma)
    if chroma < 1:
        grey = luma(change)
        change = grey + chroma * (change - grey)
    return change


def texture_visibility(images01: Tensor, flat_share: float) -> Tensor:
    """How much of a change each pixel of ``images01`` ``[B, 3, H, W]`` hides, ``[B, 1, H, W]`` in [flat_share, 1].

    The local contrast is the root-mean-square deviation of luma from its local mean, in a Gaussian window of
    :data:`TEXTURE_WINDOW_FRACTION` of the side. Over :data:`TEXTURE_FULL_CONTRAST` and capped at 1, then smoothed
    by the same window (so the change it scales has no hard edges), it moves the share from ``flat_share`` on flat
    places to 1 in texture. The contrast is absolute, not relative to the image, so a blurred face is flat all over.
    """
    sigma = max(1.0, min(images01.shape[-2:]) * TEXTURE_WINDOW_FRACTION)
    brightness = luma(images01)
    contrast = diff_blur((brightness - diff_blur(brightness, sigma)).square(), sigma).sqrt()
    texture = diff_blur((contrast / TEXTURE_FULL_CONTRAST).clamp(max=1.0), sigma)
    return flat_share + (1.0 - flat_share) * texture


def luma(images: Tensor) -> Tensor:
    """BT.601 luma ``[B, 1, H, W]`` of RGB ``[B, 3, H, W]`` (of a change: its grey part)."""
    weights = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)
