"""Typed schemas for every configuration group; a bad value fails at start with a message naming its key.

OmegaConf checks key names and types when a YAML file is merged into these dataclasses; ``__post_init__``
checks value ranges when the merged config is turned into objects (:func:`facecloak.config.compose.compose`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from facecloak.errors import ConfigError
from facecloak.inversion.projector import ProjectorConfig
from facecloak.models.ddpm import DDPMConfig
from facecloak.runtime.trainer import LoggerConfig, TrainerConfig
from facecloak.stages.latent_search import LatentSearchConfig
from facecloak.stages.pivot_tuning import PivotTuningConfig
from facecloak.stages.score_finetune import FACE_CROP_SCALE, ScoreFinetuneConfig
from facecloak.stages.warp_attack_config import WarpAttackConfig

KNOWN_DETECTORS = ("mtcnn", "scrfd")
DEFAULT_FAR_LEVELS = (0.1, 0.01, 0.001)


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


@dataclass
class WeightsConfig:
    """Where fetched weights are cached (``None``: ``$FACECLOAK_CHECKPOINTS`` or ``checkpoints/``)."""

    cache_dir: str | None = None


@dataclass
class FacesConfig:
    """Face detection and alignment for full photos."""

    detector: str = "mtcnn"
    # MTCNN: smallest face side in pixels, and the P/R/O-Net score thresholds (facenet-pytorch defaults).
    min_face_size: int = 20
    thresholds: list[float] = field(default_factory=lambda: [0.6, 0.7, 0.7])
    # Detection runs on a copy downscaled to this longest side; landmarks are mapped back to the full photo.
    detect_max_side: int = 1600
    # Photos with more pixels are refused (decompression-bomb guard); raise it for gigapixel scans.
    max_pixels: int = 100_000_000
    # Replace the detector's five points by ones derived from dlib's 68-point predictor (eye centres from six
    # contour points each). On the shared photo set this lifts the weaker recognisers' ROC-AUC (faceres-deep
    # 0.982 -> 0.984) because MTCNN's eye points are coarse; see docs/benchmarks.md.
    refine_landmarks: bool = True
    # Output size of FFHQ-style crops for the generator (the FFHQ recipe uses 1024).
    ffhq_size: int = 1024
    scrfd_model: str | None = None

    def __post_init__(self) -> None:
        _require(self.detector in KNOWN_DETECTORS, "faces.detector", f"must be one of {KNOWN_DETECTORS}")
        _require(self.min_face_size >= 8, "faces.min_face_size", "must be at least 8 pixels")
        _require(
            len(self.thresholds) == 3 and all(0 < t < 1 for t in self.thresholds),
            "faces.thresholds",
            "needs three MTCNN stage thresholds in (0, 1)",
        )
        _require(self.detect_max_side >= 64, "faces.detect_max_side", "must be at least 64")
        _require(self.max_pixels > 0, "faces.max_pixels", "must be positive")
        _require(16 <= self.ffhq_size <= 1024, "faces.ffhq_size", "must be between 16 and 1024")


@dataclass
class FRConfig:
    """Which face-recognition models are attacked, which are held out for black-box evaluation."""

    attacked: list[str] = field(default_factory=lambda: ["mobilefacenet_casia", "faceres"])
    held_out: list[str] = field(default_factory=lambda: ["dlib_native"])
    far_levels: list[float] = field(default_factory=lambda: list(DEFAULT_FAR_LEVELS))
    # Thresholds calibrated with `facecloak fr calibrate` (JSON); published ones come from the registry.
    calibration: str | None = None

    def __post_init__(self) -> None:
        from facecloak.registry.entries import get_entry

        for key in ("attacked", "held_out"):
            for name in getattr(self, key):
                try:
                    entry = get_entry(name)
                except ConfigError as err:
                    raise ConfigError(f"config key 'fr.{key}': {err}") from err
                _require(entry.kind == "face_recognition", f"fr.{key}", f"'{name}' is not a face-recognition model")
        for attacked in self.attacked:
            for held in self.held_out:
                same = get_entry(attacked).same_network_as == held or get_entry(held).same_network_as == attacked
                _require(not same, "fr.attacked", f"'{attacked}' is the same network as held-out '{held}'")
        overlap = set(self.attacked) & set(self.held_out)
        _require(not overlap, "fr.held_out", f"{sorted(overlap)} cannot be attacked and held out at once")
        _require(all(0 < f < 1 for f in self.far_levels), "fr.far_levels", "false-accept rates must be in (0, 1)")


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
        _require(self.inversion in INVERSIONS, "generator.inversion", f"must be one of {INVERSIONS}")
        _require(self.size >= 8 and self.size & (self.size - 1) == 0, "generator.size", "must be a power of two")
        _require(self.channel_max >= 1 and self.channel_base >= 1, "generator.channel_max", "must be positive")


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
    feather: float = 0.05
    output_format: str = "png"
    jpeg_quality: int = 95
    max_faces: int = 8
    # Checkpoints of finished stages, so an interrupted photo resumes from its last stage.
    keep_stage_checkpoints: bool = True

    def __post_init__(self) -> None:
        _require(self.method in METHODS, "protect.method", f"must be one of {METHODS}")
        _require(self.mode in PROTECT_MODES, "protect.mode", f"must be one of {PROTECT_MODES}")
        _require(
            self.mode == "dodge" or self.target is not None, "protect.target", "impersonation needs a target photo"
        )
        _require(0 < self.far < 1, "protect.far", "must be in (0, 1)")
        _require(self.paste in PASTE_MODES, "protect.paste", f"must be one of {PASTE_MODES}")
        _require(0 <= self.feather < 0.5, "protect.feather", "must be in [0, 0.5)")
        _require(self.output_format in OUTPUT_FORMATS, "protect.output_format", f"must be one of {OUTPUT_FORMATS}")
        _require(1 <= self.jpeg_quality <= 100, "protect.jpeg_quality", "must be in [1, 100]")
        _require(self.max_faces >= 1, "protect.max_faces", "must be at least 1")


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
        _require(self.steps >= 1, "map.steps", "must be at least 1")
        _require(self.checkpoint_every >= 1, "map.checkpoint_every", "must be at least 1")
        _require(self.crop_scale >= 1.0, "map.crop_scale", "must be at least 1 (the crop holds the whole face box)")
        if self.network is not None:
            try:
                kind = get_entry(self.network).kind
            except ConfigError as err:
                raise ConfigError(f"config key 'map.network': {err}") from err
            _require(kind == "diffusion", "map.network", f"'{self.network}' is not a diffusion score network")

    def finetune_config(self) -> ScoreFinetuneConfig:
        """The fine-tuning stage's own options (this section without the job's keys)."""
        return ScoreFinetuneConfig(**{f.name: getattr(self, f.name) for f in fields(ScoreFinetuneConfig)})


@dataclass
class AppConfig:
    """The whole configuration of a facecloak run."""

    seed: int = 0
    device: str = "cpu"
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
        _require(
            self.device == "cpu" or self.device.startswith(("cuda", "mps")),
            "device",
            "must be 'cpu', 'cuda', 'cuda:N' or 'mps'",
        )
        # MAP's identity objective is the job's protect.mode; an explicit, different map.identity_mode is refused.
        if self.map.identity_mode != self.protect.mode:
            default = ScoreFinetuneConfig.identity_mode
            _require(
                self.map.identity_mode == default,
                "map.identity_mode",
                f"follows protect.mode ('{self.protect.mode}'); set protect.mode (or --target) instead",
            )
            self.map = replace(self.map, identity_mode=self.protect.mode)
