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

With ``composite`` (:func:`~facecloak.stages.score_finetune_data.prepare_finetune_faces`) the losses judge the face
as the protection pipeline will share it rather than the bare regeneration: the real crop, at any resolution, plus
the regeneration's change upsampled and under the paste-back mask. That is what lets a network without a face prior
(one that cannot reproduce the photo) still carry the edit, and what keeps a low-resolution network's edit effective
on the sharp photo.

The network weights are shared by all images, so data-parallel training is possible: each rank regenerates its own
images and the per-objective gradients are averaged over ranks *before* projection (same result as one large
batch). Frozen judges (face-recognition models, expression and landmark nets) are held outside the registered
submodules, in eval mode, so checkpoints hold only the score network (and the optimizer and projector state).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from kornia.losses import ssim_loss
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from facecloak.diffusion import GradMode, NoiseSchedule, ddim_generate
from facecloak.errors import ConfigError
from facecloak.losses.expression import ExpressionObjective, faceapi_crop
from facecloak.losses.gradient_projection import GradientProjector, flatten_grads, gradient_cosine, unflatten_like
from facecloak.losses.identity import AdversarialIdentityLoss, IdentityReference
from facecloak.losses.landmark_smoothness import laplacian_smoothness_loss
from facecloak.models.ddpm import DDPMUNet
from facecloak.runtime.precision import full_precision, widened
from facecloak.stages.score_finetune_config import ScoreFinetuneConfig

SSIM_WINDOW = 11
"""Gaussian window of the SSIM fidelity term (Wang et al. 2004)."""

SEED_STRIDE = 1_000_003
"""Separates the per-step random streams of different seeds (a prime, so seed·stride + step never collides early)."""


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
    """MAP fine-tuning of ``unet``; the trained network is ``self.unet``.

    Its data comes from :mod:`facecloak.stages.score_finetune_data`, its resumable fit from
    :func:`facecloak.stages.fit.fit_resumable`, and :mod:`facecloak.stages.score_finetune_infer` protects new photos
    with the result.
    """

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
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            raise ConfigError(
                "trainer.precision=16-mixed cannot run MAP fine-tuning: its update is assembled by hand from "
                "projected per-objective gradients, which fp16 loss scaling never scales (Lightning would unscale "
                "unscaled gradients and the network would stop moving); use trainer.precision=bf16-mixed or 32-true"
            )
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
        them back. :func:`~facecloak.stages.score_finetune_infer.protect_with_finetuned`
        clamps the final output.
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
        with full_precision():  # 1 − SSIM of near-identical images would lose its value to bf16 rounding
            fidelity = {
                "loss/pixel": F.l1_loss(widened(images01), widened(original01)),
                "loss/ssim": ssim_loss(widened(images01), widened(original01), SSIM_WINDOW),
            }
        logged = {
            "loss/identity": identity.mean(),
            "loss/expression": expression.mean(),
            "expression/probability": torch.softmax(logits, dim=1)[:, self.judges.expression.index].mean(),
            **fidelity,
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


def save_finetuned(module: ScoreFinetune, directory: str | Path) -> Path:
    """Save the fine-tuned score network alone (``save_pretrained``), ready for ``protect_with_finetuned``."""
    return module.unet.save_pretrained(directory)
