"""Build Lightning Trainers and loggers from configuration, the same way for every stage.

Lightning and W&B are imported here, not in the library modules. W&B runs offline by default (nothing leaves the
machine; ``wandb sync`` uploads later), get the resolved config as a plain container, are closed even when the
stage crashes, and never receive face images unless ``logger.log_images`` is set — this is a privacy tool.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facecloak.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "64-true")
LOGGER_KINDS = ("wandb", "csv", "none")
WANDB_MODES = ("offline", "online", "disabled")


@dataclass
class TrainerConfig:
    """Hardware and precision of every optimisation stage."""

    accelerator: str = "auto"
    # An integer count, a list such as "0,1", or "auto".
    devices: str = "1"
    num_nodes: int = 1
    precision: str = "32-true"
    strategy: str = "auto"
    progress_bar: bool = True
    # Deterministic kernels (torch.use_deterministic_algorithms, cuBLAS workspace): bit-identical reruns on one GPU
    # model and software stack; slower, and ops without a deterministic CUDA kernel raise.
    deterministic: bool = False
    # TF32 matmuls/convolutions on Ampere and newer GPUs: ~2-3x faster fp32 at ~1e-3 relative error. Off by default,
    # so fp32 runs match the reference code; bf16-mixed runs are unaffected by it.
    allow_tf32: bool = False
    # cuDNN autotuning: faster convolutions when crop sizes repeat, but picks kernels by timing (not reproducible).
    cudnn_benchmark: bool = False
    # Loss curves get a point every this many optimisation steps (per-photo stages are short).
    log_every_n_steps: int = 1
    # A multi-process protection job waits this long at its final barrier for the other ranks' photos.
    barrier_timeout_s: int = 7200

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"config key 'trainer.precision': must be one of {PRECISIONS}, got '{self.precision}'")
        if self.num_nodes < 1:
            raise ConfigError("config key 'trainer.num_nodes': must be at least 1")
        if self.log_every_n_steps < 1:
            raise ConfigError("config key 'trainer.log_every_n_steps': must be at least 1")
        if self.barrier_timeout_s < 1:
            raise ConfigError("config key 'trainer.barrier_timeout_s': must be at least 1 second")


@dataclass
class LoggerConfig:
    """Where loss curves go: W&B (offline by default), CSV files, or nowhere."""

    kind: str = "wandb"
    mode: str = "offline"
    project: str = "facecloak"
    # null: the job's own folder (``--out``/logs), so a job never writes into the working directory.
    save_dir: str | None = None
    # Face images are uploaded only when the user opts in.
    log_images: bool = False

    def __post_init__(self) -> None:
        if self.kind not in LOGGER_KINDS:
            raise ConfigError(f"config key 'logger.kind': must be one of {LOGGER_KINDS}, got '{self.kind}'")
        if self.mode not in WANDB_MODES:
            raise ConfigError(f"config key 'logger.mode': must be one of {WANDB_MODES}, got '{self.mode}'")


def _devices(value: str) -> int | str | list[int]:
    if value == "auto":
        return value
    if "," in value:
        return [int(v) for v in value.split(",") if v]
    return int(value)


def trainer_kwargs(config: TrainerConfig, logger: Any = None, max_steps: int | None = None) -> dict[str, Any]:
    """Keyword arguments for ``lightning.Trainer`` (a stage adds its own step count)."""
    kwargs: dict[str, Any] = {
        "accelerator": config.accelerator,
        "devices": _devices(config.devices),
        "num_nodes": config.num_nodes,
        "precision": config.precision,
        "strategy": config.strategy,
        "enable_progress_bar": config.progress_bar,
        "deterministic": config.deterministic,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "log_every_n_steps": config.log_every_n_steps,
        "logger": logger if logger is not None else False,
        "num_sanity_val_steps": 0,
    }
    if max_steps is not None:
        kwargs["max_steps"] = max_steps
    return kwargs


def build_logger(
    config: LoggerConfig,
    run_name: str,
    run_config: dict[str, Any],
    group: str | None = None,
    default_dir: Path | None = None,
) -> Any:
    """A Lightning logger for one job, or None when logging is off.

    Its files go to ``logger.save_dir``, else ``default_dir`` (the job's output folder), W&B's debug logs and cache
    included: a job leaves nothing in the working directory or the user's home.
    """
    from facecloak.runtime.console import wandb_settings

    disabled_by_env = os.environ.get("WANDB_MODE") == "disabled"
    if config.kind == "none" or (config.kind == "wandb" and (config.mode == "disabled" or disabled_by_env)):
        return None
    if config.save_dir is None and default_dir is None:
        raise ConfigError("config key 'logger.save_dir': set a folder for the logs (this command has no --out)")
    save_dir = Path(config.save_dir) if config.save_dir is not None else Path(default_dir)  # type: ignore[arg-type]
    save_dir.mkdir(parents=True, exist_ok=True)
    if config.kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(save_dir), name=run_name)
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(
        settings=wandb.Settings(**wandb_settings(save_dir.resolve())),  # type: ignore[arg-type]
        project=config.project,
        name=run_name,
        group=group,
        save_dir=str(save_dir),
        offline=config.mode == "offline",
        log_model=False,
    )
    logger.log_hyperparams(run_config)
    return logger


@contextlib.contextmanager
def own_logging_rank() -> Iterator[None]:
    """Let this process log as its own rank zero while it runs single-device stages.

    Lightning reads its rank-zero flag from ``RANK`` at import, and a single-device Trainer never resets it, so on
    rank ≥ 1 of a photo-sharded job every logger call was silently dropped. Each rank's stages are a world of one
    (photos never share gradients), and each rank has its own run, so each logs as rank zero of that world.
    """
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    previous = getattr(rank_zero_only, "rank", 0)
    rank_zero_only.rank = 0  # type: ignore[attr-defined]
    try:
        yield
    finally:
        rank_zero_only.rank = previous  # type: ignore[attr-defined]


@contextlib.contextmanager
def closing_logger(logger: Any) -> Iterator[Any]:
    """Finish the W&B run whatever happens, marking it failed when the stage raised."""
    try:
        yield logger
    except BaseException:
        _finish(logger, exit_code=1)
        raise
    else:
        _finish(logger, exit_code=0)


def _finish(logger: Any, exit_code: int) -> None:
    experiment = getattr(logger, "_experiment", None)
    if experiment is not None:
        with contextlib.suppress(Exception):
            experiment.finish(exit_code=exit_code)
