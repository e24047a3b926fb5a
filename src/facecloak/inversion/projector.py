"""Optimisation projector: find W+ codes (and noise maps) that make a StyleGAN2 generator reproduce photos.

The recipe is the projector of StyleGAN2 (Karras et al., 2020, Appendix D; rosinality's ``projector.py`` gives the
PyTorch numbers): start every W+ slot at the mean latent, optimise with Adam under a cosine learning-rate ramp, add
decaying Gaussian noise to W early on so the search explores, and optimise the per-layer noise maps too, kept from
absorbing the image by a multi-scale autocorrelation penalty and renormalised to zero mean / unit variance after
every step. The loss is a perceptual distance plus ``mse_weight`` × pixel MSE on 256² resizes. Starting from e4e
codes instead (``init_wplus``; see :func:`e4e_init`) turns it into a refinement of the encoder's inversion.

Images in a batch are independent problems: every loss term is per image and summed, and Adam is element-wise, so
each image follows the path it would follow alone. Randomness (initial noise maps, latent noise) comes from one
``torch.Generator`` per image, seeded by the config, never from the global RNG: every image draws what it would draw
in a run of its own, so a batch of faces from several photos projects each face as a batch of one does.

Works with any generator module that exposes ``synthesis(wplus, noise)``, ``mapping(z)``, ``n_latent``,
``style_dim`` and ``noise_shapes`` (:class:`facecloak.models.stylegan2.Generator` does).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facecloak.errors import ConfigError
from facecloak.losses.perceptual import PERCEPTUAL_CHOICES, build_perceptual, resize_for_loss
from facecloak.models.e4e import INPUT_SIZE as E4E_INPUT_SIZE
from facecloak.models.e4e import Encoder4Editing


@dataclass(frozen=True)
class ProjectorConfig:
    """Projector settings; defaults are rosinality's ``projector.py`` except ``mse_weight`` (see below)."""

    steps: int = 1000
    lr: float = 0.1
    lr_rampup: float = 0.05
    """Fraction of the run over which the learning rate rises linearly from 0."""
    lr_rampdown: float = 0.25
    """Fraction at the end over which it falls to 0 along a half cosine."""
    latent_noise: float = 0.05
    """Std of the noise added to W, in units of the latents' spread; it decays quadratically to 0 (0: off)."""
    latent_noise_ramp: float = 0.75
    """Fraction of the run after which no latent noise is added."""
    noise_regularize: float = 1e5
    """Weight of the noise maps' autocorrelation penalty."""
    mse_weight: float = 0.1
    """Pixel-MSE weight. rosinality's default is 0 (LPIPS alone); we use CLIP2Protect's pivot-tuning weight so the
    pivot and the tuning optimise the same objective, and because the weight-free fallback is blind to colour."""
    optimize_noise: bool = True
    loss_size: int = 256
    """Resolution at which losses are computed (rosinality and CLIP2Protect: 256)."""
    n_mean_latent: int = 10000
    """Samples used to estimate the mean latent and its spread."""
    perceptual: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"generator.projector.steps must be >= 1, got {self.steps}")
        if self.lr <= 0:
            raise ConfigError(f"generator.projector.lr must be positive, got {self.lr}")
        for name in ("lr_rampup", "lr_rampdown", "latent_noise_ramp"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(
                    f"generator.projector.{name} is a fraction of the run in (0, 1], got {getattr(self, name)}"
                )
        for name in ("latent_noise", "noise_regularize", "mse_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"generator.projector.{name} must be >= 0, got {getattr(self, name)}")
        if self.perceptual not in PERCEPTUAL_CHOICES:
            raise ConfigError(
                f"generator.projector.perceptual must be one of {PERCEPTUAL_CHOICES}, got {self.perceptual!r}"
            )


NOISE_REG_MIN_SIZE = 8
"""The autocorrelation penalty is applied on a noise map and its 2× downsamplings down to 8 px (rosinality)."""


class ProjectableGenerator(Protocol):
    """What the projector needs from a generator (an ``nn.Module``; its weights are only read)."""

    n_latent: int
    style_dim: int

    @property
    def noise_shapes(self) -> list[tuple[int, int, int, int]]: ...  # noqa: D102

    def synthesis(self, wplus: Tensor, noise: Sequence[Tensor] | None = None) -> Tensor: ...  # noqa: D102

    def mapping(self, z: Tensor) -> Tensor: ...  # noqa: D102

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...  # noqa: D102


@dataclass
class ProjectionResult:
    """Per-image W+ codes ``[B, n_latent, style_dim]``, noise maps ``[B, 1, r, r]`` and the final loss terms ``[B]``."""

    wplus: Tensor
    noise: list[Tensor]
    perceptual: Tensor
    mse: Tensor


# --- the pieces of the recipe ----------------------------------------------------------------------------------------


def learning_rate(t: float, lr: float, rampup: float, rampdown: float) -> float:
    """Learning rate at run fraction ``t``: linear warm-up, flat, half-cosine decay (StyleGAN2 projector)."""
    ramp = min(1.0, (1.0 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return lr * ramp * min(1.0, t / rampup)


@torch.no_grad()
def latent_statistics(
    generator: ProjectableGenerator,
    n_samples: int,
    seed: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Mean W ``[style_dim]`` and the RMS distance of W samples to it, which scales the exploration noise."""
    z = torch.randn(n_samples, generator.style_dim, generator=torch.Generator().manual_seed(seed)).to(device, dtype)
    w = generator.mapping(z)
    mean = w.mean(0)
    return mean, ((w - mean).pow(2).sum() / n_samples).sqrt()


def noise_regularization(noises: Sequence[Tensor]) -> Tensor:
    """Per-image penalty ``[B]`` on the noise maps' 1-pixel autocorrelation at several scales.

    Without it the optimised noise maps absorb image content (StyleGAN2 paper, Appendix D).
    """
    total = noises[0].new_zeros(noises[0].shape[0])
    for noise in noises:
        while True:
            total = total + (noise * noise.roll(1, dims=3)).mean((1, 2, 3)).pow(2)
            total = total + (noise * noise.roll(1, dims=2)).mean((1, 2, 3)).pow(2)
            if noise.shape[-1] <= NOISE_REG_MIN_SIZE:
                break
            noise = F.avg_pool2d(noise, 2)
    return total


@torch.no_grad()
def normalize_noise_(noises: Sequence[Tensor]) -> None:
    """Renormalise every image's noise map to zero mean and unit variance, in place."""
    for noise in noises:
        mean = noise.mean((1, 2, 3), keepdim=True)
        std = noise.std((1, 2, 3), keepdim=True)
        noise.sub_(mean).div_(std)


def per_image_mse(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error of each image ``[B]`` (the MSE term of every reconstruction loss here)."""
    return (x - y).pow(2).flatten(1).mean(1)


@torch.no_grad()
def e4e_init(encoder: Encoder4Editing, images: Tensor) -> Tensor:
    """W+ codes from e4e for ``images`` in [-1, 1], as ``init_wplus`` for a refining projection."""
    return encoder.encode(resize_for_loss(images, E4E_INPUT_SIZE))


@contextmanager
def frozen(module: ProjectableGenerator) -> Iterator[None]:
    """Turn off the weights' gradients for the duration, so only the codes get gradients; restore the flags after."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


# --- projection ------------------------------------------------------------------------------------------------------


def project(
    generator: ProjectableGenerator,
    images: Tensor,
    config: ProjectorConfig | None = None,
    init_wplus: Tensor | None = None,
    latent_avg: Tensor | None = None,
    perceptual: nn.Module | None = None,
) -> ProjectionResult:
    """Invert ``images`` (``[B, 3, H, W]`` in [-1, 1], any size) into W+ and noise maps.

    ``init_wplus`` (e.g. from :func:`e4e_init`) replaces the mean-latent start; for a refinement use a smaller
    ``lr`` and ``latent_noise=0``. ``latent_avg`` (a checkpoint's tracked mean W) replaces the sampled mean.
    The generator is only read: its weights get no gradient. ``perceptual``: a prebuilt distance of the configured
    kind, so a job loads VGG/LPIPS once instead of once per face.
    """
    config = config or ProjectorConfig()
    perceptual = (perceptual or build_perceptual(config.perceptual)).to(images.device)
    batch, device, dtype = images.shape[0], images.device, images.dtype  # float64 in the exactness tests
    rngs = [torch.Generator().manual_seed(config.seed) for _ in range(batch)]  # one stream per image, as if alone

    w_mean, w_spread = latent_statistics(generator, config.n_mean_latent, config.seed, device, dtype)
    if init_wplus is None:
        start = latent_avg if latent_avg is not None else w_mean
        init_wplus = start.reshape(1, 1, generator.style_dim).expand(batch, generator.n_latent, -1)
    wplus = init_wplus.detach().clone().to(device, dtype).requires_grad_(True)
    drawn = [[torch.randn((1, *s[1:]), generator=rng) for s in generator.noise_shapes] for rng in rngs]
    noise = [torch.cat(maps).to(device, dtype) for maps in zip(*drawn)]
    for n in noise:
        n.requires_grad_(config.optimize_noise)
    optimizer = torch.optim.Adam([wplus, *noise] if config.optimize_noise else [wplus], lr=config.lr)
    target = resize_for_loss(images, config.loss_size)

    with frozen(generator):
        for step in range(config.steps):
            t = step / config.steps
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(t, config.lr, config.lr_rampup, config.lr_rampdown)
            strength = w_spread * config.latent_noise * max(0.0, 1.0 - t / config.latent_noise_ramp) ** 2
            jitter = torch.cat([torch.randn((1, *wplus.shape[1:]), generator=rng) for rng in rngs]).to(device, dtype)
            jitter = jitter * strength
            rendered = resize_for_loss(generator.synthesis(wplus + jitter, noise), config.loss_size)
            loss = perceptual(rendered, target) + config.mse_weight * per_image_mse(rendered, target)
            if config.optimize_noise:
                loss = loss + config.noise_regularize * noise_regularization(noise)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # a sum of per-image terms: every image's gradient is its own
            optimizer.step()
            if config.optimize_noise:
                normalize_noise_(noise)

        with torch.no_grad():
            final = resize_for_loss(generator.synthesis(wplus, noise), config.loss_size)
            return ProjectionResult(
                wplus=wplus.detach(),
                noise=[n.detach() for n in noise],
                perceptual=perceptual(final, target),
                mse=per_image_mse(final, target),
            )
