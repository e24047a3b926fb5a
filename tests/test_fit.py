"""The one Trainer recipe every stage runs under: the user's ``trainer`` settings really reach the Trainer."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch

from facecloak.config.compose import compose
from facecloak.errors import ConfigError
from facecloak.protect.pipeline import PhotoJob
from facecloak.stages.fit import build_trainer, job_trainer_kwargs
from facecloak.stages.pivot_tuning import tune_images
from facecloak.stages.pivot_tuning_config import PivotTuningConfig
from test_projector import tiny_generator

pytestmark = pytest.mark.usefixtures("single_thread")


class SeenAtFit(L.Callback):
    """What the Trainer ran with, read inside the fit."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen = {
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "precision": trainer.precision,
            "log_every_n_steps": trainer.log_every_n_steps,
            "devices": trainer.num_devices,
            "max_steps": trainer.max_steps,
        }


@pytest.fixture
def restore_determinism() -> Any:
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("deterministic", [True, False])
def test_job_trainer_settings_reach_a_stage_trainer(deterministic: bool, restore_determinism: Any) -> None:
    """``trainer.deterministic`` (and precision, logging interval) from the composed config reach a real stage fit."""
    config = compose(
        ["scale=smoke", f"trainer.deterministic={str(deterministic).lower()}", "trainer.log_every_n_steps=2"]
    )
    seen = SeenAtFit()
    job = SimpleNamespace(config=config, device=torch.device(config.device), logger=None, callbacks=[seen])
    kwargs = PhotoJob._trainer_kwargs(job)  # type: ignore[arg-type]  # the protect job's own recipe
    assert kwargs["deterministic"] is deterministic
    generator = tiny_generator()
    images = torch.rand(1, 3, generator.config.size, generator.config.size) * 2 - 1
    pivots = generator.mean_latent(64)[None].expand(1, generator.n_latent, -1).clone()
    tune_images(generator, images, pivots, ["a"], PivotTuningConfig(steps=2, loss_size=64, perceptual="msssim"), kwargs)
    assert seen.seen == {
        "deterministic": deterministic,
        "precision": "32-true",
        "log_every_n_steps": 2,
        "devices": 1,
        "max_steps": 2,
    }


def test_a_job_keeps_one_device_per_photo() -> None:
    """Photos are split between ranks, never one photo's gradients: the user's devices/strategy are not applied."""
    config = replace(compose(["scale=smoke"]).trainer, devices="2", strategy="ddp")
    kwargs = job_trainer_kwargs(config, torch.device("cpu"))
    assert kwargs["devices"] == 1 and kwargs["accelerator"] == "cpu"  # the job's device, not the user's devices=2
    assert "strategy" not in kwargs and kwargs["enable_progress_bar"] is False


def test_step_count_comes_from_the_stage_key() -> None:
    with pytest.raises(ConfigError, match=r"search\.steps"):
        build_trainer(3, {"max_steps": 5}, "search.steps")
