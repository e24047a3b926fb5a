"""CLIP2Protect stage 2: adversarial latent search (Shamshad et al., CVPR 2023, ``adversarial_optimization.py``).

Starting from each photo's stage-1 pivot (W+ code and noise maps) and its pivot-tuned generator, the fine W+ slots
and the coarse noise maps are optimised so that the rendered face fools the attacked face-recognition ensemble
while looking like the same photo with makeup:

    loss_i = λ_adv · L_adv(x_i) + λ_clip · L_clip(x_i) + λ_lat · ‖w_i − w0_i‖²

- ``L_adv`` (:class:`~facecloak.losses.identity.AdversarialIdentityLoss`) on the face region of the render, cropped
  differentiably onto each model's template from per-image five-point landmarks given in generator pixels (e.g.
  detected once on the pivot reconstruction); optionally through a randomly drawn differentiable degradation
  (JPEG/resize/blur, :class:`~facecloak.losses.degrade.RandomDegradation`) for expectation over transformation;
- ``L_clip`` (:class:`~facecloak.losses.clip_loss.DirectionalCLIPLoss`): the edit from the pivot reconstruction
  follows the CLIP text direction "face" → makeup prompt, on randomly perspective-warped views;
- the latent term keeps the code near its pivot (sum of squares over the optimised slots, as the reference).

Defaults are the reference's: λ = 0.7 / 0.3 / 0.01, Adam at 0.01 for 50 steps, noise maps below 512 px optimised,
W+ slots 8–17 of 18 (the reference zeroes the gradient of slots 0–7). For other generators the default slots are
the second half of the W+ slots plus the one just before it (``n_latent // 2 - 1`` onward), which is exactly 8–17
for 18 slots. Slots outside the set are not parameters at all: W+ is rebuilt every step from the pivot and the
trainable slots, so they keep the pivot's values bit for bit.

Images are independent. Each has its own latents, noise, generator (or one shared generator; per-image generators
render as one ``vmap`` batch over their stacked weights), reference embeddings,
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

from collections.abc import Mapping, Sequence
from typing import Any, cast

import lightning as L
import torch
from torch import Tensor, nn

from facecloak.errors import ConfigError
from facecloak.faces.regions import jitter_landmarks
from facecloak.losses.degrade import RandomDegradation
from facecloak.losses.identity import AdversarialIdentityLoss, IdentityReference, Mode, passes_thresholds
from facecloak.models.stylegan2 import Generator
from facecloak.stages.change import pasted_change, texture_visibility
from facecloak.stages.fit import build_trainer, quiet_fit, steps_loader
from facecloak.stages.held_stop import copy_rows, end_when_all_stopped, mark_stopped
from facecloak.stages.latent_search_config import LatentSearchConfig, default_layers
from facecloak.stages.latent_search_io import (
    NOT_HYPERPARAMETERS,
    ClipFactory,
    FrozenNetworks,
    SearchResult,
    build_clip,
    check_anchor,
    check_identity,
    check_inputs,
    collect_results,
    image_rng,
)
from facecloak.stages.tuned_generator import render_per_image, stack_weights

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
    stop_latent: Tensor

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
        check_inputs(generators, pivots, noise, landmarks5, self.image_ids)
        check_identity(identity_loss, reference, thresholds, config, batch)
        n_latent = generators[0].n_latent
        layers = config.layers if config.layers is not None else default_layers(n_latent)
        if max(layers) >= n_latent:
            raise ConfigError(f"search.layers={layers} names slots beyond the generator's {n_latent} W+ slots")

        self.save_hyperparameters(ignore=list(NOT_HYPERPARAMETERS))
        self.hparams.update(config=config.to_dict(), thresholds=dict(thresholds), layers=list(layers))
        self.config = config
        self.layers = tuple(sorted(layers))
        self.thresholds = {name: float(thresholds[name]) for name in identity_loss.names}

        pivots = pivots.detach()  # the working dtype: float32 normally, float64 in exactness tests
        self.register_buffer("pivot", pivots.clone(), persistent=False)
        self.register_buffer("layer_index", torch.tensor(self.layers, dtype=torch.long), persistent=False)
        self.register_buffer("landmarks5", landmarks5.detach().to(pivots.dtype).clone(), persistent=False)
        self.register_buffer("stopped_at", torch.full((batch,), -1, dtype=torch.long), persistent=False)
        check_anchor(anchor, change_mask, batch)
        kept = [None if t is None else t.detach().to(pivots.dtype).clone() for t in (anchor, change_mask)]
        self.register_buffer("anchor", kept[0], persistent=False)
        self.register_buffer("change_mask", kept[1], persistent=False)
        visibility = None
        if self.anchor is not None and config.change_flat_share < 1:
            visibility = texture_visibility(self.anchor, config.change_flat_share)
        self.register_buffer("change_visibility", visibility, persistent=False)
        self._anchor_offset: Tensor | None = None
        self._stacked: dict[str, Tensor] | None = None  # per-image generators' weights, stacked on first render
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
        clip = build_clip(config, clip_factory)
        self.frozen = FrozenNetworks(generators, identity_loss.eval().requires_grad_(False), clip, reference)

        # The values each stopped image is held at, on the run's device: stopping and restoring read nothing back
        # to the host, so a GPU never waits for the early-stop decision.
        self.register_buffer("stop_latent", self.latent.detach().clone(), persistent=False)
        for k, param in enumerate(self.noise):
            self.register_buffer(f"stop_noise_{k}", param.detach().clone(), persistent=False)
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
        c = self.config
        change = images01 - self._pivot_generated
        change = pasted_change(change, c.max_delta, c.change_blur_sigma, c.change_chroma, self.change_visibility)
        if self.change_mask is not None:
            change = change * self.change_mask  # the same soft weights paste-back will use
        return (self._pivot_generated + self._anchor_offset + change).clamp(0.0, 1.0)

    def _render_generated(self, wplus: Tensor, noise: Sequence[Tensor]) -> Tensor:
        generators = self.frozen.generators
        if len(generators) == 1:
            images = generators[0].synthesis(wplus, noise)
        else:  # one tuned generator per image, run as one batch over their stacked weights
            if self._stacked is None:
                self._stacked = stack_weights(generators)
            images = render_per_image(generators[0], self._stacked, wplus, noise)
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
        self._stacked = None  # stacked again from the generators on this device
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
        self._hold(self.stopped_at >= 0)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        """End the run once every image has stopped (-1 ends the single epoch), looking every N steps."""
        return end_when_all_stopped(self.stopped_at, self.global_step, self.trainer)

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
        for key, value in terms.items():  # not prog_bar: Lightning would read it back every step (a GPU sync)
            self.log(f"search/{key}", value.detach().mean(), batch_size=batch_size)
        key = "source" if self.config.identity_mode == "dodge" else "target"
        for name, sim in sims[key].items():
            self.log(f"search/sim_{key}/{name}", sim.detach().mean(), batch_size=batch_size)
        self.log("search/active_images", active.sum(), batch_size=batch_size)
        return (terms["loss"] * active).sum()

    def _held_and_trained(self) -> list[tuple[Tensor, Tensor]]:
        """Each trainable tensor (latents, noise maps) with the values its stopped images are held at."""
        held = [self.stop_latent, *(getattr(self, f"stop_noise_{k}") for k in range(len(self.noise)))]
        return list(zip(held, [self.latent, *self.noise]))

    def _hold(self, images: Tensor) -> None:
        """Keep the current values of ``images`` (a ``[B]`` mask) as the ones they are put back to."""
        for held, param in self._held_and_trained():
            copy_rows(held, param, images)

    def _stop_passing(self, passing: Tensor) -> None:
        """Freeze images that pass now at their current values (the ones that produced the passing render)."""
        newly = passing.to(self.stopped_at.device) & (self.stopped_at < 0)
        mark_stopped(self.stopped_at, newly, self.global_step)
        self._hold(newly)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step, then put stopped images back to their snapshot (Adam's momentum moves them with a zero gradient).

        Restoring here, not in a batch-end hook, means callbacks and checkpoints never see the moved values.
        """
        super().optimizer_step(*args, **kwargs)
        stopped = self.stopped_at >= 0
        for held, param in self._held_and_trained():
            copy_rows(param, held, stopped)

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
        return collect_results(
            self.image_ids,
            self.wplus().detach().cpu(),
            [n.detach().cpu() for n in self.noise_maps()],
            self.final_images.cpu(),
            (self.similarities_before, self.similarities_after),
            success,
            self.stopped_at.cpu(),
        )


# --- running it ------------------------------------------------------------------------------------------------------


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
    inputs = (generator, pivots, noise, landmarks5, image_ids, identity_loss, reference, thresholds, config)
    module = AdversarialLatentSearch(*inputs, clip_factory, anchor, change_mask)
    quiet_fit(build_trainer(config.steps, trainer_kwargs, "search.steps"), module, steps_loader(config.steps))
    return module.results()
