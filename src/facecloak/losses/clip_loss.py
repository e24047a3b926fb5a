"""CLIP2Protect's makeup objective: a directional CLIP loss (Gal et al., StyleGAN-NADA) toward a makeup prompt.

The edit from the un-protected face ``x_source`` to the protected face ``x`` should point, in CLIP's joint embedding
space, the way the text moves from "face" to the makeup prompt (e.g. "red lipstick"):

- text direction ``t = mean over templates of (E_T(template(prompt)) - E_T(template("face")))``, normalised, with
  every text embedding unit-normalised first and the prompts put into the ImageNet templates of CLIP's zero-shot
  evaluation (averaging over templates makes the direction less sensitive to wording);
- image direction ``d = E_I(aug(x)) - E_I(x_source)`` of unit-normalised image embeddings;
- loss ``1 - cos(d, t)``, per image: 0 when the edit follows the text, 2 when it opposes it. When ``d`` is (up to
  the encoder's float noise) zero — ``x`` equals ``x_source`` and there is no augmentation — there is no edit to
  judge: the cosine is defined as 0, so the loss is 1, with a zero gradient. (A ``1/‖d‖`` gradient there would be
  enormous and, through Adam's second moment, would stall every later step.)

Images arrive as tensors in [0, 1]. CLIP's preprocessing is applied exactly once: resize of the shorter side to the
network input (bicubic, antialiased) and centre crop, then the CLIP mean/std. The reference implementation converts
from [-1, 1] to [0, 1] a second time (its CLIP transform starts with ``Normalize(-1, 2)`` but is fed images already
mapped to [0, 1], which squeezes them into [0.5, 1] before CLIP's own normalisation); here each step happens once.

The paper's random-perspective augmentation (torchvision ``RandomPerspective(distortion_scale=0.5, p=1, fill=0)``
in the reference) is redone with kornia on the resized image, before normalisation so the fill is black, and draws
its corners from a per-image ``torch.Generator`` so one image's augmentation never depends on which images share
its batch.

The OpenAI ViT-B/32 weights are loaded from the local registry file only (:func:`load_clip_model`); the encoders
are injected into :class:`DirectionalCLIPLoss`, so tests run the same code on a tiny random open_clip model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facecloak.errors import ConfigError, CorruptWeightsError
from facecloak.runtime.precision import full_precision, widened

CLIP_REGISTRY_NAME = "clip_vit_b32_openai"
"""Registry entry of OpenAI's ViT-B/32, the CLIP model CLIP2Protect uses (``clip.load("ViT-B/32")``)."""

OPEN_CLIP_ARCHITECTURE = "ViT-B-32"
"""open_clip's name for the architecture; with OpenAI weights it must run QuickGELU (see :func:`load_clip_model`)."""

OPENAI_JIT_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
"""Integer buffers of OpenAI's TorchScript archive that are not weights (open_clip drops the same keys)."""

DEFAULT_SOURCE_TEXT = "face"
"""Neutral text the direction starts from (CLIP2Protect ``--source_text``)."""

DEFAULT_DISTORTION_SCALE = 0.5
"""Random-perspective strength of the reference (``transforms.RandomPerspective(distortion_scale=0.5)``)."""

DIRECTION_MIN_NORM = 1e-4
"""Image directions shorter than this count as "no edit" (loss 1, no gradient). Differences of unit CLIP embeddings
of one image computed twice are float noise (~1e-7; attention kernels differ with and without autograd), while any
visible edit moves them by 1e-2 or more."""

# The 80 prompt templates of CLIP's ImageNet zero-shot evaluation (Radford et al. 2021, "Prompt_Engineering_for_
# ImageNet" notebook), which StyleGAN-NADA and CLIP2Protect average text embeddings over.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

EXTRA_TEMPLATE = "a photo of many {}."
"""The one template of CLIP's list that CLIP2Protect's ``criteria/text_templates.py`` leaves out."""

CLIP_TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "official79": tuple(t for t in IMAGENET_TEMPLATES if t != EXTRA_TEMPLATE),
    "imagenet80": IMAGENET_TEMPLATES,
}
"""``search.clip_templates``: CLIP2Protect's 79 templates (same order), or CLIP's full list of 80."""

Tokenizer = Callable[[Sequence[str]], Tensor]


class ClipEncoders(Protocol):
    """The two encoders the loss uses; open_clip's ``CLIP`` (real or tiny) provides both."""

    def encode_image(self, image: Tensor) -> Tensor:
        """Image embeddings ``[B, E]`` of normalised ``[B, 3, S, S]`` input."""
        ...

    def encode_text(self, text: Tensor) -> Tensor:
        """Text embeddings ``[B, E]`` of token ids ``[B, context]``."""
        ...


# --- preprocessing and augmentation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipPreprocessing:
    """The input CLIP weights expect: a square ``size`` crop, normalised by ``mean``/``std`` from [0, 1]."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.size < 1 or len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"ClipPreprocessing needs size >= 1 and three means and positive stds, got {self}")

    @classmethod
    def from_registry(cls, name: str = CLIP_REGISTRY_NAME) -> ClipPreprocessing:
        """The preprocessing recorded with the weights in the registry (the single source of these numbers)."""
        from facecloak.registry.entries import get_entry

        pre = get_entry(name).preprocessing
        if pre.input_size is None or pre.input_size[0] != pre.input_size[1] or pre.interpolation != "bicubic":
            raise ConfigError(f"registry entry '{name}' must declare a square bicubic input_size for CLIP")
        return cls(size=int(pre.input_size[0]), mean=tuple(pre.mean), std=tuple(pre.std))


def resize_for_clip(images01: Tensor, size: int) -> Tensor:
    """Shorter side to ``size`` (bicubic, antialiased), centre crop to a square, clamp to [0, 1].

    The clamp matches CLIP's reference pipeline, where bicubic resampling happens on 8-bit images and cannot
    overshoot; it also keeps the perspective fill (0) the darkest value.
    """
    height, width = images01.shape[-2:]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    if (new_h, new_w) != (height, width):
        images01 = F.interpolate(images01, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return images01[..., top : top + size, left : left + size].clamp(0.0, 1.0)


def square_corners(size: int) -> Tensor:
    """Pixel-centre corners ``[4, 2]`` (top-left, top-right, bottom-right, bottom-left) of a square image."""
    last = float(size - 1)
    return torch.tensor([[0.0, 0.0], [last, 0.0], [last, last], [0.0, last]], dtype=torch.float64)


def perspective_corners(size: int, distortion_scale: float, generator: torch.Generator | None) -> Tensor:
    """Random destination corners ``[4, 2]`` (tl, tr, br, bl) of a square image, as torchvision's RandomPerspective.

    Each corner moves inward by up to ``distortion_scale`` times half the side along each axis (continuous
    offsets rather than torchvision's integer ones).
    """
    half = (size - 1) / 2.0
    offsets = torch.rand(4, 2, generator=generator, dtype=torch.float64) * distortion_scale * half
    inward = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]], dtype=torch.float64)
    return square_corners(size) + inward * offsets


def random_perspective(
    images01: Tensor, distortion_scale: float, generators: Sequence[torch.Generator | None] | None = None
) -> Tensor:
    """Warp each square image by its own random perspective, zero (black) fill outside, differentiably (kornia)."""
    batch, _, height, width = images01.shape
    if height != width:
        raise ConfigError(f"random_perspective expects square images, got {height}×{width}")
    gens = list(generators) if generators is not None else [None] * batch
    if len(gens) != batch:
        raise ConfigError(f"random_perspective needs one generator per image: {batch} images, {len(gens)} generators")
    start = square_corners(height)
    end = torch.stack([perspective_corners(height, distortion_scale, g) for g in gens])
    matrix = kornia.geometry.transform.get_perspective_transform(start.expand(batch, 4, 2), end)
    return kornia.geometry.transform.warp_perspective(
        images01, matrix.to(images01), dsize=(height, width), padding_mode="zeros", align_corners=True
    )


# --- text and image directions ---------------------------------------------------------------------------------------


def directional_loss(image_direction: Tensor, text_direction: Tensor) -> Tensor:
    """``1 - cos(image_direction, text_direction)`` per row; a (near-)zero image direction gives 1 and no gradient."""
    text_unit = F.normalize(text_direction.to(image_direction), dim=-1)
    norm = image_direction.norm(dim=-1)
    cosine = (image_direction * text_unit).sum(dim=-1) / norm.clamp_min(DIRECTION_MIN_NORM)
    return 1.0 - torch.where(norm > DIRECTION_MIN_NORM, cosine, torch.zeros_like(cosine))


@torch.no_grad()
def text_direction(
    model: nn.Module,
    tokenizer: Tokenizer,
    target_text: str,
    source_text: str = DEFAULT_SOURCE_TEXT,
    templates: Sequence[str] = IMAGENET_TEMPLATES,
) -> Tensor:
    """Unit direction ``[E]`` from ``source_text`` to ``target_text``, averaged over prompt templates."""
    if not templates or any("{}" not in t for t in templates):
        raise ConfigError("every CLIP prompt template must contain '{}' where the text goes")
    device = next(model.parameters()).device

    def embed(text: str) -> Tensor:
        tokens = tokenizer([t.format(text) for t in templates]).to(device)
        return F.normalize(cast(ClipEncoders, model).encode_text(tokens).float(), dim=-1)

    direction = (embed(target_text) - embed(source_text)).mean(dim=0)
    if float(direction.norm()) <= DIRECTION_MIN_NORM:
        raise ConfigError(f"CLIP prompt '{target_text}' embeds like '{source_text}'; choose a different makeup prompt")
    return F.normalize(direction, dim=0)


class DirectionalCLIPLoss(nn.Module):
    """Per-image directional CLIP loss toward a fixed text direction; the CLIP network is frozen in eval mode."""

    direction: Tensor
    mean: Tensor
    std: Tensor

    def __init__(
        self,
        model: nn.Module,
        direction: Tensor,
        preprocessing: ClipPreprocessing,
        distortion_scale: float | None = DEFAULT_DISTORTION_SCALE,
        num_augmentations: int = 1,
        prompt: str | None = None,
    ) -> None:
        super().__init__()
        if distortion_scale is not None and not 0.0 < distortion_scale <= 1.0:
            raise ConfigError(
                f"CLIP distortion_scale must be in (0, 1] or None (no augmentation), got {distortion_scale}"
            )
        if num_augmentations < 1:
            raise ConfigError(f"CLIP num_augmentations must be >= 1, got {num_augmentations}")
        self.model = model.eval().requires_grad_(False)
        self.preprocessing = preprocessing
        self.distortion_scale = distortion_scale
        self.num_augmentations = num_augmentations if distortion_scale is not None else 1
        self.prompt = prompt
        self.register_buffer("direction", F.normalize(direction.detach().float().flatten(), dim=0), persistent=False)
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_prompt(
        cls,
        model: nn.Module,
        tokenizer: Tokenizer,
        prompt: str,
        source_text: str = DEFAULT_SOURCE_TEXT,
        templates: Sequence[str] = IMAGENET_TEMPLATES,
        preprocessing: ClipPreprocessing | None = None,
        distortion_scale: float | None = DEFAULT_DISTORTION_SCALE,
        num_augmentations: int = 1,
    ) -> DirectionalCLIPLoss:
        """Build the loss for a makeup prompt (the text direction is computed once here)."""
        direction = text_direction(model.eval(), tokenizer, prompt, source_text, templates)
        return cls(
            model,
            direction,
            preprocessing or ClipPreprocessing.from_registry(),
            distortion_scale,
            num_augmentations,
            prompt,
        )

    def train(self, mode: bool = True) -> DirectionalCLIPLoss:
        """The CLIP network stays in eval mode whatever the surrounding module does."""
        super().train(False)
        return self

    def encode_image(self, normalised: Tensor) -> Tensor:
        """The CLIP image encoder on already preprocessed input."""
        return cast(ClipEncoders, self.model).encode_image(normalised)

    def preprocess(self, images01: Tensor) -> Tensor:
        """Resize/crop to the CLIP input and normalise, once: what ``encode_image`` sees."""
        return (resize_for_clip(images01, self.preprocessing.size) - self.mean) / self.std

    def image_features(self, images01: Tensor, generators: Sequence[torch.Generator | None] | None = None) -> Tensor:
        """Unit image embeddings ``[B, A, E]`` of ``A`` augmented views per image (one plain view without augmentation).

        ``generators`` (one per image) make each image's augmentation reproducible on its own.
        """
        x = resize_for_clip(images01, self.preprocessing.size)
        if self.distortion_scale is not None:
            x = torch.stack(
                [random_perspective(x, self.distortion_scale, generators) for _ in range(self.num_augmentations)], 1
            ).flatten(0, 1)
        features = self.encode_image((x - self.mean) / self.std)
        return F.normalize(features.float(), dim=-1).view(images01.shape[0], -1, features.shape[-1])

    @torch.no_grad()
    def source_features(self, source01: Tensor) -> Tensor:
        """Unit embeddings ``[B, E]`` of the un-edited images (never augmented), computed once per run."""
        return F.normalize(self.encode_image(self.preprocess(source01)).float(), dim=-1)

    def forward(
        self, images01: Tensor, source_features: Tensor, generators: Sequence[torch.Generator | None] | None = None
    ) -> Tensor:
        """Per-image loss ``[B]``: ``1 - cos(E_I(aug(x)) - E_I(x_source), text direction)``, mean over views."""
        if source_features.shape[0] != images01.shape[0]:
            raise ConfigError(
                f"one source embedding per image: {images01.shape[0]} images, {source_features.shape[0]} sources"
            )
        features = self.image_features(images01, generators)
        with full_precision():  # a difference of two similar embeddings, then a cosine: fp32 under autocast
            image_direction = widened(features) - widened(source_features)[:, None]
            return directional_loss(image_direction, self.direction.to(image_direction)).mean(dim=1)


# --- the real weights ------------------------------------------------------------------------------------------------


def load_clip_model(device: str | torch.device = "cpu") -> tuple[nn.Module, Tokenizer]:
    """OpenAI ViT-B/32 from the registry's local file (never downloaded) and its tokenizer.

    OpenAI ships a TorchScript archive, which ``torch.load(weights_only=True)`` (open_clip's loader) refuses, so
    the weights are read with ``torch.jit.load`` (TorchScript runs no Python; the file's SHA-256 is verified by
    the registry first) and copied strictly into open_clip's ``ViT-B-32``. OpenAI trained with QuickGELU, which
    open_clip's plain ``ViT-B-32`` config does not use, hence ``force_quick_gelu``.
    """
    import open_clip

    from facecloak.registry.store import resolve_one

    path = resolve_one(CLIP_REGISTRY_NAME)
    model = open_clip.create_model(OPEN_CLIP_ARCHITECTURE, pretrained=None, force_quick_gelu=True)
    try:
        state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except RuntimeError as err:
        raise CorruptWeightsError(
            f"{path} is not OpenAI's TorchScript CLIP archive ({err}); delete it and fetch '{CLIP_REGISTRY_NAME}' again"
        ) from err
    for key in OPENAI_JIT_METADATA_KEYS:
        state.pop(key, None)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.to(device).eval().requires_grad_(False), open_clip.get_tokenizer(OPEN_CLIP_ARCHITECTURE)


def load_clip_loss(
    prompt: str,
    source_text: str = DEFAULT_SOURCE_TEXT,
    distortion_scale: float | None = DEFAULT_DISTORTION_SCALE,
    num_augmentations: int = 1,
    device: str | torch.device = "cpu",
    templates: Sequence[str] = IMAGENET_TEMPLATES,
) -> DirectionalCLIPLoss:
    """The directional makeup loss with the real OpenAI ViT-B/32 weights."""
    model, tokenizer = load_clip_model(device)
    return DirectionalCLIPLoss.from_prompt(
        model,
        tokenizer,
        prompt,
        source_text,
        templates,
        distortion_scale=distortion_scale,
        num_augmentations=num_augmentations,
    )
