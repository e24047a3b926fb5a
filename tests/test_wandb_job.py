"""A protection job's offline W&B run: loss curves per stage and term, per-photo metrics, the config — no images."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import pytest

from facecloak.config.compose import compose
from facecloak.errors import NoFaceError
from facecloak.protect.runner import run_protect_job
from facecloak.runtime.wandb_offline import offline_runs, read_offline_run
from test_protect import TINY

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp"}
SEARCH_STEPS = 3
WRITE_WAIT_S = 60.0
"""W&B's service may finish writing an offline run a moment after ``finish()`` returns."""


def _config(logs: Path, *extra: str):  # type: ignore[no-untyped-def]
    return compose([*TINY, "logger.kind=wandb", "logger.mode=offline", f"logger.save_dir={logs}", *extra])


@pytest.fixture(scope="module")
def logged_job(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("wandb_job")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")  # conftest disables W&B for every other test
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            config = _config(root / "logs", "trainer.progress_bar=true")
            summary = run_protect_job([faces_dir / "jack_dorsey" / "img16.jpg"], root / "out", config)
    [run_dir] = offline_runs(root / "logs")
    run = read_offline_run(run_dir, wait_for_exit_s=WRITE_WAIT_S)
    return {"run": run, "logs": root / "logs", "summary": summary, "stderr": stderr.getvalue()}


def test_job_finished_and_closed_its_run(logged_job: dict) -> None:
    assert logged_job["summary"]["counts"] == {"done": 1}
    assert logged_job["run"].exit_code == 0


def test_loss_curves_per_stage_and_term(logged_job: dict) -> None:
    run = logged_job["run"]
    for key in ("tune/loss", "tune/perceptual", "tune/mse"):
        assert len(run.curve(key)) >= 3, key
    for key in ("search/loss", "search/adv", "search/latent"):
        assert len(run.curve(key)) >= 1, key
    values = [v for key in ("tune/loss", "search/loss") for v in run.curve(key)]
    assert all(isinstance(v, int | float) and math.isfinite(v) for v in values), values


def test_per_photo_metrics_and_resolved_config(logged_job: dict) -> None:
    run = logged_job["run"]
    assert run.curve("photo/seconds") and run.curve("photo/face0/dlib_native/protected")
    assert run.config["search"]["lambda_adv"] == pytest.approx(0.7)
    assert run.config["generator"]["size"] == 64  # the tiny override, i.e. the resolved config


def test_no_image_reaches_the_run(logged_job: dict) -> None:
    files = [p for p in logged_job["logs"].rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    assert not [row for row in logged_job["run"].history if any(isinstance(v, dict) for v in row.values())]


def test_progress_bar_shows_photos_stage_and_losses(logged_job: dict) -> None:
    text = logged_job["stderr"]
    assert "photos" in text and "img16.jpg" in text
    assert f"search {SEARCH_STEPS}/{SEARCH_STEPS}" in text and "loss=" in text


def test_a_crash_still_closes_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, faces_dir: Path) -> None:
    import numpy as np
    from PIL import Image

    monkeypatch.setenv("WANDB_MODE", "offline")
    wall = tmp_path / "wall.png"
    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(wall)
    config = _config(tmp_path / "logs", "protect.mode=impersonate", f"protect.target={wall}")
    with pytest.raises(NoFaceError):
        run_protect_job([faces_dir / "jack_dorsey" / "img16.jpg"], tmp_path / "out", config)
    [run_dir] = offline_runs(tmp_path / "logs")
    assert read_offline_run(run_dir, wait_for_exit_s=WRITE_WAIT_S).exit_code == 1
