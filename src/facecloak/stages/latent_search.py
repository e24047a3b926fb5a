"""CLIP2Protect stage 2: adversarial latent search (Shamshad et al., CVPR 2023, ``adversarial_optimization.py``).

Starting from each photo's stage-1 pivot (W+ code and noise maps) and its pivot-tuned generator, the fine W+ slots
and the coarse noise maps are optimised so that the rendered face fools the attacked face-recognition ensemble
while looking like the same photo with makeup:

    loss_i = λ_adv · L_adv(x_i) + λ_clip · L_clip(x_i) + λ_lat · ‖w_i − w0_i‖²

- ``L_adv`` (:class:`~facecloak.losses.identity.AdversarialIdentityLoss`) on the face region of the render, cropped
  differentiably onto each model's template from per-image five-point landmarks given in generator pixels (e.g.
  detected once on the pivot reconstruction); optionally through a randomly drawn differentiable degradation
  (JPEG/resize/blur, :class:`~facecloak.evaluation.robustness.RandomDegradation`) for expectation over transformation;
- ``L_clip`` (:class:`~facecloak.losses.clip_loss.DirectionalCLIPLoss`): the edit from the pivot reconstruction
  follows the CLIP text direction "face" → makeup prompt, on randomly perspective-warped views;
- the latent term keeps the code near its pivot (sum of squares over the optimised slots, as the reference).

Defaults are the reference's: λ = 0.7 / 0.3 / 0.01, Adam at 0.01 for 50 steps, noise maps below 512 px optimised,
W+ slots 8–17 of 18 (the reference zeroes the gradient of slots 0–7). For other generators the default slots are
the second half of the W+ slots plus the one just before it (``n_latent // 2 - 1`` onward), which is exactly 8–17
for 18 slots. Slots outside the set are not parameters at all: W+ is rebuilt every step from the pivot and the
trainable slots, so they keep the pivot's values bit for bit.

Images are independent. Each has its own latents, noise, generator (or one shared generator), reference embeddings,
random streams (seeded from the run seed and the image id, so an image's run does not depend on its batch-mates)
and early stop: once every attacked model passes its threshold with the margin, the image's latents and noise are
frozen at the values that passed (restored after every later optimizer step, since Adam's momentum would keep
moving them) and its loss leaves the sum. The run ends when every image has stopped or the steps run out. The
batch loss is the *sum* of per-image losses, so a batch of N gives what N separate runs give.

Distributed training: do not use DDP (or any gradient-syncing strategy) for this stage. DDP would average latent
gradients across ranks, coupling different images, and every rank holds different images anyway. Scale out by
giving each process (one GPU, ``devices=1``) its own shard of images; :meth:`AdversarialLatentSearch.setup` refuses
a world size above one.

The generator(s), face-recognition models and CLIP are frozen, in eval mode, and held outside the registered
submodules, so checkpoints hold only the trainable latents and noise (``state_dict``), plus the per-image stop
steps under the checkpoint key ``latent_search``. With ``lambda_clip = 0`` CLIP is never built.
"""

from __future__ import annotations

import math
import re
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from facecloak.config.strict import from_plain_dict
from facecloak.errors import ConfigError
from facecloak.evaluation.robustness import DegradationConfig, RandomDegradation
from facecloak.losses.clip_infonce import CLIP_INPUT_RANGES, InfoNCECLIPLoss
from facecloak.losses.clip_loss import (
    CLIP_TEMPLATE_SETS,
    DEFAULT_DISTORTION_SCALE,
    DEFAULT_SOURCE_TEXT,
    DirectionalCLIPLoss,
    load_clip_loss,
)
from facecloak.losses.identity import (
    DODGE_OBJECTIVES,
    ENSEMBLE_REDUCTIONS,
    MODES,
    AdversarialIdentityLoss,
    IdentityReference,
    Mode,
    passes_thresholds,
)
from facecloak.models.stylegan2 import Generator

# --- configuration ---------------------------------------------------------------------------------------------------

FINE_SLOTS_BEFORE_HALF = 1
"""Default trainable W+ slots start this many slots before the midpoint: 18 slots give the reference's 8–17."""

REFERENCE_NOISE_MAX_RESOLUTION = 256
"""Largest optimised noise map: the reference optimises maps whose side is below 512."""

MAX_CROP_JITTER = 0.5
"""FR crop jitter at or beyond this (±50 % scale, ±0.5 rad, half an eye distance of shift) no longer shows a face."""

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma: the grey part of a change that ``change_chroma`` keeps whole."""

BLUR_TRUNCATE_SIGMAS = 3.0
"""The change's low-pass kernel reaches this many sigmas each side."""

TEXTURE_WINDOW_FRACTION = 1 / 64
"""Local contrast (for ``change_flat_share``) is measured in a Gaussian window of this fraction of the crop side:
2 px on the offline 128 px generator, 16 px on the 1024 px FFHQ one, i.e. the same part of a face."""

TEXTURE_FULL_CONTRAST = 0.08
"""Local contrast (:func:`texture_visibility`, luma in [0, 1]) at which a place counts as fully textured. Measured on
the shared photos' 128 px face crops: the 90th percentile of sharp faces is 0.09-0.13, smooth skin's 10th percentile
0.005-0.02, and an out-of-focus face in a crowd stays below 0.005 throughout, so it is treated as smooth skin."""

MAX_SEED = 2**31 - 1
"""Seeds are combined with a 32-bit hash of the image id into one 64-bit generator seed."""


def default_layers(n_latent: int) -> tuple[int, ...]:
    """The fine W+ slots CLIP2Protect edits: ``n_latent // 2 - 1`` onward (8–17 of config-f's 18)."""
    return tuple(range(max(0, n_latent // 2 - FINE_SLOTS_BEFORE_HALF), n_latent))


@dataclass(frozen=True)
class LatentSearchConfig:
    """Stage-2 settings; defaults are CLIP2Protect's (``main.py`` arguments of the adversarial optimisation)."""

    lambda_adv: float = 0.7
    lambda_clip: float = 0.3
    lambda_latent: float = 0.01
    lr: float = 0.01
    """Adam learning rate for latents and noise."""
    steps: int = 50
    layers: tuple[int, ...] | None = None
    """Trainable W+ slots; None: :func:`default_layers` of the generator, ``n_latent // 2 - 1`` onward. For the
    18-slot FFHQ generator that is the reference's 8–17 (it zeroes the gradient of slots ``0:8``, a fixed index);
    on smaller generators we keep the same *half* of the slots (4–9 of 10), where the reference's fixed ``8:``
    would leave only 8–9. Set the list to choose any slots (the golden parity test uses ``[8, 9]``)."""
    optimize_noise: bool = True
    noise_max_resolution: int = REFERENCE_NOISE_MAX_RESOLUTION
    """Noise maps up to this side are optimised (with ``optimize_noise``); larger ones stay fixed."""
    identity_mode: str = "impersonate"
    """``impersonate`` (the reference default) or ``dodge``; must match the identity loss."""
    early_stop: bool = True
    """Freeze an image once every attacked model passes its threshold with ``early_stop_margin``."""
    early_stop_margin: float = 0.0
    lambda_fidelity: float = 0.0
    """Weight of the per-image pixel MSE between the render and the pivot render (0: the paper's loss). Useful when
    the generator has no face prior (offline preset) and CLIP is off, so nothing else keeps the edit small."""
    max_delta: float | None = None
    """With an anchor (delta paste-back), soft L∞ bound on the change, ``max_delta · tanh(Δ / max_delta)`` in [0, 1]
    units; None: unbounded (the paper)."""
    change_blur_sigma: float = 0.0
    """With an anchor, Gaussian low-pass of the bounded change (sigma in generator pixels) before it is masked:
    the pasted change holds no fine texture, only smooth shading; 0: the change as rendered."""
    change_chroma: float = 1.0
    """With an anchor, the share of the change's colour (its deviation from grey) that is kept: 0 makes the change
    luminance only (shading, no colour patches), 1 keeps it as rendered."""
    change_flat_share: float = 1.0
    """With an anchor, the share of the change kept on flat, untextured parts of the photo's crop (smooth skin, an
    out-of-focus face); textured parts (brows, lashes, lips, beard, hair line) keep all of it, with a smooth ramp
    between (:func:`texture_visibility`). Contrast masking: the eye misses a change inside texture and sees it on
    smooth skin. 1: the same everywhere."""
    fr_crop_jitter: float = 0.0
    """Input diversity on the face-recognition branch: every step each image's FR crop is moved by a random
    similarity (scale in 1 ± j, rotation within ± j radians, shift within ± j of the eye distance), so the change
    does not depend on one exact alignment (the held-out model aligns faces its own way); 0: the exact crop."""
    makeup_prompt: str = "red lipstick"
    source_text: str = DEFAULT_SOURCE_TEXT
    clip_distortion_scale: float | None = DEFAULT_DISTORTION_SCALE
    """Random-perspective strength on the CLIP branch; None turns the augmentation off."""
    clip_num_augmentations: int = 1
    """Augmented views per image on the CLIP branch (reference ``--num_aug``)."""
    clip_loss: str = "directional"
    """``infonce`` (the reference's code, τ = 0.1, :mod:`facecloak.losses.clip_infonce`) or ``directional``
    (1 − cos of image and text directions, StyleGAN-NADA)."""
    clip_templates: str = "imagenet80"
    """Prompt templates the text side averages over: ``official79`` (the reference's list) or ``imagenet80``."""
    clip_input_range: str = "fixed"
    """``official``: CLIP sees [0, 1] renders squeezed into [0.5, 1] as in the reference (a bug, kept for exact
    reproduction; infonce only); ``fixed``: [0, 1] normalised once."""
    ensemble_reduce: str = "mean"
    """How per-model identity terms combine: ``sum`` (the reference) or ``mean`` (= sum / number of models)."""
    dodge_objective: str = "source"
    """Dodging: ``source`` = cos(x, source) per model; ``source_minus_target`` = cos(x, source) − cos(x, target)
    (the reference, needs a target photo)."""
    fr_degradation: DegradationConfig | None = None
    """Expectation over transformation on the face-recognition branch; None: the clean render."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lambda_fidelity < 0:
            raise ConfigError(f"latent_search.lambda_fidelity must be >= 0, got {self.lambda_fidelity}")
        if self.max_delta is not None and not 0 < self.max_delta <= 1:
            raise ConfigError(f"latent_search.max_delta must be in (0, 1] or null, got {self.max_delta}")
        if self.change_blur_sigma < 0:
            raise ConfigError(f"latent_search.change_blur_sigma must be >= 0, got {self.change_blur_sigma}")
        if not 0 <= self.change_chroma <= 1:
            raise ConfigError(f"latent_search.change_chroma must be in [0, 1], got {self.change_chroma}")
        if not 0 < self.change_flat_share <= 1:
            raise ConfigError(f"latent_search.change_flat_share must be in (0, 1], got {self.change_flat_share}")
        if not 0 <= self.fr_crop_jitter < MAX_CROP_JITTER:
            raise ConfigError(
                f"latent_search.fr_crop_jitter must be in [0, {MAX_CROP_JITTER}), got {self.fr_crop_jitter}"
            )
        if isinstance(self.fr_degradation, Mapping):
            object.__setattr__(self, "fr_degradation", DegradationConfig(**self.fr_degradation))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        for key in ("lambda_adv", "lambda_clip", "lambda_latent", "early_stop_margin"):
            if getattr(self, key) < 0:
                raise ConfigError(f"latent_search.{key} must be >= 0, got {getattr(self, key)}")
        if self.lambda_adv + self.lambda_clip + self.lambda_latent <= 0:
            raise ConfigError("latent_search.lambda_adv, lambda_clip and lambda_latent are all zero: nothing to do")
        if self.lr <= 0:
            raise ConfigError(f"latent_search.lr must be positive, got {self.lr}")
        for key in ("steps", "noise_max_resolution", "clip_num_augmentations"):
            if getattr(self, key) < 1:
                raise ConfigError(f"latent_search.{key} must be >= 1, got {getattr(self, key)}")
        if self.layers is not None and (
            not self.layers or min(self.layers) < 0 or len(set(self.layers)) != len(self.layers)
        ):
            raise ConfigError(f"latent_search.layers must be distinct non-negative W+ slots, got {self.layers}")
        if self.identity_mode not in MODES:
            raise ConfigError(f"latent_search.identity_mode={self.identity_mode!r} must be one of {list(MODES)}")
        if self.clip_distortion_scale is not None and not 0 < self.clip_distortion_scale <= 1:
            raise ConfigError(
                f"latent_search.clip_distortion_scale must be in (0, 1] or null, got {self.clip_distortion_scale}"
            )
        for key, allowed in (
            ("clip_loss", ("infonce", "directional")),
            ("clip_templates", tuple(CLIP_TEMPLATE_SETS)),
            ("clip_input_range", CLIP_INPUT_RANGES),
            ("ensemble_reduce", ENSEMBLE_REDUCTIONS),
            ("dodge_objective", DODGE_OBJECTIVES),
        ):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"latent_search.{key}={getattr(self, key)!r} must be one of {list(allowed)}")
        if self.clip_input_range == "official" and self.clip_loss != "infonce":
            raise ConfigError("latent_search.clip_input_range=official reproduces the reference's infonce loss only")
        if not self.makeup_prompt.strip():
            raise ConfigError("latent_search.makeup_prompt must not be empty")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"latent_search.seed must be in [0, {MAX_SEED}], got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for logging and checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LatentSearchConfig:
        """Build from a plain dict (e.g. a YAML section); unknown keys are an error, not silently dropped."""
        return from_plain_dict(cls, values, "latent_search")


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


def image_rng(seed: int, image_id: str, stream: str) -> torch.Generator:
    """A CPU random stream that depends only on the run seed, the image id and the stream's purpose."""
    return torch.Generator().manual_seed((seed << 32) | zlib.crc32(f"{stream}/{image_id}".encode()))


# --- outputs ---------------------------------------------------------------------------------------------------------


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


# --- the LightningModule ---------------------------------------------------------------------------------------------


class AdversarialLatentSearch(L.LightningModule):
    """Stage 2 for a batch of independent images; trainable state: fine W+ slots and coarse noise, per image.

    ``generator``: one generator for every image or one per image (stage 1's tuned ones); ``pivots``:
    ``[B, n_latent, style_dim]``; ``noise``: one map per styled conv, ``[B or 1, 1, r, r]``; ``landmarks5``:
    ``[B, 5, 2]`` face landmarks in generator pixels; ``reference``: per-model embeddings ``[B or 1, D]`` of the
    user's face (and of the target); ``thresholds``: the verification threshold of every attacked model.
    ``clip_factory`` builds the CLIP loss only when ``lambda_clip > 0`` (default: the real weights).
    """

    pivot: Tensor
    layer_index: Tensor
    landmarks5: Tensor
    stopped_at: Tensor

    anchor: Tensor | None
    change_mask: Tensor | None
    change_visibility: Tensor | None

    def __init__(
        self,
        generator: Generator | Sequence[Generator],
        pivots: Tensor,
        noise: Sequence[Tensor],
        landmarks5: Tensor,
        image_ids: Sequence[str],
        identity_loss: AdversarialIdentityLoss,
        reference: IdentityReference,
        thresholds: Mapping[str, float],
        config: LatentSearchConfig | None = None,
        clip_factory: ClipFactory | None = None,
        anchor: Tensor | None = None,
        change_mask: Tensor | None = None,
    ) -> None:
        super().__init__()
        config = config or LatentSearchConfig()
        generators = [generator] if isinstance(generator, Generator) else list(generator)
        batch = pivots.shape[0]
        self.image_ids = [str(i) for i in image_ids]
        _check_inputs(generators, pivots, noise, landmarks5, self.image_ids)
        _check_identity(identity_loss, reference, thresholds, config, batch)
        n_latent = generators[0].n_latent
        layers = config.layers if config.layers is not None else default_layers(n_latent)
        if max(layers) >= n_latent:
            raise ConfigError(f"latent_search.layers={layers} names slots beyond the generator's {n_latent} W+ slots")

        self.save_hyperparameters(
            ignore=[
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
            ]
        )
        self.hparams.update(config=config.to_dict(), thresholds=dict(thresholds), layers=list(layers))
        self.config = config
        self.layers = tuple(sorted(layers))
        self.thresholds = {name: float(thresholds[name]) for name in identity_loss.names}

        pivots = pivots.detach()  # the working dtype: float32 normally, float64 in exactness tests
        self.register_buffer("pivot", pivots.clone(), persistent=False)
        self.register_buffer("layer_index", torch.tensor(self.layers, dtype=torch.long), persistent=False)
        self.register_buffer("landmarks5", landmarks5.detach().to(pivots.dtype).clone(), persistent=False)
        self.register_buffer("stopped_at", torch.full((batch,), -1, dtype=torch.long), persistent=False)
        if anchor is not None and anchor.shape[0] != batch:
            raise ConfigError(f"anchor images {tuple(anchor.shape)} do not match the batch of {batch} pivots")
        self.register_buffer(
            "anchor", None if anchor is None else anchor.detach().to(pivots.dtype).clone(), persistent=False
        )
        if change_mask is not None and (anchor is None or change_mask.shape[0] != batch):
            raise ConfigError("change_mask needs an anchor and one mask [B, 1, H, W] per image")
        self.register_buffer(
            "change_mask",
            None if change_mask is None else change_mask.detach().to(pivots.dtype).clone(),
            persistent=False,
        )
        visibility = None
        if self.anchor is not None and config.change_flat_share < 1:
            visibility = texture_visibility(self.anchor, config.change_flat_share)
        self.register_buffer("change_visibility", visibility, persistent=False)
        self._anchor_offset: Tensor | None = None
        self._pivot_generated: Tensor | None = None
        self._pivot_images: Tensor | None = None
        self.latent = nn.Parameter(pivots[:, list(self.layers)].clone())

        maps = [n.detach().to(pivots.dtype).expand(batch, *n.shape[1:]).clone() for n in noise]
        for i, initial in enumerate(maps):
            self.register_buffer(f"initial_noise_{i}", initial, persistent=False)
        self.noise_layers = tuple(
            i for i, n in enumerate(maps) if config.optimize_noise and n.shape[-1] <= config.noise_max_resolution
        )
        # State-dict entry ``noise.k`` is the map of styled conv ``noise_layers[k]`` (also in the hyperparameters).
        self.noise = nn.ParameterList([nn.Parameter(maps[i].clone()) for i in self.noise_layers])
        self.hparams.update(noise_layers=list(self.noise_layers))

        for g in generators:
            g.requires_grad_(False).eval()
        clip = None
        if config.lambda_clip > 0:
            clip = (clip_factory or load_clip_for)(config)
            if clip.prompt is not None and clip.prompt != config.makeup_prompt:
                raise ConfigError(
                    f"latent_search.makeup_prompt={config.makeup_prompt!r} but the CLIP loss targets {clip.prompt!r}"
                )
        self.frozen = FrozenNetworks(generators, identity_loss.eval().requires_grad_(False), clip, reference)

        self._snapshots: dict[int, tuple[Tensor, list[Tensor]]] = {}
        self._clip_rngs: list[torch.Generator] = []
        self._degradations: list[RandomDegradation] = []
        self._jitter_rngs: list[torch.Generator] = []
        self._clip_source: Tensor | None = None
        self.similarities_before: dict[str, dict[str, Tensor]] = {}
        self.similarities_after: dict[str, dict[str, Tensor]] = {}
        self.final_images: Tensor | None = None

    # --- the trainable code and its render ---

    def wplus(self) -> Tensor:
        """Current W+ ``[B, n_latent, style_dim]``: the pivot with the trainable slots put in."""
        return self.pivot.index_copy(1, self.layer_index, self.latent)

    def initial_noise(self) -> list[Tensor]:
        """Stage-1 noise maps ``[B, 1, r, r]`` in layer order."""
        return [getattr(self, f"initial_noise_{i}") for i in range(len(self.frozen.generators[0].noise_shapes))]

    def noise_maps(self) -> list[Tensor]:
        """Current noise maps in layer order: the trainable ones, the stage-1 maps elsewhere."""
        maps = self.initial_noise()
        for i, param in zip(self.noise_layers, self.noise):
            maps[i] = param
        return maps

    def render(self, wplus: Tensor, noise: Sequence[Tensor]) -> Tensor:
        """Images ``[B, 3, size, size]`` in [0, 1], each from its own (or the shared) generator.

        With an ``anchor`` (the real aligned photo crop), the image is the anchor plus the change of the render
        from the pivot render: exactly what a delta paste-back puts into the user's photo, so the attack, the
        early stop and the success flag all judge the pixels the user will share.
        """
        images01 = self._render_generated(wplus, noise)
        if self._anchor_offset is None or self._pivot_generated is None:
            return images01
        change = images01 - self._pivot_generated
        if self.config.max_delta is not None:
            change = self.config.max_delta * torch.tanh(change / self.config.max_delta)
        # Shaped after the bound: the tanh turns a large smooth change into flat plateaus with sharp edges, so a
        # blur before it would not keep the pasted change smooth. Both shapings keep |change| <= max_delta.
        change = self.shape_change(change)
        if self.change_visibility is not None:
            change = change * self.change_visibility  # less on smooth skin, where the eye would see it
        if self.change_mask is not None:
            change = change * self.change_mask  # the same soft weights paste-back will use
        return (self._pivot_generated + self._anchor_offset + change).clamp(0.0, 1.0)

    def shape_change(self, change: Tensor) -> Tensor:
        """Low-pass and de-saturate the render's bounded change (``change_blur_sigma``, ``change_chroma``)."""
        return shape_change(change, self.config.change_blur_sigma, self.config.change_chroma)

    def _render_generated(self, wplus: Tensor, noise: Sequence[Tensor]) -> Tensor:
        generators = self.frozen.generators
        if len(generators) == 1:
            images = generators[0].synthesis(wplus, noise)
        else:
            images = torch.cat(
                [g.synthesis(wplus[i : i + 1], [n[i : i + 1] for n in noise]) for i, g in enumerate(generators)]
            )
        return ((images + 1.0) / 2.0).clamp(0.0, 1.0)

    # --- losses ---

    def latent_loss(self) -> Tensor:
        """``‖w − w0‖²`` per image ``[B]`` (the non-trainable slots equal the pivot and add nothing)."""
        return (self.latent - self.pivot[:, list(self.layers)]).pow(2).sum(dim=(1, 2))

    def fr_view(self, images01: Tensor) -> Tensor:
        """What the attacked models see: the render, or a per-image random degradation of it (EOT)."""
        if not self._degradations:
            return images01
        return torch.cat([degrade(images01[i : i + 1]) for i, degrade in enumerate(self._degradations)])

    def fr_landmarks(self) -> Tensor:
        """Landmarks the attacked models crop with: exact, or moved by a random similarity per image (diversity)."""
        if not self._jitter_rngs:
            return self.landmarks5
        return torch.cat(
            [
                jitter_landmarks(self.landmarks5[i : i + 1], self.config.fr_crop_jitter, rng)
                for i, rng in enumerate(self._jitter_rngs)
            ]
        )

    def losses(self, images01: Tensor) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
        """Per-image terms ``[B]`` (``adv``, ``clip``, ``latent``, weighted ``loss``) and the FR similarities."""
        c = self.config
        adv, sims = self.frozen.identity(self.fr_view(images01), self.fr_landmarks(), self.frozen.reference)
        clip = torch.zeros_like(adv)
        if self.frozen.clip is not None:
            assert self._clip_source is not None
            clip = self.frozen.clip(images01, self._clip_source, self._clip_rngs)
        latent = self.latent_loss()
        fidelity = torch.zeros_like(adv)
        if c.lambda_fidelity > 0 and self._pivot_images is not None:
            fidelity = (images01 - self._pivot_images).pow(2).mean(dim=(1, 2, 3))
        loss = c.lambda_adv * adv + c.lambda_clip * clip + c.lambda_latent * latent + c.lambda_fidelity * fidelity
        return {"adv": adv, "clip": clip, "latent": latent, "fidelity": fidelity, "loss": loss}, sims

    @torch.no_grad()
    def clean_similarities(self, images01: Tensor) -> dict[str, dict[str, Tensor]]:
        """Similarities of the undegraded render: what success and early stop are judged on."""
        return self.frozen.identity(images01, self.landmarks5, self.frozen.reference)[1]

    def passes(self, sims: Mapping[str, Mapping[str, Tensor]]) -> Tensor:
        """Per image, whether every attacked model is fooled with the configured margin."""
        mode = cast(Mode, self.config.identity_mode)
        return passes_thresholds(sims, self.thresholds, mode, self.config.early_stop_margin)

    # --- Lightning hooks ---

    def setup(self, stage: str) -> None:
        """Refuse distributed runs: gradient syncing would couple the independent per-image latents."""
        if self.trainer.world_size > 1:
            raise ConfigError(
                "adversarial latent search must not run under DDP (latent gradients would be averaged across "
                "images); run one process per GPU with devices=1, each on its own images"
            )

    def on_fit_start(self) -> None:
        """Move the frozen networks here, seed per-image streams, measure the pivot render."""
        self.frozen.to(self.device)
        c = self.config
        self._clip_rngs = [image_rng(c.seed, i, "clip") for i in self.image_ids]
        self._degradations = (
            [RandomDegradation(c.fr_degradation, image_rng(c.seed, i, "fr")) for i in self.image_ids]
            if c.fr_degradation is not None
            else []
        )
        self._jitter_rngs = [image_rng(c.seed, i, "fr_crop") for i in self.image_ids] if c.fr_crop_jitter > 0 else []
        with torch.no_grad():
            if self.anchor is not None:
                self._pivot_generated = self._render_generated(self.pivot, self.initial_noise())
                self._anchor_offset = self.anchor - self._pivot_generated
            pivot_images = self.render(self.pivot, self.initial_noise())
            self._pivot_images = pivot_images
            self.similarities_before = self.clean_similarities(pivot_images)
            if self.frozen.clip is not None:
                self._clip_source = self.frozen.clip.source_features(pivot_images)
        # After a resume, images that had stopped keep the (restored) values they stopped with.
        for i in torch.nonzero(self.stopped_at >= 0).flatten().tolist():
            self._snapshots.setdefault(i, self._snapshot(i))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        """End the run once every image has stopped (-1 ends the single epoch)."""
        return -1 if bool((self.stopped_at >= 0).all()) else None

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """One Adam step on the still-active images; the loss is the sum of their per-image losses."""
        images01 = self.render(self.wplus(), self.noise_maps())
        terms, sims = self.losses(images01)
        if self.config.early_stop:
            exact = not self._degradations and not self._jitter_rngs
            clean = sims if exact else self.clean_similarities(images01)
            self._stop_passing(self.passes(clean))
        active = (self.stopped_at < 0).to(terms["loss"])
        batch_size = images01.shape[0]
        for key, value in terms.items():
            self.log(f"search/{key}", value.detach().mean(), prog_bar=key == "loss", batch_size=batch_size)
        key = "source" if self.config.identity_mode == "dodge" else "target"
        for name, sim in sims[key].items():
            self.log(f"search/sim_{key}/{name}", sim.detach().mean(), batch_size=batch_size)
        self.log("search/active_images", active.sum(), batch_size=batch_size)
        return (terms["loss"] * active).sum()

    def _snapshot(self, i: int) -> tuple[Tensor, list[Tensor]]:
        return self.latent.detach()[i].clone(), [p.detach()[i].clone() for p in self.noise]

    def _stop_passing(self, passing: Tensor) -> None:
        """Freeze images that pass now at their current values (the ones that produced the passing render)."""
        for i in torch.nonzero(passing & (self.stopped_at < 0)).flatten().tolist():
            self.stopped_at[i] = self.global_step
            self._snapshots[i] = self._snapshot(i)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step, then put stopped images back to their snapshot (Adam's momentum moves them with a zero gradient).

        Restoring here, not in a batch-end hook, means callbacks and checkpoints never see the moved values.
        """
        super().optimizer_step(*args, **kwargs)
        with torch.no_grad():
            for i, (latent, maps) in self._snapshots.items():
                self.latent[i] = latent
                for param, snapshot in zip(self.noise, maps):
                    param[i] = snapshot

    def on_train_end(self) -> None:
        """Render and judge the final codes on the run's device."""
        with torch.no_grad():
            images01 = self.render(self.wplus(), self.noise_maps())
            self.similarities_after = self.clean_similarities(images01)
            self.final_images = images01

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """A fresh Adam over this run's latents and noise only."""
        return torch.optim.Adam([self.latent, *self.noise], lr=self.config.lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The per-image stop steps travel next to the state dict (which holds only latents and noise)."""
        checkpoint["latent_search"] = {"stopped_at": self.stopped_at.detach().cpu()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the stop steps; snapshots are rebuilt from the loaded values at fit start."""
        self.stopped_at.copy_(checkpoint["latent_search"]["stopped_at"])

    # --- results ---

    def results(self) -> list[SearchResult]:
        """Per-image outputs after ``fit``, in input order."""
        if self.final_images is None:
            raise RuntimeError("results() is available after trainer.fit() has run")
        success = self.passes(self.similarities_after).cpu()
        wplus = self.wplus().detach().cpu()
        maps = [n.detach().cpu() for n in self.noise_maps()]
        out = []
        for i, image_id in enumerate(self.image_ids):
            out.append(
                SearchResult(
                    image_id=image_id,
                    wplus=wplus[i],
                    noise=[n[i : i + 1] for n in maps],
                    image=self.final_images[i].cpu(),
                    similarities_before=_per_image(self.similarities_before, i),
                    similarities_after=_per_image(self.similarities_after, i),
                    success=bool(success[i]),
                    stopped_at=int(self.stopped_at[i]),
                )
            )
        return out


def shape_change(change: Tensor, blur_sigma: float, chroma: float) -> Tensor:
    """A change ``[B, 3, H, W]`` blurred by a Gaussian of ``blur_sigma`` pixels, its colour scaled by ``chroma``.

    Both are linear, so they commute and keep a zero change zero, and both take convex combinations (a normalised
    positive kernel; grey is a weighted mean of R, G, B), so neither enlarges the largest ``|change|``. Smooth, grey
    changes read as shading or lighting; fine texture and colour casts read as damage (and cost perceptual metrics
    like HaarPSI most).
    """
    if blur_sigma > 0:
        change = gaussian_blur(change, blur_sigma)
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
    contrast = gaussian_blur((brightness - gaussian_blur(brightness, sigma)).square(), sigma).sqrt()
    texture = gaussian_blur((contrast / TEXTURE_FULL_CONTRAST).clamp(max=1.0), sigma)
    return flat_share + (1.0 - flat_share) * texture


def luma(images: Tensor) -> Tensor:
    """BT.601 luma ``[B, 1, H, W]`` of RGB ``[B, 3, H, W]`` (of a change: its grey part)."""
    weights = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of ``sigma`` pixels with reflected borders, the kernel kept inside small images."""
    import kornia

    radius = max(1, math.ceil(BLUR_TRUNCATE_SIGMAS * sigma))
    radius = min(radius, (min(images.shape[-2:]) - 1) // 2)  # reflect padding needs a kernel inside the image
    size = 2 * radius + 1
    return kornia.filters.gaussian_blur2d(images, (size, size), (sigma, sigma), border_type="reflect")


def jitter_landmarks(landmarks5: Tensor, strength: float, rng: torch.Generator) -> Tensor:
    """Landmarks ``[1, 5, 2]`` moved by a random similarity about their centre (scale, rotation, shift)."""
    draws = (torch.rand(4, generator=rng, dtype=torch.float64) * 2 - 1) * strength
    scale, angle = 1.0 + float(draws[0]), float(draws[1])
    eye_distance = (landmarks5[0, 1] - landmarks5[0, 0]).norm()
    shift = draws[2:].to(landmarks5) * eye_distance
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    rotation = torch.tensor([[cos, -sin], [sin, cos]], dtype=landmarks5.dtype, device=landmarks5.device)
    centre = landmarks5.mean(dim=1, keepdim=True)
    return (landmarks5 - centre) @ rotation.T + centre + shift


def _per_image(sims: Mapping[str, Mapping[str, Tensor]], i: int) -> dict[str, dict[str, float]]:
    return {key: {name: float(v[i]) for name, v in per_model.items()} for key, per_model in sims.items()}


def _check_inputs(
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


def _check_identity(
    identity: AdversarialIdentityLoss,
    reference: IdentityReference,
    thresholds: Mapping[str, float],
    config: LatentSearchConfig,
    batch: int,
) -> None:
    """The identity objective must match the config and hold a reference and threshold for every attacked model."""
    if identity.mode != config.identity_mode:
        raise ConfigError(
            f"latent_search.identity_mode={config.identity_mode!r} but the identity loss is {identity.mode!r}"
        )
    missing = [name for name in identity.names if name not in thresholds]
    if missing:
        raise ConfigError(f"no verification threshold for attacked models {missing}; pass thresholds for each")
    for key, embeddings in (("source", reference.source), ("target", reference.target)):
        if embeddings is None:
            continue
        for name in identity.names:
            if name not in embeddings or embeddings[name].ndim != 2 or embeddings[name].shape[0] not in (1, batch):
                raise ConfigError(f"reference.{key} needs a [B or 1, D] embedding from '{name}' for {batch} images")


# --- running it ------------------------------------------------------------------------------------------------------


class _Steps(IterableDataset):
    """One item per optimisation step: the module holds all per-image data, the loader only paces the loop."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.steps))

    def __len__(self) -> int:
        return self.steps


def steps_loader(steps: int) -> DataLoader:
    """The loader a stage-2 fit runs on: ``steps`` items, one epoch."""
    return DataLoader(_Steps(steps), batch_size=None)


TRAINER_DEFAULTS: dict[str, Any] = {
    "accelerator": "auto",
    "devices": 1,
    "strategy": "auto",
    "max_epochs": 1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}
"""Trainer settings of a search run (one device, never DDP); ``trainer_kwargs`` override them."""

EXPECTED_WARNINGS = ("does not have many workers", "`IterableDataset` has `__len__`", "in eval mode at the start")
"""Lightning warnings that do not apply here (an in-memory step counter; frozen networks kept in eval mode)."""


def fit_quietly(trainer: L.Trainer, module: AdversarialLatentSearch, ckpt_path: str | None = None) -> None:
    """``trainer.fit`` on the step loader, without the warnings that do not apply to this stage."""
    with warnings.catch_warnings():
        for expected in EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=f".*{re.escape(expected)}.*")
        trainer.fit(module, steps_loader(module.config.steps), ckpt_path=ckpt_path)


def search_latents(
    generator: Generator | Sequence[Generator],
    pivots: Tensor,
    noise: Sequence[Tensor],
    landmarks5: Tensor,
    image_ids: Sequence[str],
    identity_loss: AdversarialIdentityLoss,
    reference: IdentityReference,
    thresholds: Mapping[str, float],
    config: LatentSearchConfig | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
    clip_factory: ClipFactory | None = None,
    anchor: Tensor | None = None,
    change_mask: Tensor | None = None,
) -> list[SearchResult]:
    """Run stage 2 on one batch of images with a fresh module and optimizer; results in input order."""
    config = config or LatentSearchConfig()
    kwargs = {**TRAINER_DEFAULTS, **(trainer_kwargs or {})}
    if "max_steps" in kwargs:
        raise ConfigError("set the number of steps with latent_search.steps, not trainer max_steps")
    kwargs["max_steps"] = config.steps
    module = AdversarialLatentSearch(
        generator,
        pivots,
        noise,
        landmarks5,
        image_ids,
        identity_loss,
        reference,
        thresholds,
        config,
        clip_factory,
        anchor,
        change_mask,
    )
    fit_quietly(L.Trainer(**kwargs), module)
    return module.results()
