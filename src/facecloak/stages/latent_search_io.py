"""What the adversarial latent search takes and gives, checked before anything is built (no Lightning here).

The frozen networks it differentiates through, its per-image result, the per-image random streams, and the checks
that its inputs agree (shapes, one unique id per image, an identity objective that matches the config).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from facecloak.errors import ConfigError
from facecloak.losses.clip_infonce import InfoNCECLIPLoss
from facecloak.losses.clip_loss import CLIP_TEMPLATE_SETS, DirectionalCLIPLoss, load_clip_loss
from facecloak.losses.identity import AdversarialIdentityLoss, IdentityReference
from facecloak.models.stylegan2 import Generator
from facecloak.stages.latent_search_config import LatentSearchConfig

NOT_HYPERPARAMETERS = (
    "generator",
    "pivots",
    "noise",
    "landmarks5",
    "identity_loss",
    "reference",
    "config",
    "clip_factory",
    "anchor",
    "change_mask",
)
"""Arguments of the search module kept out of its saved hyperparameters (networks and tensors; the config is saved
as a plain dict)."""

ClipObjective = DirectionalCLIPLoss | InfoNCECLIPLoss
ClipFactory = Callable[[LatentSearchConfig], ClipObjective]


def load_clip_for(config: LatentSearchConfig) -> ClipObjective:
    """The real CLIP makeup loss (OpenAI ViT-B/32 from the registry) for a stage-2 config."""
    templates = CLIP_TEMPLATE_SETS[config.clip_templates]
    if config.clip_loss == "infonce":
        from facecloak.losses.clip_infonce import load_infonce_loss

        return load_infonce_loss(config, templates)
    return load_clip_loss(
        config.makeup_prompt,
        config.source_text,
        config.clip_distortion_scale,
        config.clip_num_augmentations,
        templates=templates,
    )


def build_clip(config: LatentSearchConfig, clip_factory: ClipFactory | None) -> ClipObjective | None:
    """The CLIP makeup loss when ``lambda_clip > 0`` (never built otherwise), checked to target the config's prompt."""
    if config.lambda_clip <= 0:
        return None
    clip = (clip_factory or load_clip_for)(config)
    if clip.prompt is not None and clip.prompt != config.makeup_prompt:
        raise ConfigError(f"search.makeup_prompt={config.makeup_prompt!r} but the CLIP loss targets {clip.prompt!r}")
    return clip


def image_rng(seed: int, image_id: str, stream: str) -> torch.Generator:
    """A CPU random stream that depends only on the run seed, the image id and the stream's purpose."""
    return torch.Generator().manual_seed((seed << 32) | zlib.crc32(f"{stream}/{image_id}".encode()))


@dataclass
class SearchResult:
    """Stage-2 output for one photo."""

    image_id: str
    wplus: Tensor
    """Final W+ code ``[n_latent, style_dim]``."""
    noise: list[Tensor]
    """Final noise maps ``[1, 1, r, r]`` in layer order."""
    image: Tensor
    """Protected render ``[3, size, size]`` in [0, 1] (float; quantise only after any success check)."""
    similarities_before: dict[str, dict[str, float]]
    """``{"source"|"target": {model: cosine}}`` of the pivot render."""
    similarities_after: dict[str, dict[str, float]]
    success: bool
    """Every attacked model passes its threshold (with the margin) on the final render."""
    stopped_at: int
    """Step at which the image passed and was frozen; -1 if it ran every step."""


@dataclass
class FrozenNetworks:
    """Networks the search differentiates through but never trains; a plain container, so not in checkpoints."""

    generators: list[Generator]
    identity: AdversarialIdentityLoss
    clip: ClipObjective | None
    reference: IdentityReference

    def to(self, device: torch.device) -> FrozenNetworks:
        """Move every network (kept frozen, in eval mode) and the reference embeddings to ``device``."""
        for net in (*self.generators, self.identity, self.clip):
            if net is not None:
                net.to(device).eval().requires_grad_(False)
        self.reference = self.reference.to(device)
        return self


def per_image(sims: Mapping[str, Mapping[str, Tensor]], i: int) -> dict[str, dict[str, float]]:
    """One image's similarities as plain floats, ``{"source"|"target": {model: value}}``."""
    return {key: {name: float(v[i]) for name, v in per_model.items()} for key, per_model in sims.items()}


def check_inputs(
    generators: list[Generator], pivots: Tensor, noise: Sequence[Tensor], landmarks5: Tensor, image_ids: list[str]
) -> None:
    """Shapes that must agree before anything is built, with messages that say which input is off."""
    batch = pivots.shape[0]
    first = generators[0]
    if len(generators) not in (1, batch):
        raise ConfigError(f"give one generator for all images or one per image: {len(generators)} for {batch} images")
    if any(g.config != first.config for g in generators):
        raise ConfigError("all per-image generators must share one architecture (GeneratorConfig)")
    if pivots.ndim != 3 or tuple(pivots.shape[1:]) != (first.n_latent, first.style_dim):
        raise ConfigError(f"pivots must be [B, {first.n_latent}, {first.style_dim}], got {list(pivots.shape)}")
    if len(noise) != len(first.noise_shapes) or any(
        n.ndim != 4 or n.shape[0] not in (1, batch) or tuple(n.shape[1:]) != s[1:]
        for n, s in zip(noise, first.noise_shapes)
    ):
        raise ConfigError(
            f"noise must hold {len(first.noise_shapes)} maps shaped [B or 1, 1, r, r] (r = 4, 8, 8, 16, …), "
            f"got {[list(n.shape) for n in noise]}"
        )
    if tuple(landmarks5.shape) != (batch, 5, 2):
        raise ConfigError(f"landmarks5 must be [{batch}, 5, 2] (generator pixels), got {list(landmarks5.shape)}")
    if len(image_ids) != batch or len(set(image_ids)) != batch:
        raise ConfigError(f"need one unique image id per image: {batch} images, ids {image_ids}")


def check_anchor(anchor: Tensor | None, change_mask: Tensor | None, batch: int) -> None:
    """An anchor holds one image per pivot; a change mask needs an anchor and one mask per image."""
    if anchor is not None and anchor.shape[0] != batch:
        raise ConfigError(f"anchor images {tuple(anchor.shape)} do not match the batch of {batch} pivots")
    if change_mask is not None and (anchor is None or change_mask.shape[0] != batch):
        raise ConfigError("change_mask needs an anchor and one mask [B, 1, H, W] per image")


def check_identity(
    identity: AdversarialIdentityLoss,
    reference: IdentityReference,
    thresholds: Mapping[str, float],
    config: LatentSearchConfig,
    batch: int,
) -> None:
    """The identity objective must match the config and hold a reference and threshold for every attacked model."""
    if identity.mode != config.identity_mode:
        raise ConfigError(f"search.identity_mode={config.identity_mode!r} but the identity loss is {identity.mode!r}")
    missing = [name for name in identity.names if name not in thresholds]
    if missing:
        raise ConfigError(f"no verification threshold for attacked models {missing}; pass thresholds for each")
    for key, embeddings in (("source", reference.source), ("target", reference.target)):
        if embeddings is None:
            continue
        for name in identity.names:
            if name not in embeddings or embeddings[name].ndim != 2 or embeddings[name].shape[0] not in (1, batch):
                raise ConfigError(f"reference.{key} needs a [B or 1, D] embedding from '{name}' for {batch} images")


def collect_results(
    image_ids: Sequence[str],
    wplus: Tensor,
    noise: Sequence[Tensor],
    images: Tensor,
    similarities: tuple[Mapping[str, Mapping[str, Tensor]], Mapping[str, Mapping[str, Tensor]]],
    success: Tensor,
    stopped_at: Tensor,
) -> list[SearchResult]:
    """Split the batch's final state (on the CPU) into one :class:`SearchResult` per image, in input order."""
    before, after = similarities
    return [
        SearchResult(
            image_id=image_id,
            wplus=wplus[i],
            noise=[n[i : i + 1] for n in noise],
            image=images[i],
            similarities_before=per_image(before, i),
            similarities_after=per_image(after, i),
            success=bool(success[i]),
            stopped_at=int(stopped_at[i]),
        )
        for i, image_id in enumerate(image_ids)
    ]
