"""The landmark-warp protection's optimisation: a LightningModule whose only trainable state is one face's edit.

Parameters: a translation of each facial feature and a local move of each of the 68 dlib landmarks within its
feature, each a bound × tanh so the bounds are hard (:mod:`facecloak.faces.landmark_groups`: features move up to
``max_displacement`` × inter-ocular distance, local moves up to ``feature_bound`` of the feature's extent), and,
optionally, one Lab colour and opacity per make-up layer (sigmoid boxes from :mod:`facecloak.faces.makeup`). The
edit renders as make-up first, then the thin-plate-spline warp of :mod:`facecloak.faces.warp_field`, so the make-up
moves with the face. Per step::

    loss = λ_adv · L_adv(EOT view) + λ_smooth · Laplacian(mesh) + λ_sym · asymmetry + λ_mag · ‖d‖² + λ_expr · NLL

``L_adv`` is the shared :class:`~facecloak.losses.identity.AdversarialIdentityLoss` over the attacked ensemble (or
its per-model hinge, ``adv_loss: hinge``),
through the latent search's random differentiable degradations (JPEG, resize, blur) and crop jitter when configured;
the Laplacian term is MAP's (:mod:`facecloak.losses.landmark_smoothness`), in inter-ocular
units; the expression term is MAP's expression model. Once every attacked model passes its threshold (with the
margin) on the clean crop, the parameters that passed are kept and the run ends.

One face per module and per fit, with a fresh optimiser: a run is a few hundred milliseconds per step at 256 px on a
CPU, so it keeps no stage checkpoint; the job resumes per photo.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from facecloak.faces.landmark_groups import FEATURES, face_frame, feature_of_landmark, move_bounds
from facecloak.faces.makeup import LUMINANCE_SHARE, apply_makeup, bounded_colours, bounded_opacity, makeup_masks
from facecloak.faces.regions import jitter_landmarks
from facecloak.faces.warp_field import anchor_ring, dense_field, inter_ocular, normalise_points, support_mask
from facecloak.losses.degrade import RandomDegradation
from facecloak.losses.expression import ExpressionObjective
from facecloak.losses.identity import AdversarialIdentityLoss, IdentityReference, Mode, passes_thresholds
from facecloak.losses.landmark_smoothness import laplacian_coordinates, laplacian_smoothness_loss, mesh_laplacian
from facecloak.stages.fit import build_trainer, quiet_fit, steps_loader
from facecloak.stages.latent_search_io import image_rng
from facecloak.stages.warp_attack_config import WarpAttackConfig

DLIB68_MIRROR = (
    *range(16, -1, -1),  # jaw
    *range(26, 16, -1),  # brows
    27, 28, 29, 30, 35, 34, 33, 32, 31,  # nose bridge, nostrils
    45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,  # eyes
    54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55,  # outer lips
    64, 63, 62, 61, 60, 67, 66, 65,  # inner lips
)  # fmt: skip
"""Each dlib landmark's mirror partner across the face's vertical axis (the symmetry term's pairs)."""


@dataclass
class FaceGeometry:
    """One face crop at one resolution: its pixels, where the field may act, and the make-up masks."""

    image01: Tensor
    """``[1, 3, H, W]`` in [0, 1]."""
    support: Tensor
    """``[1, 1, H, W]``: 1 on the face, 0 on and beyond the anchor ring."""
    masks: Tensor | None
    """``[1, R, H, W]`` soft make-up masks of the configured layers, or None without make-up."""


@dataclass
class WarpFace:
    """A face prepared for the attack: its landmarks and anchors (crop-normalised) and its working-size geometry."""

    landmarks: Tensor
    """``[1, 68, 2]`` crop-normalised."""
    anchors: Tensor
    """``[1, K, 2]`` crop-normalised fixed points."""
    iod: float
    """Inter-ocular distance, crop-normalised."""
    work: FaceGeometry
    landmarks5: Tensor
    """``[1, 5, 2]`` in working-crop pixels, for the FR crops."""
    boxes: Tensor
    """``[1, 4]`` face box in working-crop pixels, for the expression model."""


def face_geometry(
    image01: Tensor, landmarks: np.ndarray, anchors: np.ndarray, iod: float, config: WarpAttackConfig
) -> FaceGeometry:
    """The support mask and make-up masks of a crop ``image01`` from crop-normalised landmarks and anchors."""
    height, width = image01.shape[-2:]
    scale = np.array([width, height], np.float64)
    ring_px = anchors * scale - 0.5
    support = support_mask(ring_px, (height, width), config.anchor_margin * iod * width)
    masks = None
    if config.regions:
        every = makeup_masks(landmarks * scale - 0.5, (height, width))
        masks = torch.from_numpy(every[[_region_index(r) for r in config.regions]])[None].to(image01)
    return FaceGeometry(image01, torch.from_numpy(support)[None, None].to(image01), masks)


def face_anchors(landmarks: np.ndarray, config: WarpAttackConfig) -> np.ndarray:
    """Fixed anchors (crop-normalised) around crop-normalised landmarks."""
    return anchor_ring(landmarks, config.anchor_margin * inter_ocular(landmarks))


def _region_index(region: str) -> int:
    from facecloak.faces.makeup import REGIONS

    return REGIONS.index(region)


@dataclass
class _Judges:
    """Frozen networks the attack differentiates through; a plain container, so never in a checkpoint."""

    identity: AdversarialIdentityLoss
    reference: IdentityReference
    expression: ExpressionObjective | None


class WarpAttack(L.LightningModule):
    """One face's landmark warp (and make-up) against the attacked FR ensemble; see the module docstring."""

    def __init__(
        self,
        face: WarpFace,
        image_id: str,
        identity: AdversarialIdentityLoss,
        reference: IdentityReference,
        thresholds: Mapping[str, float],
        config: WarpAttackConfig,
        expression: ExpressionObjective | None = None,
    ) -> None:
        super().__init__()
        self.face = face
        self.image_id = image_id
        self.config = config
        self.thresholds = dict(thresholds)
        self.judges = _Judges(identity, reference, expression if config.expression is not None else None)
        self.translation_raw = nn.Parameter(torch.zeros(1, len(FEATURES), 2))
        self.displacement_raw = nn.Parameter(torch.zeros_like(face.landmarks))
        points = face.landmarks[0].double().numpy()
        translation, local = move_bounds(points, config.feature_bound, config.max_displacement * face.iod)
        self.translation_bound = torch.from_numpy(translation).float()[None]
        self.local_bound = torch.from_numpy(local).float()[None]
        self.frame = torch.from_numpy(face_frame(points)).float()
        self.feature = torch.from_numpy(feature_of_landmark())
        regions = len(config.regions)
        self.colour_raw = nn.Parameter(torch.zeros(1, regions, 3))
        self.opacity_raw = nn.Parameter(torch.full((1, regions), -2.0))  # a faint start with a live gradient
        shape = face.landmarks / face.iod
        self.laplacian = mesh_laplacian(_separated(shape[0]))
        self.reference_delta = laplacian_coordinates(shape, self.laplacian)
        eyes = face.landmarks[0, 42:48].mean(0) - face.landmarks[0, 36:42].mean(0)
        self.axis = eyes / eyes.norm()
        self.stopped_at = -1
        self.success = False
        self._degrade: RandomDegradation | None = None
        self._jitter: torch.Generator | None = None
        self._snapshot: dict[str, Tensor] | None = None
        self.similarities_before: dict[str, dict[str, float]] = {}
        self.similarities_after: dict[str, dict[str, float]] = {}

    # --- the edit ---

    def displacement(self) -> Tensor:
        """Landmark moves ``[1, 68, 2]`` (crop-normalised): its feature's translation plus its own local move."""
        raw = self.displacement_raw
        translation = self.translation_bound.to(raw) * torch.tanh(self.translation_raw)
        moves = translation[:, self.feature.to(raw.device)] + self.local_bound.to(raw) * torch.tanh(raw)
        return moves @ self.frame.to(raw).T  # face frame → crop axes

    def makeup(self) -> tuple[Tensor, Tensor]:
        """Each layer's Lab colour ``[1, R, 3]`` and opacity ``[1, R]``."""
        return bounded_colours(self.colour_raw, self.config.regions), bounded_opacity(
            self.opacity_raw, self.config.regions
        )

    def edit(self, geometry: FaceGeometry) -> tuple[Tensor, Tensor]:
        """The protected crop and its backward field, at ``geometry``'s resolution (make-up first, then the warp)."""
        from facecloak.faces.warp_field import apply_field

        image = geometry.image01
        if geometry.masks is not None:
            colours, opacity = self.makeup()
            share = self.config.makeup_luminance_share
            shares = [LUMINANCE_SHARE[r] if share is None else share for r in self.config.regions]
            image = apply_makeup(image, geometry.masks, colours, opacity, shares)
        landmarks, anchors = self.face.landmarks.to(image), self.face.anchors.to(image)
        c = self.config
        cap = c.max_displacement * self.face.iod
        moves = self.displacement()
        field = dense_field(landmarks, moves, anchors, geometry.support, c.field_grid, cap, c.stiffness, c.field_bound)
        return apply_field(image, field, geometry.support), field

    # --- the objective ---

    def losses(self, images01: Tensor) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
        """Every weighted term (``[1]`` each, and their sum ``loss``) and the attacked models' similarities."""
        c = self.config
        view = self._degrade(images01) if self._degrade is not None else images01
        landmarks5 = self.face.landmarks5
        if self._jitter is not None:
            landmarks5 = jitter_landmarks(landmarks5, c.fr_crop_jitter, self._jitter)
        adv, sims = self.judges.identity(view, landmarks5, self.judges.reference)
        if c.adv_loss == "hinge":
            adv = self._hinge(sims)
        moves = self.displacement() / self.face.iod
        moved = self.face.landmarks / self.face.iod + moves
        mirrored = moves[:, list(DLIB68_MIRROR)]
        axis = self.axis.to(moves)
        mirrored = mirrored - 2.0 * (mirrored @ axis)[..., None] * axis
        terms = {
            "adv": adv,
            "smooth": laplacian_smoothness_loss(moved, self.reference_delta, self.laplacian),
            "symmetry": (moves - mirrored).square().sum(-1).mean(-1),
            "magnitude": moves.square().sum(-1).mean(-1),
            "expression": torch.zeros_like(adv),
        }
        if self.judges.expression is not None:
            terms["expression"] = self.judges.expression(images01, self.face.boxes)
        weights = {"adv": c.lambda_adv, "smooth": c.lambda_smooth, "symmetry": c.lambda_symmetry}
        weights.update(magnitude=c.lambda_magnitude, expression=c.lambda_expression)
        terms["loss"] = sum((weights[k] * terms[k] for k in weights), torch.zeros_like(adv))
        return terms, sims

    def _hinge(self, sims: Mapping[str, Mapping[str, Tensor]]) -> Tensor:
        """Mean over the attacked models of how far each still is from ``adv_margin`` past its threshold."""
        margin = self.config.adv_margin
        if self.judges.identity.mode == "dodge":
            gaps = [sim - (self.thresholds[name] - margin) for name, sim in sims["source"].items()]
        else:
            gaps = [self.thresholds[name] + margin - sim for name, sim in sims["target"].items()]
        return torch.stack(gaps, dim=1).clamp_min(0.0).mean(dim=1)

    @torch.no_grad()
    def clean_similarities(self, images01: Tensor) -> dict[str, dict[str, Tensor]]:
        """Similarities on the undegraded crop at the exact landmarks: what success and the early stop judge."""
        return self.judges.identity(images01, self.face.landmarks5, self.judges.reference)[1]

    def passes(self, sims: Mapping[str, Mapping[str, Tensor]]) -> bool:
        """Whether every attacked model is fooled with the configured margin."""
        mode = cast(Mode, self.judges.identity.mode)
        return bool(passes_thresholds(sims, self.thresholds, mode, self.config.early_stop_margin)[0])

    # --- Lightning hooks ---

    def on_fit_start(self) -> None:
        """Move the face and judges to the run's device; seed this face's random streams; measure the original."""
        device = self.device
        self.judges.identity.to(device).eval().requires_grad_(False)
        if self.judges.expression is not None:
            self.judges.expression.to(device)
        ref = self.judges.reference
        target = None if ref.target is None else {k: v.to(device) for k, v in ref.target.items()}
        self.judges.reference = IdentityReference({k: v.to(device) for k, v in ref.source.items()}, target)
        f, w = self.face, self.face.work
        self.face = WarpFace(
            f.landmarks.to(device), f.anchors.to(device), f.iod,
            FaceGeometry(w.image01.to(device), w.support.to(device), None if w.masks is None else w.masks.to(device)),
            f.landmarks5.to(device), f.boxes.to(device),
        )  # fmt: skip
        c = self.config
        self._degrade = (
            RandomDegradation(c.fr_degradation, image_rng(c.seed, self.image_id, "fr"))
            if c.fr_degradation is not None
            else None
        )
        self._jitter = image_rng(c.seed, self.image_id, "fr_crop") if c.fr_crop_jitter > 0 else None
        self.similarities_before = _plain(self.clean_similarities(self.face.work.image01))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        """End the run once the face has passed (-1 ends the single epoch)."""
        return -1 if self.stopped_at >= 0 else None

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """One Adam step on the edit; freeze it (snapshot) the first time the clean crop passes."""
        images, _ = self.edit(self.face.work)
        terms, sims = self.losses(images)
        if self.config.early_stop:
            exact = self._degrade is None and self._jitter is None
            if self.passes(sims if exact else self.clean_similarities(images)):
                self.stopped_at = self.global_step
                self._snapshot = {k: v.detach().clone() for k, v in self.state_dict().items()}
        for key, value in terms.items():
            self.log(f"warp/{key}", value.detach().mean(), prog_bar=key == "loss", batch_size=1)
        for name, sim in sims["source"].items():
            self.log(f"warp/sim_source/{name}", sim.detach().mean(), batch_size=1)
        return terms["loss"].sum()

    def on_train_end(self) -> None:
        """Put back the edit that passed (Adam has stepped past it) and judge the final crop."""
        if self._snapshot is not None:
            self.load_state_dict(self._snapshot, strict=True)
        with torch.no_grad():
            images, _ = self.edit(self.face.work)
            self.similarities_after = _plain(self.clean_similarities(images))
            self.success = self.passes(self.clean_similarities(images))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """A fresh Adam over this face's displacements and make-up only."""
        return torch.optim.Adam(self.parameters(), lr=self.config.lr)


MESH_SEPARATION = 1e-3
"""Landmarks that coincide (a closed mouth's inner lips) are moved apart by about this many eye distances before the
mesh is triangulated, so each keeps its neighbours; the loss itself compares the true points."""


def _separated(points: Tensor) -> Tensor:
    """``points`` [N, 2] with a fixed tiny offset each, so that coincident points triangulate."""
    offsets = torch.from_numpy(np.random.default_rng(0).uniform(-1.0, 1.0, tuple(points.shape)))
    return points + MESH_SEPARATION * offsets.to(points)


def _plain(sims: Mapping[str, Mapping[str, Tensor]]) -> dict[str, dict[str, float]]:
    return {key: {name: round(float(v[0]), 4) for name, v in per.items()} for key, per in sims.items()}


def fit_warp_attack(module: WarpAttack, trainer_kwargs: Mapping[str, Any] | None = None) -> WarpAttack:
    """Run the attack for ``config.steps`` steps (or until it passes) with a Trainer; the module holds the result."""
    trainer = build_trainer(module.config.steps, trainer_kwargs, "warp.steps")
    quiet_fit(trainer, module, steps_loader(module.config.steps))
    return module


def prepare_face(
    image01: Tensor,
    landmarks68_px: np.ndarray,
    landmarks5_px: np.ndarray,
    anchors: np.ndarray,
    config: WarpAttackConfig,
) -> WarpFace:
    """A face crop (any resolution) → the attack's inputs at ``config.work_size`` (anchors crop-normalised)."""
    import torch.nn.functional as F

    from facecloak.losses.expression import DEFAULT_BOX_MARGIN, face_boxes_from_landmarks

    size = image01.shape[-1]
    landmarks = normalise_points(landmarks68_px, (size, size))
    work = F.interpolate(image01, size=(config.work_size, config.work_size), mode="area")
    iod = inter_ocular(landmarks)
    landmarks5 = torch.as_tensor(normalise_points(landmarks5_px, (size, size)) * config.work_size - 0.5)[None].float()
    return WarpFace(
        landmarks=torch.as_tensor(landmarks)[None].float(),
        anchors=torch.as_tensor(anchors)[None].float(),
        iod=iod,
        work=face_geometry(work, landmarks, anchors, iod, config),
        landmarks5=landmarks5,
        boxes=face_boxes_from_landmarks(landmarks5, DEFAULT_BOX_MARGIN),
    )
