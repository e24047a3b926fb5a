"""CLIP2Protect's makeup objective as published in its code (``search.clip_loss: infonce``).

The reference (``criteria/nce_loss.py``) scores the edit with InfoNCE at temperature 0.1 on directions in CLIP space,
all of unit length (``E_I`` and ``E_T`` are unit image and text embeddings, ``T`` the 79 prompt templates):

- query: the image direction ``E_I(aug(x)) − E_I(x_source)``;
- positives: the text direction ``mean_T(E_T(prompt) − E_T("face"))`` and ``mean_T E_T(prompt) − E_I(x_source)``;
- negatives: ``E_T(template("face")) − E_I(x_source)`` for every template;
- loss: cross-entropy of ``[q·p, q·n_1 … q·n_79] / 0.1`` toward the positive, averaged over both positives and every
  augmented view.

The reference re-encodes the 2 × 79 templates twice per step; they do not change, so they are encoded once here.

Two input details are kept switchable (``search.clip_input_range``):

- ``official``: the reference's transform starts with ``Normalize(-1, 2)`` meant for [-1, 1] images but is fed
  [0, 1] renders, so CLIP sees them squeezed into [0.5, 1]; then bicubic (antialiased) resize of the shorter side to
  224, centre crop and CLIP's mean/std, with no clamp;
- ``fixed``: [0, 1] straight into the resize (clamped, as on 8-bit images) and CLIP's mean/std.

The augmentation is torchvision's ``RandomPerspective(distortion_scale=0.5, p=1, fill=0)`` on the render at its own
resolution, before CLIP's resize, as in the reference; its corners are drawn exactly as torchvision draws them but
from a per-image ``torch.Generator``, so a fixed seed reproduces a reference run whose draws use the same stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facecloak.errors import ConfigError
from facecloak.losses.clip_loss import (
    DEFAULT_DISTORTION_SCALE,
    DEFAULT_SOURCE_TEXT,
    ClipEncoders,
    ClipPreprocessing,
    Tokenizer,
    resize_for_clip,
)
from facecloak.runtime.precision import full_precision, widened


@contextmanager
def reference_attention_kernels() -> Iterator[None]:
    """Attention without PyTorch's inference fast path, as in the reference (its CLIP weights require grad).

    The fast path (taken under ``no_grad`` for frozen weights) rounds differently; with it off, text and image
    embeddings equal the reference's bit for bit on the same weights.
    """
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


INFONCE_TEMPERATURE = 0.1
"""Temperature of the reference's InfoNCE (``criteria/infonce.py`` default)."""

CLIP_INPUT_RANGES = ("official", "fixed")


def torchvision_perspective_points(
    width: int, height: int, distortion_scale: float, generator: torch.Generator | None
) -> tuple[list[list[int]], list[list[int]]]:
    """Start and end corners as ``torchvision.transforms.RandomPerspective.get_params`` draws them, from ``generator``.

    Same draws in the same order (integer offsets, top-left, top-right, bottom-right, bottom-left).
    """
    half_height, half_width = height // 2, width // 2
    dx, dy = int(distortion_scale * half_width), int(distortion_scale * half_height)

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high, size=(1,), generator=generator).item())

    top_left = [draw(0, dx + 1), draw(0, dy + 1)]
    top_right = [draw(width - dx - 1, width), draw(0, dy + 1)]
    bottom_right = [draw(width - dx - 1, width), draw(height - dy - 1, height)]
    bottom_left = [draw(0, dx + 1), draw(height - dy - 1, height)]
    start = [[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]]
    return start, [top_left, top_right, bottom_right, bottom_left]


def torchvision_perspective(images01: Tensor, distortion_scale: float, generator: torch.Generator | None) -> Tensor:
    """Torchvision's random perspective (bilinear, black fill) of ``[1, C, H, W]``, differentiable in the image."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    height, width = images01.shape[-2:]
    start, end = torchvision_perspective_points(width, height, distortion_scale, generator)
    fill = [0.0] * images01.shape[1]
    return TF.perspective(images01, start, end, InterpolationMode.BILINEAR, fill)


class InfoNCECLIPLoss(nn.Module):
    """The reference's InfoNCE CLIP loss with the text side encoded once; CLIP is frozen in eval mode."""

    source_text_features: Tensor
    target_text_mean: Tensor
    text_direction: Tensor
    mean: Tensor
    std: Tensor

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        prompt: str,
        templates: Sequence[str],
        preprocessing: ClipPreprocessing,
        source_text: str = DEFAULT_SOURCE_TEXT,
        distortion_scale: float | None = DEFAULT_DISTORTION_SCALE,
        num_augmentations: int = 1,
        input_range: str = "fixed",
        temperature: float = INFONCE_TEMPERATURE,
    ) -> None:
        super().__init__()
        if input_range not in CLIP_INPUT_RANGES:
            raise ConfigError(f"search.clip_input_range must be one of {CLIP_INPUT_RANGES}, got '{input_range}'")
        if not templates or any("{}" not in t for t in templates):
            raise ConfigError("every CLIP prompt template must contain '{}' where the text goes")
        if num_augmentations < 1:
            raise ConfigError(f"search.clip_num_augmentations must be >= 1, got {num_augmentations}")
        self.model = model.eval().requires_grad_(False)
        self.preprocessing = preprocessing
        self.prompt = prompt
        self.distortion_scale = distortion_scale
        self.num_augmentations = num_augmentations
        self.input_range = input_range
        self.temperature = temperature
        source, target = self._encode(tokenizer, source_text, templates), self._encode(tokenizer, prompt, templates)
        direction = (target - source).mean(dim=0, keepdim=True)
        self.register_buffer("source_text_features", source, persistent=False)
        self.register_buffer("target_text_mean", target.mean(dim=0, keepdim=True), persistent=False)
        self.register_buffer("text_direction", direction / direction.norm(dim=-1, keepdim=True), persistent=False)
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def _encode(self, tokenizer: Tokenizer, text: str, templates: Sequence[str]) -> Tensor:
        device = next(self.model.parameters()).device
        tokens = tokenizer([t.format(text) for t in templates]).to(device)
        with reference_attention_kernels():
            features = cast(ClipEncoders, self.model).encode_text(tokens).float()
        return features / features.norm(dim=-1, keepdim=True)

    def train(self, mode: bool = True) -> InfoNCECLIPLoss:
        """The CLIP network stays in eval mode whatever the surrounding module does."""
        super().train(False)
        return self

    def preprocess(self, images01: Tensor) -> Tensor:
        """What CLIP's image encoder sees (see the module docstring for the two input ranges)."""
        if self.input_range == "official":
            x = (images01 + 1.0) / 2.0  # the reference's Normalize(-1, 2) on [0, 1] input
            size = self.preprocessing.size
            height, width = x.shape[-2:]
            scale = size / min(height, width)
            new_h, new_w = max(size, int(height * scale)), max(size, int(width * scale))
            x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
            top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
            x = x[..., top : top + size, left : left + size]
        else:
            x = resize_for_clip(images01, self.preprocessing.size)
        return (x - self.mean) / self.std

    def image_features(self, images01: Tensor) -> Tensor:
        """Unit image embeddings ``[B, E]``."""
        with reference_attention_kernels():
            features = cast(ClipEncoders, self.model).encode_image(self.preprocess(images01)).float()
        return features / features.clone().norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def source_features(self, source01: Tensor) -> Tensor:
        """Unit embeddings ``[B, E]`` of the un-edited renders (never augmented), computed once per run."""
        return self.image_features(source01)

    def augment(self, images01: Tensor, generators: Sequence[torch.Generator | None] | None) -> Tensor:
        """``[B·A, C, H, W]``: ``A`` augmented views of each image (image-major), or the images themselves."""
        if self.distortion_scale is None:
            return images01
        gens = list(generators) if generators is not None else [None] * images01.shape[0]
        views = [
            torchvision_perspective(images01[i : i + 1], self.distortion_scale, gens[i])
            for i in range(images01.shape[0])
            for _ in range(self.num_augmentations)
        ]
        return torch.cat(views)

    def forward(
        self, images01: Tensor, source_features: Tensor, generators: Sequence[torch.Generator | None] | None = None
    ) -> Tensor:
        """Per-image InfoNCE loss ``[B]``, the mean over both positives and every view (as the reference)."""
        batch = images01.shape[0]
        if source_features.shape[0] != batch:
            raise ConfigError(f"one source embedding per image: {batch} images, {source_features.shape[0]} sources")
        views = self.image_features(self.augment(images01, generators)).view(batch, -1, source_features.shape[-1])
        with full_precision():  # directions are differences of similar embeddings, then cosines: fp32 under autocast
            views, source_features = widened(views), widened(source_features)
            return torch.stack([self._infonce(views[i], source_features[i : i + 1]) for i in range(batch)])

    def _infonce(self, views: Tensor, source: Tensor) -> Tensor:
        """The reference's ``infonce_loss`` for one image: ``views`` ``[A, E]``, ``source`` ``[1, E]``."""
        query = F.normalize(views - source, dim=-1)
        positive_text = self.text_direction.expand_as(query)
        positive_image = F.normalize(self.target_text_mean - source, dim=-1).expand_as(query)
        negatives = F.normalize(self.source_text_features - source, dim=-1)
        queries = query.repeat(2, 1)
        positives = torch.cat([positive_text, positive_image])
        positive_logit = (queries * positives).sum(dim=1, keepdim=True)
        logits = torch.cat([positive_logit, queries @ negatives.T], dim=1) / self.temperature
        labels = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits, labels)


class _InfoNCESettings(Protocol):
    @property
    def makeup_prompt(self) -> str: ...
    @property
    def source_text(self) -> str: ...
    @property
    def clip_distortion_scale(self) -> float | None: ...
    @property
    def clip_num_augmentations(self) -> int: ...
    @property
    def clip_input_range(self) -> str: ...


def load_infonce_loss(
    settings: _InfoNCESettings, templates: Sequence[str], device: str | torch.device = "cpu"
) -> InfoNCECLIPLoss:
    """The reference's InfoNCE makeup loss with the real OpenAI ViT-B/32 weights (``search.*`` settings)."""
    from facecloak.losses.clip_loss import load_clip_model

    model, tokenizer = load_clip_model(device)
    return InfoNCECLIPLoss(
        model,
        tokenizer,
        settings.makeup_prompt,
        templates,
        ClipPreprocessing.from_registry(),
        settings.source_text,
        settings.clip_distortion_scale,
        settings.clip_num_augmentations,
        settings.clip_input_range,
    )
