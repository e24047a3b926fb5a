"""How every stage runs under Lightning: one Trainer recipe, the step loaders, the warnings that do not apply.

The four stages (pivot tuning, latent search, MAP fine-tuning, the pixel baselines) keep only their
LightningModules; this module builds their Trainers from the defaults below plus the caller's overrides, and a
protection job's overrides come from the user's ``trainer`` config section (:func:`job_trainer_kwargs`), so
``trainer.precision``, ``trainer.accelerator`` and ``trainer.deterministic`` reach every stage the same way.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from facecloak.errors import ConfigError
from facecloak.runtime.devices import trainer_device_kwargs
from facecloak.runtime.trainer import TrainerConfig, trainer_kwargs

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
    "log_every_n_steps": 1,
}
"""A stage run: one device (per-image stages must never be gradient-synced across images), one pass over a step
loader, nothing written unless asked, logged and early-stop-checked every step (``trainer.log_every_n_steps``, as
:class:`~facecloak.runtime.trainer.TrainerConfig`); a stage's own defaults and the caller's overrides go on top."""

EXPECTED_WARNINGS = ("does not have many workers", "`IterableDataset` has `__len__`", "in eval mode at the start")
"""Lightning warnings that apply to no stage: in-memory step loaders, and frozen networks kept in eval mode."""

CHECKPOINT_STEM = "finetune"
"""File name (``finetune.ckpt``) of the resumable Lightning checkpoint in a fit's checkpoint folder."""

RESUMABLE_WARNINGS = (
    "smaller than the logging interval",
    "`max_epochs` was not set",
    "exists and is not empty",
    "manual optimization and every_n_train_steps",
)
"""What a resumable fit adds: a checkpoint folder meant to be resumed from, and checkpoints taken after the step's
update (the state to resume from: its step count, Adam moments and gradient EMA all include that update)."""


def job_trainer_kwargs(
    config: TrainerConfig, device: torch.device, logger: Any = None, callbacks: Sequence[Any] = ()
) -> dict[str, Any]:
    """A protection job's Trainer overrides: the user's ``trainer`` section, on the job's one device per photo.

    A multi-rank job splits photos between ranks, never one photo's gradients, so each stage trains on exactly the
    device its inputs and judges live on (:func:`facecloak.runtime.devices.trainer_device_kwargs`); the job's own
    bar shows photos, stage, step and losses, so Lightning's bar is off.
    """
    kwargs = trainer_kwargs(config, logger)
    for key in ("devices", "num_nodes", "strategy"):
        kwargs.pop(key)
    kwargs.update(trainer_device_kwargs(device, config.accelerator))
    kwargs.update(enable_progress_bar=False, callbacks=list(callbacks))
    return kwargs


def build_trainer(steps: int, overrides: Mapping[str, Any] | None, steps_key: str, **stage_defaults: Any) -> L.Trainer:
    """A Trainer for ``steps`` optimisation steps; the step count is the stage's config key, never ``max_steps``."""
    kwargs = {**TRAINER_DEFAULTS, **stage_defaults, **(overrides or {})}
    if "max_steps" in kwargs:
        raise ConfigError(f"set the number of steps with {steps_key}, not trainer max_steps")
    return L.Trainer(max_steps=steps, **kwargs)


def quiet_fit(
    trainer: L.Trainer,
    module: L.LightningModule,
    loader: DataLoader,
    ckpt_path: str | Path | None = None,
    expected: Sequence[str] = (),
) -> None:
    """``trainer.fit`` without the Lightning warnings that do not apply to these stages (plus ``expected``)."""
    with warnings.catch_warnings():
        for message in (*EXPECTED_WARNINGS, *expected):
            warnings.filterwarnings("ignore", message=f".*{re.escape(message)}.*")
        trainer.fit(module, loader, ckpt_path=ckpt_path)


class _Steps(IterableDataset):
    """One item per optimisation step: the module holds all per-image data, the loader only paces the loop."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.steps))

    def __len__(self) -> int:
        return self.steps


def steps_loader(steps: int) -> DataLoader:
    """``steps`` items in one epoch, for stages whose module holds its data (latent search, pixel attacks)."""
    return DataLoader(_Steps(steps), batch_size=None)


class _SameBatch(IterableDataset):
    """One batch served ``times`` times: pivot tuning revisits the same images every step."""

    def __init__(self, batch: dict, times: int) -> None:
        self.batch = batch
        self.times = times

    def __iter__(self) -> Iterator[dict]:
        for _ in range(self.times):
            yield self.batch

    def __len__(self) -> int:
        return self.times


def same_batch_loader(batch: dict, steps: int) -> DataLoader:
    """The run's only batch, once per step."""
    return DataLoader(_SameBatch(batch, steps), batch_size=None)


@dataclass(frozen=True)
class FitReport:
    """What a resumable fit did: where it started, where it stopped, its last logged values, its checkpoint."""

    start_step: int
    end_step: int
    metrics: dict[str, float]
    checkpoint: Path | None


def fit_resumable(
    module: L.LightningModule,
    data: Dataset,
    steps: int,
    trainer_kwargs: Mapping[str, Any] | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 10,
    steps_key: str = "map.steps",
) -> FitReport:
    """Fit ``module`` on ``data`` (all of it in one batch) until ``steps`` optimisation steps are done.

    With ``checkpoint_dir``, a Lightning checkpoint (weights, optimizer state, the module's own extra state, step
    count) is written every ``checkpoint_every`` steps and at the end, and a call that finds one there continues from
    it; a module whose per-step randomness depends only on (seed, step) then ends with the weights of an
    uninterrupted run. A checkpoint already at ``steps`` is only loaded.
    """
    if steps < 1 or checkpoint_every < 1:
        raise ConfigError(f"{steps_key}={steps} and its checkpoint_every={checkpoint_every} must be at least 1")
    kwargs = dict(trainer_kwargs or {})
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
    trainer = build_trainer(steps, kwargs, steps_key, max_epochs=-1, callbacks=callbacks)
    loader = DataLoader(data, batch_size=len(data), shuffle=False)  # type: ignore[arg-type]
    quiet_fit(trainer, module, loader, ckpt_path=resume, expected=RESUMABLE_WARNINGS)
    if checkpoint is not None and trainer.global_step % checkpoint_every:  # the last step fell between two saves
        trainer.save_checkpoint(checkpoint, weights_only=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return FitReport(start_step, trainer.global_step, metrics, checkpoint)


def checkpoint_step(path: Path) -> int:
    """The step a Lightning checkpoint was saved at, read without loading its tensors (memory-mapped)."""
    return int(torch.load(path, map_location="cpu", mmap=True, weights_only=True)["global_step"])
