"""CLIP2Protect stage 1: pivot tuning (PTI, Roich et al., 2022) of StyleGAN2 around each photo's inverted code.

The generator is fine-tuned so that its render of the photo's fixed pivot code W+ matches the photo; stage 2 then
edits the code with this per-photo generator. The recipe is CLIP2Protect's (``pivot_tuning.py``, ``main.py``):
Adam at 5e-4 for 150 steps on every synthesis weight, loss LPIPS(VGG) + 0.1 · MSE on 256² resizes, noise maps
drawn once per image and frozen. Optionally each image stops when its perceptual loss reaches a threshold, as PTI
does (PTI's ``LPIPS_value_threshold`` is 0.06).

Unlike the reference, which builds one generator and one Adam optimizer and reuses them for every photo (photo k
starts from the weights and moments left by photo k-1), every run here starts from the frozen base generator with
fresh per-image offsets and a fresh optimizer.

Several images are tuned in one step with one code path for any batch size: the trainable state is a stack of
per-image weight offsets ``delta [N, *shape]`` for every synthesis parameter, and the generator runs once per image
under ``torch.func.vmap`` with ``functional_call`` and weights ``base + delta[i]``. Losses are per image and summed
and Adam is element-wise, so a batch of N gives what N separate runs give.

The tuned generator is *defined* as ``base + float(fp16(delta))``: at the end of a run the offsets are rounded to
half precision, so the compact artifact (:mod:`facecloak.stages.artifacts`) reloads to exactly the generator whose
metrics are reported here. The mapping network is not tuned: rendering from W+ never runs it (the reference's
optimizer holds its weights, but they never receive a gradient).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from facecloak.inversion.projector import per_image_mse
from facecloak.losses.perceptual import build_perceptual, resize_for_loss
from facecloak.models.stylegan2 import Generator
from facecloak.runtime.clock import device_clock
from facecloak.stages.fit import build_trainer, quiet_fit, same_batch_loader
from facecloak.stages.held_stop import copy_rows, end_when_all_stopped, mark_stopped
from facecloak.stages.pivot_tuning_config import PivotTuningConfig
from facecloak.stages.tuned_generator import TuningResult, render_per_image, tuned_parameter_names


def image_noise(generator: Generator, image_id: str, seed: int) -> list[Tensor]:
    """Frozen noise maps ``[1, 1, r, r]`` for one image, a function of its id and the seed only (not of batching)."""
    rng = torch.Generator().manual_seed((seed << 32) | zlib.crc32(image_id.encode()))
    return [torch.randn(shape, generator=rng) for shape in generator.noise_shapes]


def psnr(mse: Tensor, value_range: float = 2.0) -> Tensor:
    """PSNR in dB from the MSE of images in a range of width ``value_range`` ([-1, 1] by default)."""
    return 10.0 * torch.log10(value_range**2 / mse)


# --- the LightningModule ---------------------------------------------------------------------------------------------


@dataclass
class FrozenTuningNetworks:
    """The shared base generator and perceptual distance: used by a run, owned by the job.

    A plain container, not submodules: Lightning's teardown moves the module it trained back to the CPU, which
    must not drag the job's base generator (used next by the projector on the GPU) along with it.
    """

    generator: Generator
    perceptual: nn.Module

    def to(self, device: torch.device) -> FrozenTuningNetworks:
        """Put both networks on the run's device, frozen and in eval mode."""
        for net in (self.generator, self.perceptual):
            net.to(device).eval().requires_grad_(False)
        return self


class PivotTuning(L.LightningModule):
    """One pivot-tuning run over a fixed batch of images, each with its own generator offsets.

    The batch the Trainer feeds (the same every step) is ``{"target": [N, 3, S, S] at loss_size, "pivots":
    [N, n_latent, style_dim], "noise": [[N, 1, r, r], ...]}``. The base generator is frozen (eval mode, no
    gradient, not in the optimizer); a new module is built for every run, so no state crosses runs.
    ``perceptual`` optionally passes a prebuilt distance from :func:`build_perceptual` (stateless when frozen).
    """

    stopped_at: Tensor
    """Per image: the step at which it met the early-stop threshold, -1 while it is still being tuned."""

    def __init__(
        self,
        generator: Generator,
        image_ids: Sequence[str],
        config: PivotTuningConfig | None = None,
        perceptual: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["generator", "perceptual", "config"])
        self.config = config or PivotTuningConfig()
        # A plain dict: loggers flatten hyperparameters and cannot walk a frozen dataclass (CSV logging failed).
        self.hparams.update(config=asdict(self.config))
        self.image_ids = list(image_ids)
        # A frozen distance holds no per-image state, so runs may share one instead of reloading VGG every time.
        self.frozen = FrozenTuningNetworks(
            generator.requires_grad_(False).eval(),
            perceptual if perceptual is not None else build_perceptual(self.config.perceptual),
        )
        self.tuned_names = tuned_parameter_names(generator)
        n = len(self.image_ids)
        params = dict(generator.named_parameters())
        self.deltas = nn.ParameterList(
            [nn.Parameter(torch.zeros(n, *params[name].shape, dtype=params[name].dtype)) for name in self.tuned_names]
        )
        self.register_buffer("stopped_at", torch.full((n,), -1, dtype=torch.long))
        self._held: list[Tensor] = []  # per tuned tensor: the values stopped images are put back to
        self._batch: dict | None = None
        self.steps_run = 0
        self._started = 0.0  # device clock at the start of training
        self._first_step_done = 0.0  # and after the first (warm-up) step
        self.seconds_per_step = 0.0
        self.metrics_before: dict[str, Tensor] = {}
        self.metrics_after: dict[str, Tensor] = {}

    @property
    def generator(self) -> Generator:
        """The frozen base generator every image's offsets apply to."""
        return self.frozen.generator

    @property
    def perceptual(self) -> nn.Module:
        """The frozen perceptual distance of the reconstruction loss."""
        return self.frozen.perceptual

    def setup(self, stage: str) -> None:
        """Bring the shared frozen networks to the device the Trainer put this run on."""
        self.frozen.to(self.device)

    def render(self, pivots: Tensor, noise: Sequence[Tensor]) -> Tensor:
        """Render image i with weights ``base + delta[i]``: ``[N, 3, size, size]``."""
        base = dict(self.generator.named_parameters())
        weights = {name: base[name] + d for name, d in zip(self.tuned_names, self.deltas)}
        return render_per_image(self.generator, weights, pivots, noise)

    def losses(self, batch: dict) -> dict[str, Tensor]:
        """Per-image loss terms ``[N]`` of the current offsets."""
        rendered = resize_for_loss(self.render(batch["pivots"], batch["noise"]), self.config.loss_size)
        perceptual = self.perceptual(rendered, batch["target"])
        mse = per_image_mse(rendered, batch["target"])
        return {"perceptual": perceptual, "mse": mse, "loss": perceptual + self.config.mse_weight * mse}

    def on_train_start(self) -> None:
        """Start the clock once the device is idle (its queue holds nothing of this run yet)."""
        self._started = device_clock(self.device)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> int | None:
        """End the run once every image has met the early-stop threshold (-1 ends the single epoch), every N steps."""
        return end_when_all_stopped(self.stopped_at, self.global_step, self.trainer)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """One Adam step on every image's offsets; the loss is the sum of the per-image losses."""
        self._batch = batch
        terms = self.losses(batch)
        if self.global_step == 0:
            self.metrics_before = {k: v.detach().cpu() for k, v in terms.items()}
        self._check_early_stop(terms["perceptual"].detach())
        for key, value in terms.items():  # not prog_bar: Lightning would read it back every step (a GPU sync)
            self.log(f"tune/{key}", value.mean())
        self.log("tune/active_images", (self.stopped_at < 0).sum().float())
        return terms["loss"].sum()

    def _check_early_stop(self, perceptual: Tensor) -> None:
        """Hold an image's offsets the first time its loss is under the threshold (PTI checks before stepping).

        Decided on the device (no host read): the held copies take the current offsets where an image stops now.
        """
        threshold = self.config.early_stop_perceptual
        if threshold is None:
            return
        if not self._held:
            self._held = [torch.zeros_like(p.detach()) for p in self.deltas]
        newly = (perceptual <= threshold) & (self.stopped_at < 0)
        mark_stopped(self.stopped_at, newly, self.global_step)
        for held, p in zip(self._held, self.deltas):
            copy_rows(held, p, newly)

    def on_train_batch_end(self, outputs: object, batch: dict, batch_idx: int) -> None:
        """Put stopped images back to their held offsets (Adam's momentum would keep moving them); count the step."""
        stopped = self.stopped_at >= 0
        for held, p in zip(self._held, self.deltas):
            copy_rows(p, held, stopped)
        self.steps_run += 1
        if self.steps_run == 1:  # the first step pays for warm-up: time the rest (one device wait, not one per step)
            self._first_step_done = device_clock(self.device)

    def on_train_end(self) -> None:
        """Define the tuned generators as ``base + fp16(delta)`` and measure them, still on the run's device."""
        if self.steps_run > 1:
            self.seconds_per_step = (device_clock(self.device) - self._first_step_done) / (self.steps_run - 1)
        elif self.steps_run == 1:
            self.seconds_per_step = self._first_step_done - self._started
        self._held = []
        with torch.no_grad():
            for p in self.deltas:
                p.copy_(p.half().float())
            if self._batch is not None:
                self.metrics_after = {k: v.cpu() for k, v in self.losses(self._batch).items()}
        self._batch = None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """A fresh Adam over this run's offsets only."""
        return torch.optim.Adam(self.deltas.parameters(), lr=self.config.lr)

    def results(self, pivots: Tensor, noise: Sequence[Tensor]) -> list[TuningResult]:
        """Per-image results after ``fit``: pivots, noise maps, fp16 offsets and reconstruction metrics."""
        out = []
        for i, image_id in enumerate(self.image_ids):
            metrics = {f"{k}_before": float(v[i]) for k, v in self.metrics_before.items()}
            metrics |= {f"{k}_after": float(v[i]) for k, v in self.metrics_after.items()}
            metrics["psnr_before"] = float(psnr(self.metrics_before["mse"][i]))
            metrics["psnr_after"] = float(psnr(self.metrics_after["mse"][i]))
            stopped = int(self.stopped_at[i])
            metrics["steps"] = float(stopped if stopped >= 0 else self.steps_run)
            metrics["seconds_per_step"] = self.seconds_per_step
            out.append(
                TuningResult(
                    image_id=image_id,
                    pivot=pivots[i].detach().cpu(),
                    noise=[n[i : i + 1].detach().cpu() for n in noise],
                    deltas={name: p.detach()[i].half().cpu() for name, p in zip(self.tuned_names, self.deltas)},
                    metrics=metrics,
                )
            )
        return out


# --- running it ------------------------------------------------------------------------------------------------------


def tune_images(
    generator: Generator,
    images: Tensor,
    pivots: Tensor,
    image_ids: Sequence[str],
    config: PivotTuningConfig | None = None,
    trainer_kwargs: Mapping[str, object] | None = None,
    noise: Sequence[Tensor] | None = None,
    perceptual: nn.Module | None = None,
) -> list[TuningResult]:
    """Pivot-tune the generator for every image, ``config.batch_size`` images per run, a fresh module per run.

    ``images``: ``[N, 3, H, W]`` in [-1, 1]; ``pivots``: ``[N, n_latent, style_dim]``; ``noise``: per-image maps
    ``[N, 1, r, r]`` (e.g. the projector's), else drawn from each image id. Results come back in input order.
    ``perceptual``: a prebuilt distance of the configured kind (a job builds it once, not per face).
    """
    config = config or PivotTuningConfig()
    ids = [str(i) for i in image_ids]
    if len(set(ids)) != len(ids) or len(ids) != images.shape[0] or pivots.shape[0] != images.shape[0]:
        raise ValueError(
            f"need one unique id and one pivot per image: {images.shape[0]} images, {pivots.shape[0]} pivots, "
            f"{len(ids)} ids ({len(set(ids))} unique)"
        )
    if noise is None:
        per_image = [image_noise(generator, i, config.noise_seed) for i in ids]
        noise = [torch.cat(maps) for maps in zip(*per_image)]

    perceptual = perceptual or build_perceptual(config.perceptual)
    results: list[TuningResult] = []
    for start in range(0, len(ids), config.batch_size):
        part = slice(start, start + config.batch_size)
        batch: dict[str, Any] = {
            "target": resize_for_loss(images[part], config.loss_size),
            "pivots": pivots[part].detach(),
            "noise": [n[part] for n in noise],
        }
        module = PivotTuning(generator, ids[part], config, perceptual)
        trainer = build_trainer(config.steps, trainer_kwargs, "pivot.steps", enable_progress_bar=True)
        quiet_fit(trainer, module, same_batch_loader(batch, config.steps))
        results.extend(module.results(batch["pivots"], batch["noise"]))
    return results
