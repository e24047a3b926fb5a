"""MAP stage: fine-tune a diffusion score network so regenerated faces change expression and hide their identity.

Machine Pareidolia (MAP, Le & Woo, AAAI 2026) carries the adversarial identity change in a natural change of
facial expression. As in DiffusionCLIP, each photo is DDIM-inverted once to ``x_t0`` (with the network before
fine-tuning; the latents stay fixed) and every training step regenerates it with the network being tuned, with
gradients through the DDIM chain. On the regenerated image:

* identity (:class:`~facecloak.losses.identity.AdversarialIdentityLoss`): away from the user (dodging) or toward a
  target (impersonation) under the attacked face-recognition ensemble;
* expression (:class:`~facecloak.losses.expression.ExpressionObjective`): the chosen expression;
* naturalness: pixel L1 and SSIM to the original, Laplacian smoothness of the 68 face-api landmarks
  (:mod:`facecloak.losses.landmark_smoothness`), and the score-matching (ε-prediction) loss on noised originals,
  which keeps the network a denoiser.

The identity and expression gradients are combined by conflict projection
(:class:`~facecloak.losses.gradient_projection.GradientProjector`, PCGrad with optional EMA); the naturalness
gradient is added on top. Optimisation is manual for that reason.

With ``composite`` (:func:`prepare_finetune_faces`) the losses judge the face as the protection pipeline will share
it rather than the bare regeneration: the real crop, at any resolution, plus the regeneration's change upsampled and
under the paste-back mask. That is what lets a network without a face prior (one that cannot reproduce the photo)
still carry the edit, and what keeps a low-resolution network's edit effective on the sharp photo.

The network weights are shared by all images, so data-parallel training is possible: each rank regenerates its own
images and the per-objective gradients are averaged over ranks *before* projection (same result as one large
batch). Frozen judges (face-recognition models, expression and landmark nets) are held outside the registered
submodules, in eval mode, so checkpoints hold only the score network (and the optimizer and projector state).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from kornia.losses import ssim_loss
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from facecloak.diffusion import GradMode, NoiseSchedule, ddim_generate, ddim_invert
from facecloak.errors import ConfigError
from facecloak.faces.align import transform_points, warp_image
from facecloak.faces.detect import Face
from facecloak.losses.expression import ExpressionObjective, face_boxes_from_landmarks, faceapi_crop
from facecloak.losses.gradient_projection import GradientProjector, flatten_grads, gradient_cosine, unflatten_like
from facecloak.losses.identity import AdversarialIdentityLoss, IdentityReference
from facecloak.losses.landmark_smoothness import laplacian_coordinates, laplacian_smoothness_loss, mesh_laplacian
from facecloak.models.ddpm import DDPMUNet
from facecloak.stages.score_finetune_config import FACE_CROP_SCALE, ScoreFinetuneConfig

SSIM_WINDOW = 11
"""Gaussian window of the SSIM fidelity term (Wang et al. 2004)."""

SEED_STRIDE = 1_000_003
"""Separates the per-step random streams of different seeds (a prime, so seed·stride + step never collides early)."""

Composite = Literal["delta", "replace"]
"""How a regenerated face enters the shared photo (as in ``protect.paste``): its change, or the face itself."""


# --- data ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FaceCrop:
    """A square face crop at the network's resolution, its landmarks, and the photo→crop matrix for paste-back."""

    image01: torch.Tensor
    """``[3, size, size]`` RGB in [0, 1]."""
    landmarks5: torch.Tensor
    """``[5, 2]`` landmarks in crop pixels."""
    matrix: np.ndarray


def square_face_crop(rgb: np.ndarray, face: Face, size: int, scale: float = FACE_CROP_SCALE) -> FaceCrop:
    """Cut the square around a detected face that the score network sees (axis-aligned, antialiased)."""
    if scale <= 0 or size < 1:
        raise ConfigError(f"face crop scale={scale} and size={size} must be positive")
    left, top, right, bottom = face.box
    side = scale * max(right - left, bottom - top)
    zoom = size / side
    # Box centre (pixel-centre coordinates) goes to the crop centre ((size - 1) / 2).
    cx, cy = (left + right) / 2.0, (top + bottom) / 2.0
    matrix = np.array([[zoom, 0.0, (size - 1) / 2.0 - zoom * cx], [0.0, zoom, (size - 1) / 2.0 - zoom * cy]])
    crop = warp_image(rgb, matrix, (size, size), interpolation="bilinear", border="reflect")
    return FaceCrop(
        image01=torch.from_numpy(crop).permute(2, 0, 1).float() / 255.0,
        landmarks5=torch.from_numpy(transform_points(matrix, face.landmarks5)).float(),
        matrix=matrix,
    )


class FinetuneFaces(Dataset):
    """Per-image tensors the training step needs, precomputed once; items are dicts keyed as in :meth:`__getitem__`.

    Keys: ``index`` (image id), ``x0`` (original in [-1, 1]), ``x_t0`` (fixed DDIM latent), ``landmarks5``,
    ``boxes`` (face crop box), ``laplacian`` and ``delta`` (landmark mesh and original Laplacian coordinates),
    ``source`` / ``target`` (per-model reference embeddings).
    """

    def __init__(self, tensors: dict[str, Any]) -> None:
        self.tensors = tensors
        self.length = int(tensors["x0"].shape[0])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {key: _index(value, i) for key, value in self.tensors.items()}


def _index(value: Any, i: int) -> Any:
    if isinstance(value, Mapping):
        return {k: _index(v, i) for k, v in value.items()}
    return value[i]


@torch.no_grad()
def prepare_finetune_faces(
    unet: DDPMUNet,
    images01: torch.Tensor,
    landmarks5: torch.Tensor,
    config: ScoreFinetuneConfig,
    identity_loss: AdversarialIdentityLoss,
    landmark_net: nn.Module | None = None,
    target_embeddings: Mapping[str, torch.Tensor] | None = None,
    schedule: NoiseSchedule | None = None,
    composite: Composite | None = None,
    change_mask: torch.Tensor | None = None,
) -> FinetuneFaces:
    """Invert the photos with the network *before* fine-tuning and gather every fixed reference the losses need.

    ``images01`` are ``[N, 3, S, S]`` square face photos in [0, 1] and ``landmarks5`` their five landmarks in those
    pixels; ``S`` is the network's resolution ``R`` unless the photos are composited. ``target_embeddings`` (per
    model, ``[D]`` or ``[N, D]``) are needed for impersonation.

    ``composite`` makes the losses judge what paste-back will share instead of the bare regeneration:
    ``"delta"`` adds the change (regeneration by the tuned network minus the regeneration by this network, before
    fine-tuning) to the real photo, ``"replace"`` blends in the regeneration itself; both upsampled from ``R`` to
    ``S`` and under ``change_mask`` (``[N, 1, S, S]`` weights in [0, 1]; default: everywhere). The network then sees
    the photos downsampled to ``R``. See :meth:`ScoreFinetune.composite`.
    """
    schedule = schedule or NoiseSchedule()
    n = images01.shape[0]
    size = unet.config.resolution
    if tuple(images01.shape[-2:]) == (size, size):
        network_images = images01
    elif composite is not None:
        network_images = F.interpolate(images01, size=(size, size), mode="area")  # antialiased, like a photo crop
    else:
        raise ConfigError(
            f"photos of {list(images01.shape[-2:])} pixels need a composite mode; without one they must be at the "
            f"network's resolution {size}"
        )
    x0 = network_images * 2.0 - 1.0
    was_training = unet.training
    unet.eval()
    x_t0 = ddim_invert(unet, schedule, x0, t0=config.t0, num_steps=config.inversion_steps)
    unet.train(was_training)
    boxes = face_boxes_from_landmarks(landmarks5.float(), config.box_margin)
    tensors: dict[str, Any] = {
        "index": torch.arange(n),
        "x0": x0,
        "x_t0": x_t0,
        "landmarks5": landmarks5.float(),
        "boxes": boxes,
        "source": identity_loss.embed(images01, landmarks5.float()),
    }
    if target_embeddings is not None:
        tensors["target"] = {name: emb.expand(n, -1).clone() for name, emb in target_embeddings.items()}
    elif config.identity_mode == "impersonate":
        raise ConfigError("map.identity_mode='impersonate' needs target embeddings (embed a photo of the target)")
    if config.weights.landmark > 0:
        if landmark_net is None:
            raise ConfigError("map.weights.landmark > 0 needs a 68-landmark network (load_faceapi_model('landmark68'))")
        reference = landmark_net(faceapi_crop(images01, boxes))
        tensors["laplacian"] = mesh_laplacian(reference).to(images01)
        tensors["delta"] = laplacian_coordinates(reference, tensors["laplacian"], config.landmark_scale_invariant)
    if composite is not None:
        tensors.update(_composite_tensors(unet, images01, x_t0, config, schedule, composite, change_mask))
    elif change_mask is not None:
        raise ConfigError("a change mask needs a composite mode ('delta' or 'replace') to apply it to")
    return FinetuneFaces(tensors)


def _composite_tensors(
    unet: DDPMUNet,
    images01: torch.Tensor,
    x_t0: torch.Tensor,
    config: ScoreFinetuneConfig,
    schedule: NoiseSchedule,
    composite: str,
    change_mask: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """``photo`` and ``mask`` at the photos' resolution, and for delta the ``base`` regeneration before tuning."""
    if composite not in get_args(Composite):
        raise ConfigError(f"composite={composite!r} must be one of {list(get_args(Composite))}")
    n, _, height, width = images01.shape
    mask = torch.ones(n, 1, height, width) if change_mask is None else change_mask
    if mask.shape != (n, 1, height, width):
        raise ConfigError(f"change mask must have shape {[n, 1, height, width]}, got {list(mask.shape)}")
    tensors = {"photo": images01, "mask": mask.to(images01)}
    if composite == "delta":
        was_training = unet.training
        unet.eval()
        regenerated = ddim_generate(
            unet, schedule, x_t0, t0=config.t0, num_steps=config.generation_steps, grad_mode="none"
        )
        unet.train(was_training)
        tensors["base"] = (regenerated + 1.0) / 2.0
    return tensors


def _resize_like(images: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``images`` at ``like``'s height and width (bicubic, differentiable); unchanged when they already match."""
    if images.shape[-2:] == like.shape[-2:]:
        return images
    return F.interpolate(images, size=tuple(like.shape[-2:]), mode="bicubic", align_corners=False)


# --- the Lightning module --------------------------------------------------------------------------------------------


@dataclass
class FrozenJudges:
    """The networks that score generated faces; a plain container so they are not registered submodules."""

    identity: AdversarialIdentityLoss
    expression: ExpressionObjective
    landmark: nn.Module | None

    def to(self, device: torch.device) -> FrozenJudges:
        """Move every judge (kept in eval mode) to ``device``."""
        for net in (self.identity, self.expression, self.landmark):
            if net is not None:
                net.to(device).eval().requires_grad_(False)
        return self


class ScoreFinetune(L.LightningModule):
    """MAP fine-tuning of ``unet``; the trained network is ``self.unet`` (see :func:`protect_with_finetuned`)."""

    def __init__(
        self,
        unet: DDPMUNet,
        config: ScoreFinetuneConfig,
        identity_loss: AdversarialIdentityLoss,
        expression_loss: ExpressionObjective,
        landmark_net: nn.Module | None = None,
        schedule: NoiseSchedule | None = None,
    ) -> None:
        super().__init__()
        if expression_loss.expression != config.expression.strip().lower():
            raise ConfigError(
                f"map.expression={config.expression!r} but the expression objective targets "
                f"{expression_loss.expression!r}; build it with ExpressionObjective(config.expression)"
            )
        if identity_loss.mode != config.identity_mode:
            raise ConfigError(
                f"map.identity_mode={config.identity_mode!r} but the identity loss is {identity_loss.mode!r}"
            )
        if config.weights.landmark > 0 and landmark_net is None:
            raise ConfigError("map.weights.landmark > 0 needs a 68-landmark network (load_faceapi_model('landmark68'))")
        self.save_hyperparameters(
            ignore=["unet", "config", "identity_loss", "expression_loss", "landmark_net", "schedule"]
        )
        self.hparams.update(config=config.to_dict(), unet_config=unet.config.to_dict())
        self.automatic_optimization = False
        self.config = config
        self.unet = unet
        self.schedule = schedule or NoiseSchedule()
        self.judges = FrozenJudges(identity_loss, expression_loss, landmark_net)
        self.projector = GradientProjector(2, ema_decay=config.gradient_ema, project=config.project_gradients)

    # --- set-up ---

    def on_fit_start(self) -> None:
        """Frozen judges follow the score network to its device; DDP's own gradient sync is switched off.

        Gradients come from ``torch.autograd.grad`` (one per objective) and are averaged over ranks explicitly before
        projection, so DDP must not expect a ``backward()`` after each forward.
        """
        self.judges.to(self.device)
        wrapper = getattr(self.trainer.strategy, "model", None)
        if isinstance(wrapper, DistributedDataParallel):
            wrapper.require_backward_grad_sync = False

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam on the score network only (DiffusionCLIP fine-tunes with Adam, no weight decay)."""
        return torch.optim.Adam(self.unet.parameters(), lr=self.config.lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the gradient EMA, so a resumed run continues exactly where it stopped."""
        checkpoint["gradient_projection"] = self.projector.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the gradient EMA saved by :meth:`on_save_checkpoint`."""
        self.projector.load_state_dict(checkpoint["gradient_projection"])

    # --- losses ---

    def regenerate(self, x_t0: torch.Tensor) -> torch.Tensor:
        """Regenerate images (about [0, 1]) from their fixed latents, differentiably w.r.t. the score network.

        Not clamped: a clamp would zero the gradient of out-of-range pixels, so the fidelity terms could not pull
        them back. :func:`protect_with_finetuned` clamps the final output.
        """
        c = self.config
        grad_mode: GradMode = c.grad_mode  # type: ignore[assignment]  # validated in ScoreFinetuneConfig
        x = ddim_generate(self.unet, self.schedule, x_t0, t0=c.t0, num_steps=c.generation_steps, grad_mode=grad_mode)
        return (x + 1.0) / 2.0

    def composite(self, regenerated01: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        """The face as the photo will show it, ``photo + mask · (shown − photo)``, when the batch has a composite.

        Delta: ``shown`` is the photo plus the change fine-tuning made (regeneration minus ``base``, the
        regeneration before fine-tuning), so an untouched network changes nothing, even one that cannot reproduce
        the face. Replace: ``shown`` is the regeneration. Either is upsampled bicubically to the photo's resolution,
        as paste-back does. Without a composite, the bare regeneration.
        """
        if "photo" not in batch:
            return regenerated01
        photo = batch["photo"]
        if "base" in batch:
            shown = photo + _resize_like(regenerated01 - batch["base"], photo)
        else:
            shown = _resize_like(regenerated01, photo)
        return photo + batch["mask"] * (shown - photo)

    def score_matching_loss(self, x0: torch.Tensor) -> torch.Tensor:
        """ε-prediction MSE at random timesteps; the randomness depends only on (seed, step), so resuming is exact."""
        generator = torch.Generator().manual_seed(self.config.seed * SEED_STRIDE + self.global_step)
        t = torch.randint(0, self.schedule.num_timesteps, (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        t = t.to(x0.device)
        return F.mse_loss(self.unet(self.schedule.add_noise(x0, noise, t), t), noise)

    def losses(
        self, batch: Mapping[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted identity, expression and naturalness losses of one batch, plus the unweighted terms to log."""
        w = self.config.weights
        images01 = self.composite(self.regenerate(batch["x_t0"]), batch)
        original01 = batch["photo"] if "photo" in batch else (batch["x0"] + 1.0) / 2.0
        reference = IdentityReference(source=batch["source"], target=batch.get("target"))
        identity, sims = self.judges.identity(images01, batch["landmarks5"], reference)
        logits = self.judges.expression.logits(images01, batch["boxes"])
        expression = self.judges.expression.nll(logits)
        logged = {
            "loss/identity": identity.mean(),
            "loss/expression": expression.mean(),
            "expression/probability": torch.softmax(logits, dim=1)[:, self.judges.expression.index].mean(),
            "loss/pixel": F.l1_loss(images01, original01),
            "loss/ssim": ssim_loss(images01, original01, SSIM_WINDOW),
            "loss/score": self.score_matching_loss(batch["x0"]) if w.score > 0 else torch.zeros((), device=self.device),
        }
        for kind, per_model in sims.items():
            for name, sim in per_model.items():
                logged[f"similarity/{kind}/{name}"] = sim.mean()
        natural = w.pixel * logged["loss/pixel"] + w.ssim * logged["loss/ssim"] + w.score * logged["loss/score"]
        if w.landmark > 0:
            assert self.judges.landmark is not None  # checked in __init__
            points = self.judges.landmark(faceapi_crop(images01, batch["boxes"]))
            logged["loss/landmark"] = laplacian_smoothness_loss(
                points, batch["delta"], batch["laplacian"], self.config.landmark_scale_invariant
            ).mean()
            natural = natural + w.landmark * logged["loss/landmark"]
        return w.identity * logged["loss/identity"], w.expression * logged["loss/expression"], natural, logged

    # --- optimisation ---

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        """One projected update: per-objective gradients, averaged over ranks, PCGrad, plus naturalness."""
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)  # configure_optimizers returns exactly one
        params = [p for p in self.unet.parameters() if p.requires_grad]
        identity, expression, natural, logged = self.losses(batch)
        w = self.config.weights
        g_identity = self._flat_grad(identity, params, retain_graph=True, skip=w.identity == 0)
        g_expression = self._flat_grad(expression, params, retain_graph=True, skip=w.expression == 0)
        g_natural = self._flat_grad(natural, params, retain_graph=False)
        g_identity, g_expression, g_natural = (
            self._average_over_ranks(g) for g in (g_identity, g_expression, g_natural)
        )
        update = self.projector.combine([g_identity, g_expression]) + g_natural
        for p, g in zip(params, unflatten_like(update, params), strict=True):
            p.grad = g.clone()
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        total = identity + expression + natural
        logged["loss/total"] = total
        logged["gradient/cosine_identity_expression"] = gradient_cosine(g_identity, g_expression)
        batch_size = int(batch["x0"].shape[0])
        self.log_dict({k: v.detach() for k, v in logged.items()}, prog_bar=False, batch_size=batch_size)
        return total.detach()

    @staticmethod
    def _flat_grad(
        loss: torch.Tensor, params: Sequence[torch.Tensor], retain_graph: bool, skip: bool = False
    ) -> torch.Tensor:
        if skip or not loss.requires_grad:  # a zero-weighted or constant term: no backward pass needed
            return flatten_grads([None] * len(params), params)
        grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
        return flatten_grads(list(grads), params)

    def _average_over_ranks(self, flat: torch.Tensor) -> torch.Tensor:
        """Mean over data-parallel ranks (identity on one device), done before projection."""
        if self.trainer.world_size <= 1:
            return flat
        return self.trainer.strategy.reduce(flat, reduce_op="mean")


# --- fitting, with resumable checkpoints -----------------------------------------------------------------------------


FIT_DEFAULTS: dict[str, Any] = {
    "accelerator": "auto",
    "devices": 1,
    "max_epochs": -1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}
"""Trainer settings of a fine-tuning run; ``trainer_kwargs`` override them (the step count comes from the caller)."""

CHECKPOINT_STEM = "finetune"
"""File name (``finetune.ckpt``) of the resumable Lightning checkpoint in a fit's checkpoint folder."""

EXPECTED_WARNINGS = (
    "does not have many workers",
    "smaller than the logging interval",
    "in eval mode at the start",
    "`max_epochs` was not set",
    "exists and is not empty",
    "manual optimization and every_n_train_steps",
)
"""Lightning warnings that do not apply here: one in-memory batch, frozen judges kept in eval mode, a checkpoint
folder that is meant to be resumed from, and checkpoints taken after the step's update (which is the state to resume
from: its step count, Adam moments and gradient EMA all include that update)."""


@dataclass(frozen=True)
class FitReport:
    """What a fine-tuning call did: where it started, where it stopped, its last logged values, its checkpoint."""

    start_step: int
    end_step: int
    metrics: dict[str, float]
    checkpoint: Path | None


def fit_score_finetune(
    module: ScoreFinetune,
    data: FinetuneFaces,
    steps: int,
    trainer_kwargs: Mapping[str, Any] | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 10,
) -> FitReport:
    """Fine-tune ``module`` on ``data`` (all of it in one batch) until ``steps`` optimisation steps are done.

    With ``checkpoint_dir``, a Lightning checkpoint (network, Adam moments, gradient EMA, step count) is written
    every ``checkpoint_every`` steps and at the end, and a call that finds one there continues from it: the
    per-step randomness depends only on (seed, step), so an interrupted and resumed fit ends with the weights of an
    uninterrupted one. A checkpoint already at ``steps`` is only loaded.
    """
    if steps < 1 or checkpoint_every < 1:
        raise ConfigError(f"map.steps={steps} and map.checkpoint_every={checkpoint_every} must be at least 1")
    kwargs = {**FIT_DEFAULTS, **(trainer_kwargs or {})}
    if "max_steps" in kwargs:
        raise ConfigError("set the number of fine-tuning steps with map.steps, not trainer max_steps")
    callbacks = list(kwargs.pop("callbacks", None) or [])
    checkpoint = None if checkpoint_dir is None else checkpoint_dir / f"{CHECKPOINT_STEM}.ckpt"
    if checkpoint_dir is not None:
        from lightning.pytorch.callbacks import ModelCheckpoint

        saver = ModelCheckpoint(
            dirpath=checkpoint_dir,
            filename=CHECKPOINT_STEM,
            every_n_train_steps=checkpoint_every,
            enable_version_counter=False,  # overwrite the one checkpoint (Lightning writes it atomically)
        )
        callbacks.append(saver)
        kwargs.update(enable_checkpointing=True, default_root_dir=checkpoint_dir)
    resume = checkpoint if checkpoint is not None and checkpoint.exists() else None
    start_step = checkpoint_step(resume) if resume is not None else 0
    trainer = L.Trainer(max_steps=steps, callbacks=callbacks, **kwargs)
    with warnings.catch_warnings():
        for expected in EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=f".*{re.escape(expected)}.*")
        trainer.fit(module, DataLoader(data, batch_size=len(data), shuffle=False), ckpt_path=resume)
    if checkpoint is not None and trainer.global_step % checkpoint_every:  # the last step fell between two saves
        trainer.save_checkpoint(checkpoint, weights_only=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return FitReport(start_step, trainer.global_step, metrics, checkpoint)


def checkpoint_step(path: Path) -> int:
    """The step a Lightning checkpoint was saved at, read without loading its tensors (memory-mapped)."""
    return int(torch.load(path, map_location="cpu", mmap=True, weights_only=True)["global_step"])


# --- protecting new photos -------------------------------------------------------------------------------------------


@torch.no_grad()
def protect_with_finetuned(
    unet: DDPMUNet,
    images01: torch.Tensor,
    config: ScoreFinetuneConfig,
    original: DDPMUNet | None = None,
    schedule: NoiseSchedule | None = None,
) -> torch.Tensor:
    """Protect photos (``[N, 3, R, R]`` in [0, 1]) with a fine-tuned network, without further training.

    Generation always uses the fine-tuned ``unet``. Inversion uses ``original`` when given: that is DiffusionCLIP's
    recipe (``edit_one_image`` inverts with the pretrained model) and matches training, where the latents came from
    the network before fine-tuning. Without it the fine-tuned network also inverts, so a single saved network is
    enough to protect; the round trip then tends to undo part of the edit, so pass ``original`` when you have it.
    """
    schedule = schedule or NoiseSchedule()
    inverter = original if original is not None else unet
    states = [(net, net.training) for net in ([unet] if original is None else [unet, original])]
    for net, _ in states:
        net.eval()
    x0 = images01.to(next(unet.parameters())) * 2.0 - 1.0
    x_t0 = ddim_invert(inverter, schedule, x0, t0=config.t0, num_steps=config.inversion_steps)
    x = ddim_generate(unet, schedule, x_t0, t0=config.t0, num_steps=config.generation_steps, grad_mode="none")
    for net, mode in states:
        net.train(mode)
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def save_finetuned(module: ScoreFinetune, directory: str | Path) -> Path:
    """Save the fine-tuned score network alone (``save_pretrained``), ready for :func:`protect_with_finetuned`."""
    return module.unet.save_pretrained(directory)
