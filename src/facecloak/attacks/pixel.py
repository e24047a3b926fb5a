"""L∞-bounded pixel attacks, the noise baselines the papers compare generative protection with (PGD, MI-FGSM, TI-DIM).

One base class, :class:`PixelAttack`, owns what every attack shares (the torchattacks layout): the victims stay
frozen in eval mode, images live in ``[0, 1]``, the objective is the identity loss
(:class:`~facecloak.losses.identity.AdversarialIdentityLoss`, whose mode makes the attack untargeted — dodging — or
targeted — impersonation), every step is projected back onto the L∞ ball around the clean image, onto ``[0, 1]``
and, optionally, onto a mask (pixels outside it are never changed), and the random start. A variant only says how
a gradient becomes a step:

- ``pgd`` — Madry et al., "Towards deep learning models resistant to adversarial attacks", ICLR 2018: random start,
  signed gradient;
- ``mifgsm`` — Dong et al., "Boosting adversarial attacks with momentum", CVPR 2018: the L1-normalised gradient is
  accumulated with decay μ and its sign is the step;
- ``tidim`` — MI-FGSM plus diverse inputs (Xie et al., "Improving transferability of adversarial examples with input
  diversity", CVPR 2019: with probability p the image is resized by a random factor and zero-padded at a random
  offset before the loss) and translation invariance (Dong et al., "Evading defenses to transferable adversarial
  examples by translation-invariant attacks", CVPR 2019: the gradient is smoothed with a Gaussian kernel).

Faces are found in the attacked tensor by their five landmarks, so it may be a whole photo or any region of one; the
landmarks stay fixed under the diverse-input transform, which therefore moves and rescales the face relative to each
model's alignment template. Kernel sizes and resize ranges are in pixels of the attacked tensor.

Full photos go through :func:`protect_photo_pixels`: each face is attacked on a region around it (its box enlarged,
1.5× by default) so memory stays small, the result is quantised to uint8 and written back, and the whole photo is
finally clipped to the budget around the original. Any success check belongs on that uint8 output.

All randomness (random start, diverse inputs) comes from a generator seeded from ``config.seed`` afresh on every
``perturb`` call, as does the momentum: no state carries from one image or call to the next.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facecloak.errors import ConfigError, ImageError, NoFaceError
from facecloak.faces.detect import Face
from facecloak.losses.identity import AdversarialIdentityLoss, IdentityReference

# --- constants and their sources -------------------------------------------------------------------------------------

PIXEL_LEVELS = 255.0
"""Budgets and step sizes are given in 8-bit pixel levels (``eps_255 = 8`` means 8/255 in [0, 1] images)."""

DEFAULT_EPS_255 = 8.0
"""The usual L∞ budget of the transfer-attack literature (Madry et al. 2018; Dong et al. 2018, 2019: 16 also common)."""

DEFAULT_STEPS = 10
"""T = 10 iterations: MI-FGSM's and TI-DIM's setting, and torchattacks' PGD default."""

PGD_STEP_FACTOR = 2.5
"""PGD step α = 2.5·ε/T (Madry lab's ``robustness`` rule; torchattacks' PGD default 2/255 for 8/255 in 10 steps)."""

FGSM_STEP_FACTOR = 1.0
"""Iterative FGSM step α = ε/T, so T signed steps just reach the budget (Kurakin et al. 2017; Dong et al. 2018)."""

DEFAULT_MOMENTUM = 1.0
"""MI-FGSM decay μ = 1.0 (Dong et al. 2018, Sec. 4)."""

DEFAULT_DI_PROB = 0.5
"""Probability of the diverse-input transform per step, p = 0.5 (Xie et al. 2019, Sec. 4; TI-DIM uses the same)."""

DEFAULT_DI_RESIZE_RANGE = (1.0, 1.1)
"""Resize factor range of diverse inputs, relative to the attacked tensor: 299 → [299, 330) px in Xie et al. 2019."""

DEFAULT_TI_KERNEL_SIZE = 7
"""TI Gaussian kernel side in pixels. Dong et al. 2019 use 15 px on 299-px images (5% of the side); 7 px keeps that
fraction on the ~150-px faces of typical photos."""

TI_NSIG = 3.0
"""The kernel spans ±3σ, so σ = (k − 1) / 6: the reference code's ``gkern(kernlen, nsig=3)``."""

L1_NORM_FLOOR = 1e-12
"""Keeps MI-FGSM's gradient normalisation finite where a gradient is exactly zero."""

DEFAULT_REGION_SCALE = 1.5
"""Full photos: the attacked region is the face box enlarged this much, enough to hold every template's crop."""

PIXEL_ATTACKS: dict[str, type[PixelAttack]] = {}


# --- configuration ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelAttackConfig:
    """Budget and hyper-parameters of a pixel attack; each variant reads only the fields it uses.

    ``eps_255`` and ``step_size_255`` are in 8-bit pixel levels; :attr:`eps` gives the budget in ``[0, 1]`` units.
    """

    eps_255: float = DEFAULT_EPS_255
    """L∞ budget, in pixel levels out of 255."""
    steps: int = DEFAULT_STEPS
    step_size_255: float | None = None
    """Step α in pixel levels; None: the attack's paper rule (``step_factor · eps_255 / steps``)."""
    random_start: bool | None = None
    """Start from uniform noise in the ball; None: the attack's paper default (PGD yes, MI-FGSM and TI-DIM no)."""
    momentum: float = DEFAULT_MOMENTUM
    """MI-FGSM / TI-DIM decay μ."""
    di_prob: float = DEFAULT_DI_PROB
    di_resize_range: tuple[float, float] = DEFAULT_DI_RESIZE_RANGE
    ti_kernel_size: int = DEFAULT_TI_KERNEL_SIZE
    ti_sigma: float | None = None
    """TI Gaussian σ in pixels; None: ``(ti_kernel_size − 1) / 6`` (:data:`TI_NSIG`)."""
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "di_resize_range", tuple(float(v) for v in self.di_resize_range))
        checks = (
            ("eps_255", 0 < self.eps_255 <= PIXEL_LEVELS, "must be in (0, 255] pixel levels"),
            ("steps", self.steps >= 1, "must be at least 1"),
            ("step_size_255", self.step_size_255 is None or self.step_size_255 > 0, "must be positive (or null)"),
            ("momentum", self.momentum >= 0, "must be >= 0"),
            ("di_prob", 0 <= self.di_prob <= 1, "must be a probability in [0, 1]"),
            (
                "di_resize_range",
                len(self.di_resize_range) == 2 and 1 <= self.di_resize_range[0] <= self.di_resize_range[1],
                "must be (low, high) with 1 <= low <= high (images are enlarged, then padded)",
            ),
            ("ti_kernel_size", self.ti_kernel_size >= 1 and self.ti_kernel_size % 2 == 1, "must be a positive odd int"),
            ("ti_sigma", self.ti_sigma is None or self.ti_sigma > 0, "must be positive (or null)"),
        )
        for key, ok, message in checks:
            if not ok:
                raise ConfigError(f"pixel_attack.{key} {message}, got {getattr(self, key)!r}")

    @property
    def eps(self) -> float:
        """The budget in ``[0, 1]`` image units."""
        return self.eps_255 / PIXEL_LEVELS


# --- the transforms TI-DIM adds --------------------------------------------------------------------------------------


def gaussian_kernel(size: int, sigma: float | None = None) -> Tensor:
    """Normalised 2-D Gaussian ``[size, size]``, TI's smoothing kernel (σ defaults to the reference's ±3σ span)."""
    if size < 1 or size % 2 == 0:
        raise ConfigError(f"TI kernel size must be a positive odd number of pixels, got {size}")
    sigma = sigma if sigma is not None else max((size - 1) / (2 * TI_NSIG), L1_NORM_FLOOR)
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    profile = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = torch.outer(profile, profile)
    return (kernel / kernel.sum()).float()


def smooth_gradient(grad: Tensor, kernel: Tensor) -> Tensor:
    """Convolve each channel with ``kernel`` (zero padding, same size): gradients of all small translations at once."""
    channels = grad.shape[1]
    weight = kernel.to(grad).expand(channels, 1, *kernel.shape)
    return F.conv2d(grad, weight, padding=kernel.shape[-1] // 2, groups=channels)


def diverse_input(
    images: Tensor, prob: float, resize_range: tuple[float, float], generator: torch.Generator | None = None
) -> Tensor:
    """With probability ``prob``, enlarge the batch by a random factor and zero-pad it at a random offset.

    The output is ``round(side · high)`` on each axis whenever the transform fires (the input unchanged otherwise),
    like Xie et al.'s 299 → rnd ∈ [299, 330) → pad to 330. One draw per call, shared by the batch.
    """
    if float(torch.rand((), generator=generator)) >= prob:
        return images
    low, high = resize_range
    scale = low + (high - low) * float(torch.rand((), generator=generator))
    height, width = images.shape[-2:]
    out_h, out_w = round(height * high), round(width * high)
    new_h, new_w = min(round(height * scale), out_h), min(round(width * scale), out_w)
    resized = images
    if (new_h, new_w) != (height, width):
        resized = F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False)
    top = int(torch.randint(0, out_h - new_h + 1, (), generator=generator))
    left = int(torch.randint(0, out_w - new_w + 1, (), generator=generator))
    return F.pad(resized, (left, out_w - new_w - left, top, out_h - new_h - top))


# --- the shared attack loop ------------------------------------------------------------------------------------------


def register_pixel_attack(name: str) -> Callable[[type[PixelAttack]], type[PixelAttack]]:
    """Class decorator that adds an attack to :data:`PIXEL_ATTACKS`, so benchmarks and tests see every variant."""

    def add(cls: type[PixelAttack]) -> type[PixelAttack]:
        if name in PIXEL_ATTACKS:
            raise ConfigError(f"pixel attack '{name}' is registered twice")
        cls.name = name
        PIXEL_ATTACKS[name] = cls
        return cls

    return add


@dataclass
class AttackRun:
    """Everything one attack carries from step to step (fresh per call, so nothing leaks between photos)."""

    clean: Tensor
    keep: Tensor | None
    landmarks5: Tensor
    reference: IdentityReference
    generator: torch.Generator
    adv: Tensor
    state: dict[str, Tensor] = field(default_factory=dict)


class PixelAttack:
    """An L∞ attack on the identity loss; subclasses change only how a gradient becomes a step."""

    name: ClassVar[str] = "base"
    step_factor: ClassVar[float] = FGSM_STEP_FACTOR
    """Default step α = ``step_factor · ε / steps`` when the config gives none."""
    random_start_default: ClassVar[bool] = False

    def __init__(
        self, config: PixelAttackConfig, loss: AdversarialIdentityLoss, degradation: nn.Module | None = None
    ) -> None:
        self.config = config
        self.loss = loss.eval().requires_grad_(False)
        self.degradation = degradation
        """Optional expectation over transformation, e.g. ``RandomDegradation``: applied to every step's input."""

    @property
    def mode(self) -> str:
        """``dodge`` (untargeted) or ``impersonate`` (targeted): the identity loss decides."""
        return self.loss.mode

    @property
    def device(self) -> torch.device:
        """Where the attacked models live; inputs are moved there."""
        weights = self.loss.model_weights
        assert isinstance(weights, Tensor)
        return weights.device

    @property
    def eps(self) -> float:
        """Budget in ``[0, 1]`` units."""
        return self.config.eps

    @property
    def step_size(self) -> float:
        """Step α in ``[0, 1]`` units."""
        if self.config.step_size_255 is not None:
            return self.config.step_size_255 / PIXEL_LEVELS
        return self.step_factor * self.eps / self.config.steps

    @property
    def random_start(self) -> bool:
        """Whether to start from uniform noise in the ball."""
        return self.random_start_default if self.config.random_start is None else self.config.random_start

    def perturb(
        self, images01: Tensor, landmarks5: Tensor, reference: IdentityReference, mask: Tensor | None = None
    ) -> Tensor:
        """Adversarial images within ``eps`` of ``images01`` (``[B, 3, H, W]`` in [0, 1]) and equal outside ``mask``.

        ``landmarks5`` ``[B, 5, 2]`` locate each face in the images; ``mask`` (``[B or 1, 1, H, W]``, bool or 0/1)
        limits where pixels may change. Images are independent: each one's loss has its own gradient.
        """
        run = self.start(images01, landmarks5, reference, mask)
        for _ in range(self.config.steps):
            self.step(run)
        return run.adv.detach()

    def start(
        self, images01: Tensor, landmarks5: Tensor, reference: IdentityReference, mask: Tensor | None = None
    ) -> AttackRun:
        """The state of one attack: clean images, mask, seeded draws and the (optionally random) first iterate.

        :meth:`perturb` loops :meth:`step` over it; the Lightning stage (:mod:`facecloak.stages.pixel_attack`) runs
        the same steps through a Trainer.
        """
        clean = self._check_images(images01)
        keep = self._check_mask(mask, clean)
        landmarks5 = landmarks5.to(device=clean.device, dtype=clean.dtype)
        generator = torch.Generator().manual_seed(self.config.seed)
        adv = clean
        if self.random_start:
            noise = torch.rand(clean.shape, generator=generator, dtype=clean.dtype) * 2 - 1
            adv = self._project(clean + self.eps * noise.to(clean.device), clean, keep)
        return AttackRun(clean, keep, landmarks5, reference, generator, adv)

    def step(self, run: AttackRun) -> Tensor:
        """One signed step on every image of ``run`` (updated in place); returns the per-image loss before it."""
        adv = run.adv.detach().requires_grad_(True)
        view = self._input_transform(adv, run.generator)
        if self.degradation is not None:
            view = self.degradation(view)
        loss, _ = self.loss(view, run.landmarks5, run.reference)
        (grad,) = torch.autograd.grad(loss.sum(), adv)
        grad = self._gradient_transform(grad.float())
        if run.keep is not None:
            grad = grad * run.keep
        # The identity loss is minimised: dodging lowers the source similarity, impersonation raises the target's.
        run.adv = self._project(adv.detach() - self.step_size * self._direction(grad, run.state), run.clean, run.keep)
        return loss.detach()

    # hooks a variant may override ---------------------------------------------------------------------------------

    def _input_transform(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """What the models see of the current iterate (the iterate itself unless a variant diversifies it)."""
        return images

    def _gradient_transform(self, grad: Tensor) -> Tensor:
        """Gradient post-processing before the step rule (none unless a variant smooths it)."""
        return grad

    def _direction(self, grad: Tensor, state: dict[str, Tensor]) -> Tensor:
        """The step direction from this step's gradient; ``state`` is fresh per ``perturb`` call."""
        return grad.sign()

    # shared mechanics ---------------------------------------------------------------------------------------------

    def _project(self, adv: Tensor, clean: Tensor, keep: Tensor | None) -> Tensor:
        """Back onto the L∞ ball around ``clean``, into [0, 1], and to ``clean`` outside the mask."""
        adv = (clean + (adv - clean).clamp(-self.eps, self.eps)).clamp(0.0, 1.0)
        return adv if keep is None else torch.where(keep, adv, clean)

    def _check_images(self, images01: Tensor) -> Tensor:
        if images01.ndim != 4 or images01.shape[1] != 3:
            raise ConfigError(f"pixel attacks take RGB batches [B, 3, H, W], got {tuple(images01.shape)}")
        if images01.numel() and (float(images01.min()) < 0 or float(images01.max()) > 1):
            raise ConfigError("pixel attacks take images in [0, 1]; divide uint8 pixels by 255 first")
        return images01.detach().to(device=self.device, dtype=torch.float32)

    def _check_mask(self, mask: Tensor | None, images: Tensor) -> Tensor | None:
        if mask is None:
            return None
        keep = mask.to(images.device)
        keep = keep.unsqueeze(1) if keep.ndim == 3 else keep
        batch, _, height, width = images.shape
        if (
            keep.ndim != 4
            or keep.shape[1] != 1
            or keep.shape[0] not in (1, batch)
            or keep.shape[-2:] != (height, width)
        ):
            raise ConfigError(
                f"mask must be [B or 1, 1, H, W] matching images {tuple(images.shape)}, got {tuple(mask.shape)}"
            )
        if keep.dtype != torch.bool:
            if not bool(((keep == 0) | (keep == 1)).all()):
                raise ConfigError("mask must be boolean or hold only 0 and 1 (1: pixel may change)")
            keep = keep.bool()
        return keep


# --- the variants ----------------------------------------------------------------------------------------------------


@register_pixel_attack("pgd")
class PGD(PixelAttack):
    """Projected gradient descent: uniform random start, signed-gradient steps of 2.5·ε/T (Madry et al. 2018)."""

    step_factor = PGD_STEP_FACTOR
    random_start_default = True


@register_pixel_attack("mifgsm")
class MIFGSM(PixelAttack):
    """Momentum iterative FGSM: steps follow the sign of the decayed sum of L1-normalised gradients."""

    def _direction(self, grad: Tensor, state: dict[str, Tensor]) -> Tensor:
        # Dong et al.'s reference code divides by the mean absolute value per image (the L1 norm up to a constant).
        normalised = grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(L1_NORM_FLOOR)
        velocity = state.get("velocity")
        state["velocity"] = normalised if velocity is None else self.config.momentum * velocity + normalised
        return state["velocity"].sign()


@register_pixel_attack("tidim")
class TIDIM(MIFGSM):
    """MI-FGSM on diverse inputs (random resize and pad) with a translation-invariant (Gaussian-smoothed) gradient."""

    def __init__(
        self, config: PixelAttackConfig, loss: AdversarialIdentityLoss, degradation: nn.Module | None = None
    ) -> None:
        super().__init__(config, loss, degradation)
        self.kernel = gaussian_kernel(config.ti_kernel_size, config.ti_sigma)

    def _input_transform(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return diverse_input(images, self.config.di_prob, self.config.di_resize_range, generator)

    def _gradient_transform(self, grad: Tensor) -> Tensor:
        return smooth_gradient(grad, self.kernel)


def build_pixel_attack(
    name: str, config: PixelAttackConfig, loss: AdversarialIdentityLoss, degradation: nn.Module | None = None
) -> PixelAttack:
    """The registered attack ``name`` on ``loss``, so scripts pick baselines by name from a config."""
    if name not in PIXEL_ATTACKS:
        raise ConfigError(f"unknown pixel attack '{name}'; choose one of {', '.join(sorted(PIXEL_ATTACKS))}")
    return PIXEL_ATTACKS[name](config, loss, degradation)


# --- full photos -----------------------------------------------------------------------------------------------------

PixelBox = tuple[int, int, int, int]  # (x0, y0, x1, y1), end exclusive


def scaled_box(box: Sequence[float], scale: float, size: tuple[int, int]) -> PixelBox:
    """``box`` enlarged about its centre by ``scale``, rounded outward and clipped to ``size`` (h, w): whole pixels."""
    if scale <= 0:
        raise ConfigError(f"box scale must be positive, got {scale}")
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy, half_w, half_h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * scale / 2, (y1 - y0) * scale / 2
    height, width = size
    return (
        max(0, math.floor(cx - half_w)),
        max(0, math.floor(cy - half_h)),
        min(width, math.ceil(cx + half_w)),
        min(height, math.ceil(cy + half_h)),
    )


def _to_tensor01(rgb: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div(PIXEL_LEVELS).to(device)


def _to_uint8(images01: Tensor) -> np.ndarray:
    return (images01[0] * PIXEL_LEVELS).round().clamp(0, PIXEL_LEVELS).byte().permute(1, 2, 0).cpu().numpy()


Perturb = Callable[[PixelAttack, Tensor, Tensor, IdentityReference, "Tensor | None"], Tensor]
"""Runs an attack on one region: ``(attack, images01, landmarks5, reference, mask) -> adversarial images``."""


def protect_photo_pixels(
    rgb: np.ndarray,
    faces: Sequence[Face],
    attack: PixelAttack,
    *,
    target: Mapping[str, Tensor] | None = None,
    region_scale: float = DEFAULT_REGION_SCALE,
    mask_scale: float | None = 1.0,
    perturb: Perturb | None = None,
) -> np.ndarray:
    """Protect every face of a full uint8 photo with ``attack``; returns a new uint8 photo within the budget.

    Each face is attacked on the region ``region_scale`` × its box, with its own source embeddings taken from the
    clean photo (and ``target`` embeddings, per attacked model, for impersonation). With ``mask_scale`` only pixels
    inside the box enlarged that much may change (None: the whole region). The float result is quantised to uint8
    before it is written back, and the finished photo is clipped to ``round(eps_255)`` levels around ``rgb``, so
    faces whose regions overlap still respect the budget. ``perturb`` runs the attack's steps (default: its own
    loop; :func:`facecloak.stages.pixel_attack.trainer_perturb` runs them through a Lightning Trainer).
    """
    perturb = perturb or (lambda attack, *inputs: attack.perturb(*inputs))
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"protect_photo_pixels needs an RGB uint8 photo (H, W, 3), got {getattr(rgb, 'shape', rgb)}")
    if not faces:
        raise NoFaceError("no faces given to protect; detect them first (facecloak.faces.crops.detect_with_config)")
    size = (int(rgb.shape[0]), int(rgb.shape[1]))
    out = rgb.copy()
    for face in faces:
        x0, y0, x1, y1 = scaled_box(face.box, region_scale, size)
        region = _to_tensor01(out[y0:y1, x0:x1], attack.device)
        landmarks = torch.as_tensor(np.asarray(face.landmarks5) - [x0, y0], dtype=torch.float32)[None]
        with torch.no_grad():
            clean_region = _to_tensor01(rgb[y0:y1, x0:x1], attack.device)
            source = {k: v.detach() for k, v in attack.loss.embed(clean_region, landmarks.to(attack.device)).items()}
        reference = IdentityReference(source=source, target=dict(target) if target is not None else None)
        mask = None
        if mask_scale is not None:
            mx0, my0, mx1, my1 = scaled_box(face.box, mask_scale, size)
            mask = torch.zeros(1, 1, y1 - y0, x1 - x0, dtype=torch.bool)
            mask[..., max(my0 - y0, 0) : my1 - y0, max(mx0 - x0, 0) : mx1 - x0] = True
        adv = perturb(attack, region, landmarks, reference, mask)
        out[y0:y1, x0:x1] = _to_uint8(adv)
    budget = math.floor(attack.config.eps_255 + 0.5)  # what rounding a float within eps_255 of an integer can reach
    low = np.clip(rgb.astype(np.int16) - budget, 0, 255)
    high = np.clip(rgb.astype(np.int16) + budget, 0, 255)
    return np.clip(out.astype(np.int16), low, high).astype(np.uint8)
