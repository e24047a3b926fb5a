"""One device policy for a process: which device its tensors use, and the Trainer and backend settings that follow.

``device: auto`` (the default) means ``cuda:LOCAL_RANK mod visible GPUs`` when CUDA is available, else the CPU.
Counting *visible* GPUs honours ``CUDA_VISIBLE_DEVICES``: under SLURM's one-GPU-per-task binding every task sees
one device, index 0, and two ranks sharing one GPU both get index 0 instead of an invalid ordinal. The Trainer's
accelerator and ``devices=[index]`` are derived from the resolved device, never chosen separately, so search and
judging always run on the same device; an explicit ``trainer.accelerator`` that disagrees is a config error.

Lightning-free: torch only.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from facecloak.errors import ConfigError

log = logging.getLogger(__name__)

AUTO = "auto"
CUBLAS_WORKSPACE_ENV = "CUBLAS_WORKSPACE_CONFIG"
# cuBLAS needs a fixed workspace for deterministic matmuls (PyTorch's reproducibility notes).
DETERMINISTIC_CUBLAS_WORKSPACE = ":4096:8"
# Trainer accelerators that mean "the GPU" in Lightning.
GPU_ACCELERATORS = ("gpu", "cuda")


def local_rank_from_env() -> int:
    """The rank of this process on its node (torchrun's LOCAL_RANK, SLURM's SLURM_LOCALID), 0 when run alone."""
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return 0


def resolve_device(configured: str, local_rank: int = 0) -> torch.device:
    """The concrete device a rank uses for everything: ``auto``/``cuda`` pick a visible GPU by local rank."""
    if configured == AUTO:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        configured = "cuda"
    if configured == "cpu":
        return torch.device("cpu")
    if configured == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("config key 'device': 'mps' was asked for, but this PyTorch build sees no Apple GPU")
        return torch.device("mps")
    if not configured.startswith("cuda"):
        raise ConfigError(f"config key 'device': must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got '{configured}'")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"config key 'device': '{configured}' was asked for, but CUDA is not available "
            "(no GPU, or a CPU build of PyTorch); use device=auto or device=cpu"
        )
    visible = torch.cuda.device_count()
    if configured == "cuda":
        return torch.device("cuda", local_rank % visible)
    index = int(configured.partition(":")[2])
    if index >= visible:
        raise ConfigError(
            f"config key 'device': '{configured}' does not exist; this process sees {visible} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); use device=auto"
        )
    return torch.device("cuda", index)


def describe(device: torch.device) -> str:
    """One line for the console: the device this rank uses and the GPUs it could see.

    Config composition has already resolved ``auto``, so the configured value is not repeated.
    """
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    seen = f"{visible} GPU(s) visible" if visible else "no GPU visible"
    if device.type == "cuda":
        return f"device {device} ({torch.cuda.get_device_name(device)}; {seen})"
    return f"device {device} ({seen})"


def trainer_device_kwargs(device: torch.device, accelerator: str = AUTO) -> dict[str, Any]:
    """Lightning's ``accelerator`` and ``devices`` for a single-device stage on ``device``.

    A stage trains on exactly the device its inputs and judges live on; ``trainer.accelerator`` may stay ``auto``
    or name the same kind of device, anything else is refused rather than silently splitting one face over two.
    """
    wanted = {"cuda": "gpu", "cpu": "cpu", "mps": "mps"}.get(device.type)
    if wanted is None:
        raise ConfigError(f"config key 'device': no Lightning accelerator for device type '{device.type}'")
    given = "gpu" if accelerator in GPU_ACCELERATORS else accelerator
    if given not in (AUTO, wanted):
        raise ConfigError(
            f"config key 'trainer.accelerator': '{accelerator}' disagrees with device={device}; "
            f"leave trainer.accelerator=auto (it follows the device) or set device to match"
        )
    if device.type == "cuda":
        return {"accelerator": "gpu", "devices": [device.index if device.index is not None else 0]}
    return {"accelerator": wanted, "devices": 1}


def configure_backends(device: torch.device, allow_tf32: bool, cudnn_benchmark: bool, deterministic: bool) -> None:
    """Set the process-wide numeric switches once per job, before any network runs.

    ``deterministic`` asks PyTorch for deterministic kernels (and cuBLAS for its fixed workspace); ops without a
    deterministic CUDA kernel then raise instead of silently varying.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic
    if deterministic:
        os.environ.setdefault(CUBLAS_WORKSPACE_ENV, DETERMINISTIC_CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
