"""Adversarial latent search settings (the ``search`` config section), defaults CLIP2Protect's.

Lightning-free, so the config layer can import it; :mod:`facecloak.stages.latent_search` says what each term does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from facecloak.errors import ConfigError
from facecloak.losses.clip_infonce import CLIP_INPUT_RANGES
from facecloak.losses.clip_loss import CLIP_TEMPLATE_SETS, DEFAULT_DISTORTION_SCALE, DEFAULT_SOURCE_TEXT
from facecloak.losses.degrade import DegradationConfig
from facecloak.losses.identity import DODGE_OBJECTIVES, ENSEMBLE_REDUCTIONS, MODES
from facecloak.validate import from_plain_dict

FINE_SLOTS_BEFORE_HALF = 1
"""Default trainable W+ slots start this many slots before the midpoint: 18 slots give the reference's 8–17."""

REFERENCE_NOISE_MAX_RESOLUTION = 256
"""Largest optimised noise map: the reference optimises maps whose side is below 512."""

MAX_CROP_JITTER = 0.5
"""FR crop jitter at or beyond this (±50 % scale, ±0.5 rad, half an eye distance of shift) no longer shows a face."""

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
            raise ConfigError(f"search.lambda_fidelity must be >= 0, got {self.lambda_fidelity}")
        if self.max_delta is not None and not 0 < self.max_delta <= 1:
            raise ConfigError(f"search.max_delta must be in (0, 1] or null, got {self.max_delta}")
        if self.change_blur_sigma < 0:
            raise ConfigError(f"search.change_blur_sigma must be >= 0, got {self.change_blur_sigma}")
        if not 0 <= self.change_chroma <= 1:
            raise ConfigError(f"search.change_chroma must be in [0, 1], got {self.change_chroma}")
        if not 0 < self.change_flat_share <= 1:
            raise ConfigError(f"search.change_flat_share must be in (0, 1], got {self.change_flat_share}")
        if not 0 <= self.fr_crop_jitter < MAX_CROP_JITTER:
            raise ConfigError(f"search.fr_crop_jitter must be in [0, {MAX_CROP_JITTER}), got {self.fr_crop_jitter}")
        if isinstance(self.fr_degradation, Mapping):
            object.__setattr__(self, "fr_degradation", DegradationConfig(**self.fr_degradation))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        for key in ("lambda_adv", "lambda_clip", "lambda_latent", "early_stop_margin"):
            if getattr(self, key) < 0:
                raise ConfigError(f"search.{key} must be >= 0, got {getattr(self, key)}")
        if self.lambda_adv + self.lambda_clip + self.lambda_latent <= 0:
            raise ConfigError("search.lambda_adv, lambda_clip and lambda_latent are all zero: nothing to do")
        if self.lr <= 0:
            raise ConfigError(f"search.lr must be positive, got {self.lr}")
        for key in ("steps", "noise_max_resolution", "clip_num_augmentations"):
            if getattr(self, key) < 1:
                raise ConfigError(f"search.{key} must be >= 1, got {getattr(self, key)}")
        if self.layers is not None and (
            not self.layers or min(self.layers) < 0 or len(set(self.layers)) != len(self.layers)
        ):
            raise ConfigError(f"search.layers must be distinct non-negative W+ slots, got {self.layers}")
        if self.identity_mode not in MODES:
            raise ConfigError(f"search.identity_mode={self.identity_mode!r} must be one of {list(MODES)}")
        if self.clip_distortion_scale is not None and not 0 < self.clip_distortion_scale <= 1:
            raise ConfigError(
                f"search.clip_distortion_scale must be in (0, 1] or null, got {self.clip_distortion_scale}"
            )
        for key, allowed in (
            ("clip_loss", ("infonce", "directional")),
            ("clip_templates", tuple(CLIP_TEMPLATE_SETS)),
            ("clip_input_range", CLIP_INPUT_RANGES),
            ("ensemble_reduce", ENSEMBLE_REDUCTIONS),
            ("dodge_objective", DODGE_OBJECTIVES),
        ):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"search.{key}={getattr(self, key)!r} must be one of {list(allowed)}")
        if self.clip_input_range == "official" and self.clip_loss != "infonce":
            raise ConfigError("search.clip_input_range=official reproduces the reference's infonce loss only")
        if not self.makeup_prompt.strip():
            raise ConfigError("search.makeup_prompt must not be empty")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"search.seed must be in [0, {MAX_SEED}], got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for logging and checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LatentSearchConfig:
        """Build from a plain dict (e.g. a YAML section); unknown keys are an error, not silently dropped."""
        return from_plain_dict(cls, values, "search")
