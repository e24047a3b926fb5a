"""Settings of the landmark-warp protection (``protect.method: warp``, config section ``warp:``); Lightning-free.

The edit a person sees is a slight change of face shape or expression (landmark displacements bounded relative to
the inter-ocular distance) and, optionally, make-up; the objective trades the attacked FR ensemble against the
landmark mesh's smoothness, left/right symmetry, the size of the displacement and, optionally, an expression.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from facecloak.errors import ConfigError
from facecloak.faces.makeup import REGIONS
from facecloak.faces.warp_field import DEFAULT_STIFFNESS, FIELD_BOUNDS
from facecloak.losses.degrade import DegradationConfig

ADV_LOSSES = ("mean", "hinge")
"""How the attacked models' similarities become one adversarial term (see ``WarpAttackConfig.adv_loss``)."""

MAX_CROP_JITTER = 0.5
"""FR crop jitter at or beyond this no longer shows a face (as in the latent search)."""


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key 'warp.{key}': {message}")


@dataclass(frozen=True)
class WarpAttackConfig:
    """Landmark-warp protection: displacement bound, field, make-up, loss weights, optimiser and stopping."""

    steps: int = 100
    lr: float = 0.05
    """Adam learning rate on the unconstrained parameters (displacements through tanh, make-up through sigmoids)."""
    max_displacement: float = 0.06
    """Largest move of any landmark and of any pixel of the dense field, as a fraction of the inter-ocular distance
    (hard bounds: a tanh on each landmark, a rescaling of the field)."""
    field_bound: str = "rescale"
    """How the dense field is kept within ``max_displacement``: ``rescale`` shrinks the whole field when any point
    exceeds it, ``clamp`` shortens only the vectors that do (the rest of the face keeps its moves)."""
    feature_bound: float | None = None
    """Local moves within a feature (an eye's opening, the lips' height, a brow's height over its eye) at most this
    fraction of that feature's extent, while whole features move up to ``max_displacement``
    (:mod:`facecloak.faces.landmark_groups`); None: every landmark is bounded by ``max_displacement`` alone."""
    stiffness: float = DEFAULT_STIFFNESS
    """Smoothing of the thin-plate spline (0: exact interpolation of the landmark moves, which can fold the image)."""
    anchor_margin: float = 0.4
    """Fixed anchors sit this far (× inter-ocular distance) outside the face hull; beyond them nothing moves."""
    field_grid: int = 64
    """The spline is evaluated on this lattice and upsampled (it is smooth at that scale)."""
    work_size: int = 256
    """Side of the face crop the optimisation sees; the final field is applied to the photo's full resolution."""
    crop_margin: float = 0.15
    """The crop holds the anchor ring plus this fraction of its size on each side."""
    makeup: tuple[str, ...] = ()
    """Make-up layers to optimise (any of :data:`~facecloak.faces.makeup.REGIONS`); empty: geometry only."""
    makeup_luminance_share: float | None = None
    """How much of a layer's own lightness replaces the skin's, for every layer; None: each layer's own
    (:data:`~facecloak.faces.makeup.LUMINANCE_SHARE`)."""
    expression: str | None = None
    """An expression the warp should read as (e.g. happy: a slight smile carries the change); None: none asked."""
    adv_loss: str = "mean"
    """``mean``: the attacked models' mean similarity (push all, as the latent search); ``hinge``: each model's
    similarity past ``threshold − adv_margin`` only, so models already fooled stop pulling and the stubborn ones get
    the whole step."""
    adv_margin: float = 0.2
    """How far below its threshold the hinge keeps pushing each model."""
    lambda_adv: float = 1.0
    lambda_smooth: float = 20.0
    """Laplacian smoothness on the landmark mesh (in inter-ocular units): features move with their neighbours."""
    lambda_symmetry: float = 5.0
    """Left/right symmetry of the displacement (mirrored about the face's axis)."""
    lambda_magnitude: float = 2.0
    """Mean squared displacement (inter-ocular units): no larger than the identity change needs."""
    lambda_expression: float = 0.1
    """Weight of the expression's negative log-probability when ``expression`` is set."""
    early_stop: bool = True
    early_stop_margin: float = 0.0
    """Keep pushing until every attacked model is this far past its threshold (buys transfer)."""
    fr_crop_jitter: float = 0.0
    fr_degradation: DegradationConfig | None = None
    """Expectation over transformation on the FR branch (e.g. differentiable JPEG); None: the clean crop."""
    seed: int = 0

    def __post_init__(self) -> None:
        from facecloak.losses.expression import expression_index

        if isinstance(self.fr_degradation, Mapping):
            object.__setattr__(self, "fr_degradation", DegradationConfig(**self.fr_degradation))
        object.__setattr__(self, "makeup", tuple(str(r) for r in self.makeup))
        _require(self.steps >= 1, "steps", "must be at least 1")
        _require(self.lr > 0, "lr", "must be positive")
        _require(0 < self.max_displacement <= 0.5, "max_displacement", "must be in (0, 0.5] of the eye distance")
        _require(0 <= self.stiffness <= 1, "stiffness", "must be in [0, 1]")
        _require(0 < self.anchor_margin <= 3, "anchor_margin", "must be in (0, 3] eye distances")
        _require(8 <= self.field_grid <= 512, "field_grid", "must be between 8 and 512")
        _require(self.work_size >= 64, "work_size", "must be at least 64 pixels")
        _require(0 <= self.crop_margin <= 1, "crop_margin", "must be in [0, 1]")
        unknown = sorted(set(self.makeup) - set(REGIONS))
        _require(not unknown, "makeup", f"unknown layers {unknown}; choose from {list(REGIONS)}")
        _require(len(set(self.makeup)) == len(self.makeup), "makeup", "names a layer twice")
        share = self.makeup_luminance_share
        _require(share is None or 0 <= share <= 1, "makeup_luminance_share", "must be in [0, 1] or null")
        _require(self.field_bound in FIELD_BOUNDS, "field_bound", f"must be one of {list(FIELD_BOUNDS)}")
        bound = self.feature_bound
        _require(bound is None or 0 < bound <= 1, "feature_bound", "must be in (0, 1] of a feature's extent or null")
        _require(self.adv_loss in ADV_LOSSES, "adv_loss", f"must be one of {list(ADV_LOSSES)}")
        _require(0 <= self.adv_margin < 1, "adv_margin", "must be in [0, 1)")
        if self.expression is not None:
            try:
                expression_index(self.expression)
            except ConfigError as err:
                raise ConfigError(f"config key 'warp.expression': {err}") from err
        for key in ("lambda_adv", "lambda_smooth", "lambda_symmetry", "lambda_magnitude", "lambda_expression"):
            _require(getattr(self, key) >= 0, key, "must be >= 0")
        _require(self.lambda_adv > 0, "lambda_adv", "must be positive: without it nothing protects the face")
        _require(self.early_stop_margin >= 0, "early_stop_margin", "must be >= 0")
        _require(0 <= self.fr_crop_jitter < MAX_CROP_JITTER, "fr_crop_jitter", f"must be in [0, {MAX_CROP_JITTER})")
        _require(self.seed >= 0, "seed", "must be >= 0")

    @property
    def regions(self) -> tuple[str, ...]:
        """The make-up layers in the order they are applied."""
        return tuple(r for r in REGIONS if r in self.makeup)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for records and checkpoints."""
        return asdict(self)
