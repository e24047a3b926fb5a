"""The whole run configuration: one field per config section, each section's dataclass owned by its layer.

This module only aggregates: faces, stages and runtime define (and validate) their own sections and import nothing
from here; what lives here are the job-level sections no lower layer owns (weights, fr, generator, protect, map).
OmegaConf checks key names and types when a YAML file is merged into these dataclasses; ``__post_init__``
checks value ranges when the merged config is turned into objects (:func:`facecloak.config.compose.compose`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace

from facecloak.errors import ConfigError
from facecloak.faces.config import FacesConfig
from facecloak.faces.regions import FACE_CROP_SCALE
from facecloak.inversion.projector import ProjectorConfig
from facecloak.models.ddpm import DDPMConfig
from facecloak.runtime.trainer import LoggerConfig, TrainerConfig
from facecloak.stages.latent_search_config import LatentSearchConfig
from facecloak.stages.pivot_tuning_config import PivotTuningConfig
from facecloak.stages.score_finetune_config import ScoreFinetuneConfig
from facecloak.stages.warp_attack_config import WarpAttackConfig
from facecloak.validate import require

DEFAULT_FAR_LEVELS = (0.1, 0.01, 0.001)


@dataclass
class WeightsConfig:
    """Where fetched weights are cached (``None``: ``$FACECLOAK_CHECKPOINTS`` or ``checkpoints/``)."""

    cache_dir: str | None = None


@dataclass
class FRConfig:
    """Which face-recognition models are attacked, which are held out for black-box evaluation."""

    attacked: list[str] = field(default_factory=lambda: ["mobilefacenet_casia", "faceres"])
    held_out: list[str] = field(default_factory=lambda: ["dlib_native"])
    far_levels: list[float] = field(default_factory=lambda: list(DEFAULT_FAR_LEVELS))
    # Thresholds calibrated with `facecloak fr calibrate` (JSON); published ones come from the registry.
    calibration: str | None = None
    # Which wins where a model has both (protect, evaluate and sweep all judge by it): calibrated | published.
    threshold_source: str = "calibrated"
    # How the attack's face crops are made: align5 warps each face onto the model's five-point template (ours);
    # box cuts the source photo's MTCNN box (margin 0) from the render and resizes it (CLIP2Protect, AMT-GAN's
    # thresholds were computed that way; facecloak.faces.box_crop). Judging the saved photo always aligns.
    preprocess: str = "align5"

    def __post_init__(self) -> None:
        from facecloak.losses.identity import FR_PREPROCESSING
        from facecloak.registry.entries import get_entry

        require(self.preprocess in FR_PREPROCESSING, "fr.preprocess", f"must be one of {FR_PREPROCESSING}")

        for key in ("attacked", "held_out"):
            for name in getattr(self, key):
                try:
                    entry = get_entry(name)
                except ConfigError as err:
                    raise ConfigError(f"config key 'fr.{key}': {err}") from err
                require(entry.kind == "face_recognition", f"fr.{key}", f"'{name}' is not a face-recognition model")
        for attacked in self.attacked:
            for held in self.held_out:
                same = get_entry(attacked).same_network_as == held or get_entry(held).same_network_as == attacked
                require(not same, "fr.attacked", f"'{attacked}' is the same network as held-out '{held}'")
        overlap = set(self.attacked) & set(self.held_out)
        require(not overlap, "fr.held_out", f"{sorted(overlap)} cannot be attacked and held out at once")
        require(all(0 < f < 1 for f in self.far_levels), "fr.far_levels", "false-accept rates must be in (0, 1)")
        require(
            self.threshold_source in ("calibrated", "published"),
            "fr.threshold_source",
            "must be 'calibrated' or 'published'",
        )


METHODS = ("clip2protect", "map", "warp")
INVERSIONS = ("auto", "e4e", "projector")
PROTECT_MODES = ("dodge", "impersonate")
PASTE_MODES = ("delta", "replace")
OUTPUT_FORMATS = ("png", "jpeg")


@dataclass
class GeneratorSettings:
    """Which StyleGAN2 protects faces and how a photo's face is put into its W+ space.

    ``weights``: a registry name (the FFHQ checkpoint) or null for a generator without pretrained weights (same code
    path; it has no face prior, so naturalness then comes from pivot tuning and paste-back alone).
    """

    weights: str | None = "stylegan2_ffhq_1024"
    size: int = 1024
    style_dim: int = 512
    n_mlp: int = 8
    channel_base: int = 32768
    channel_max: int = 512
    init_seed: int = 0
    # Strength of the per-layer noise inputs of a generator built without weights (rosinality initialises them at 0,
    # which leaves the noise maps without any effect, so the search could not use them).
    init_noise_strength: float = 0.0
    inversion: str = "auto"
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)

    def __post_init__(self) -> None:
        require(self.inversion in INVERSIONS, "generator.inversion", f"must be one of {INVERSIONS}")
        require(self.size >= 8 and self.size & (self.size - 1) == 0, "generator.size", "must be a power of two")
        require(self.channel_max >= 1 and self.channel_base >= 1, "generator.channel_max", "must be positive")


@dataclass
class ProtectSettings:
    """What `facecloak protect` does with each face and writes for each photo."""

    method: str = "clip2protect"
    mode: str = "dodge"
    # Impersonation target: a photo of another person (the face is detected and aligned like the user's).
    target: str | None = None
    # False-accept rate whose threshold decides success (and the early stop of the search).
    far: float = 0.01
    # delta: add (protected render - pivot reconstruction) to the original photo, keeping every detail the
    # generator cannot reproduce; replace: paste the protected render itself.
    paste: str = "delta"
    # Also write each face's raw protected render (<id>_face<k>_render.png): CLIP2Protect's result is that render.
    save_render: bool = False
    feather: float = 0.05
    output_format: str = "png"
    jpeg_quality: int = 95
    max_faces: int = 8
    # CLIP2Protect: faces optimised together (the faces of up to this many photos, at most this many per stage run)
    # through the projector, pivot tuning (a vmap over per-face generator offsets: each face still gets its own tuned
    # generator) and the search, each face with its own latents, noise, optimiser state and early stop; one Trainer
    # per stage per batch. Equal to batch-1 runs in float64; float32 outputs differ at the round-off Adam amplifies
    # (docs/operations.md). Pays on a GPU, not on a CPU. map and warp: 1 only.
    batch_faces: int = 1
    # Checkpoints of finished stages, so an interrupted photo resumes from its last stage.
    keep_stage_checkpoints: bool = True

    def __post_init__(self) -> None:
        require(self.method in METHODS, "protect.method", f"must be one of {METHODS}")
        require(self.mode in PROTECT_MODES, "protect.mode", f"must be one of {PROTECT_MODES}")
        require(
            self.mode == "dodge" or self.target is not None,
            "protect.target",
            "impersonation needs a target photo: pass --target PHOTO (preset paper reproduces CLIP2Protect, which "
            "impersonates; preset clip2protect_photo dodges without a target)",
        )
        require(0 < self.far < 1, "protect.far", "must be in (0, 1)")
        require(self.paste in PASTE_MODES, "protect.paste", f"must be one of {PASTE_MODES}")
        require(0 <= self.feather < 0.5, "protect.feather", "must be in [0, 0.5)")
        require(self.output_format in OUTPUT_FORMATS, "protect.output_format", f"must be one of {OUTPUT_FORMATS}")
        require(1 <= self.jpeg_quality <= 100, "protect.jpeg_quality", "must be in [1, 100]")
        require(self.max_faces >= 1, "protect.max_faces", "must be at least 1")
        require(self.batch_faces >= 1, "protect.batch_faces", "must be at least 1")
        require(
            self.batch_faces == 1 or self.method == "clip2protect",
            "protect.batch_faces",
            f"batches CLIP2Protect's stages only; method {self.method} protects one face at a time (set it to 1)",
        )


@dataclass(frozen=True)
class ScoreNetworkShape:
    """Layout of the score network built without weights (``map.network: null``); defaults: the CelebA-HQ 256 one.

    A weight-less network is a seeded random init (``init_seed``) of this layout, so every run builds the same one.
    """

    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4, 4])
    num_res_blocks: int = 2
    attn_resolutions: list[int] = field(default_factory=lambda: [16])
    resolution: int = 256
    init_seed: int = 0

    def __post_init__(self) -> None:
        try:
            self.ddpm_config()
        except ConfigError as err:
            raise ConfigError(f"config key 'map.unet': {err}") from err

    def ddpm_config(self) -> DDPMConfig:
        """The UNet layout (checked: channel groups, levels, attention resolutions)."""
        return DDPMConfig(
            ch=self.ch,
            ch_mult=tuple(self.ch_mult),
            num_res_blocks=self.num_res_blocks,
            attn_resolutions=tuple(self.attn_resolutions),
            resolution=self.resolution,
        )


@dataclass(frozen=True)
class MapSettings(ScoreFinetuneConfig):
    """MAP (``protect.method: map``): every fine-tuning option of :class:`ScoreFinetuneConfig`, plus the job's own.

    ``identity_mode`` follows ``protect.mode`` (set that, or pass --target); ``expression`` must be one of the
    expression model's classes. ``network`` is a registry name (the CelebA-HQ 256 DDPM) or null for a seeded network
    without weights of shape ``unet`` (same code path, no face prior).
    """

    network: str | None = "ddpm_celebahq_256"
    unet: ScoreNetworkShape = field(default_factory=ScoreNetworkShape)
    # Fine-tuning steps per face, and how often the resumable checkpoint is written (protect.keep_stage_checkpoints).
    steps: int = 40
    checkpoint_every: int = 10
    # Side of the square face crop the network sees, relative to the detector box's larger side.
    crop_scale: float = FACE_CROP_SCALE

    def __post_init__(self) -> None:
        from facecloak.losses.expression import expression_index
        from facecloak.registry.entries import get_entry

        super().__post_init__()
        try:
            expression_index(self.expression)
        except ConfigError as err:
            raise ConfigError(f"config key 'map.expression': {err}") from err
        require(self.steps >= 1, "map.steps", "must be at least 1")
        require(self.checkpoint_every >= 1, "map.checkpoint_every", "must be at least 1")
        require(self.crop_scale >= 1.0, "map.crop_scale", "must be at least 1 (the crop holds the whole face box)")
        if self.network is not None:
            try:
                kind = get_entry(self.network).kind
            except ConfigError as err:
                raise ConfigError(f"config key 'map.network': {err}") from err
            require(kind == "diffusion", "map.network", f"'{self.network}' is not a diffusion score network")

    def finetune_config(self) -> ScoreFinetuneConfig:
        """The fine-tuning stage's own options (this section without the job's keys)."""
        return ScoreFinetuneConfig(**{f.name: getattr(self, f.name) for f in fields(ScoreFinetuneConfig)})


@dataclass
class AppConfig:
    """The whole configuration of a facecloak run."""

    seed: int = 0
    # auto: cuda:LOCAL_RANK (mod visible GPUs) when CUDA is available, else cpu (facecloak.runtime.devices).
    device: str = "auto"
    # Set by `scale=smoke`: a run that checks the code path at a tiny size; its verdicts are not results.
    smoke: bool = False
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    faces: FacesConfig = field(default_factory=FacesConfig)
    fr: FRConfig = field(default_factory=FRConfig)
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    pivot: PivotTuningConfig = field(default_factory=PivotTuningConfig)
    search: LatentSearchConfig = field(default_factory=LatentSearchConfig)
    protect: ProtectSettings = field(default_factory=ProtectSettings)
    map: MapSettings = field(default_factory=MapSettings)
    warp: WarpAttackConfig = field(default_factory=WarpAttackConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    def __post_init__(self) -> None:
        require(
            self.device in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", self.device) is not None,
            "device",
            "must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'",
        )
        require(
            self.protect.mode == "impersonate"
            or self.search.dodge_objective != "source_minus_target"
            or self.protect.target is not None,
            "search.dodge_objective",
            "source_minus_target (CLIP2Protect's dodging) needs a target photo: pass --target PHOTO",
        )
        # MAP's identity objective is the job's protect.mode; an explicit, different map.identity_mode is refused.
        if self.map.identity_mode != self.protect.mode:
            default = ScoreFinetuneConfig.identity_mode
            require(
                self.map.identity_mode == default,
                "map.identity_mode",
                f"follows protect.mode ('{self.protect.mode}'); set protect.mode (or --target) instead",
            )
            self.map = replace(self.map, identity_mode=self.protect.mode)
