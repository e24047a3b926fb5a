"""One device policy: `device: auto` resolves per rank, the Trainer follows the device, disagreements are refused.

CUDA is not available here, so the GPU branches are checked with the visible-GPU count patched — the policy is
arithmetic on that count and the rank, which is exactly what SLURM/torchrun layouts change.
"""

from __future__ import annotations

import pytest
import torch

from facecloak.config.compose import compose
from facecloak.errors import ConfigError
from facecloak.protect.runner import result_affecting_config
from facecloak.runtime.devices import (
    configure_backends,
    describe,
    local_rank_from_env,
    resolve_device,
    trainer_device_kwargs,
)
from facecloak.runtime.distributed import Ranks


@pytest.fixture
def visible_gpus(monkeypatch):
    """Pretend this process sees ``n`` GPUs (as CUDA_VISIBLE_DEVICES / SLURM binding would leave it)."""

    def set_count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return set_count


def test_auto_is_cpu_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_device("auto") == torch.device("cpu")
    assert compose([]).device == "cpu"
    assert describe(torch.device("cpu")) == "device cpu (no GPU visible)"


def test_cuda_without_a_gpu_is_a_config_error(visible_gpus):
    visible_gpus(0)
    with pytest.raises(ConfigError, match=r"device.*CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="device"):
        compose(["device=cuda"])


@pytest.mark.parametrize(
    ("visible", "local_rank", "expected"),
    [
        (8, 3, "cuda:3"),  # torchrun, one node, 8 GPUs
        (1, 3, "cuda:0"),  # SLURM binds one GPU per task: every task sees index 0
        (1, 1, "cuda:0"),  # two ranks sharing one GPU
        (2, 5, "cuda:1"),  # more ranks than GPUs: round-robin
    ],
)
def test_local_rank_maps_onto_visible_gpus(visible_gpus, visible, local_rank, expected):
    visible_gpus(visible)
    assert str(resolve_device("auto", local_rank)) == expected
    assert str(resolve_device("cuda", local_rank)) == expected
    assert Ranks(rank=local_rank, world_size=8, local_rank=local_rank).device("cuda") == expected


def test_explicit_gpu_index_is_checked(visible_gpus):
    visible_gpus(2)
    assert resolve_device("cuda:1", local_rank=0) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="'cuda:2' does not exist; this process sees 2 GPU"):
        resolve_device("cuda:2")


def test_local_rank_from_torchrun_and_slurm(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("SLURM_LOCALID", raising=False)
    assert local_rank_from_env() == 0
    monkeypatch.setenv("SLURM_LOCALID", "2")
    assert local_rank_from_env() == 2
    monkeypatch.setenv("LOCAL_RANK", "5")
    assert local_rank_from_env() == 5


def test_trainer_follows_the_device():
    assert trainer_device_kwargs(torch.device("cpu")) == {"accelerator": "cpu", "devices": 1}
    assert trainer_device_kwargs(torch.device("cuda", 3), "auto") == {"accelerator": "gpu", "devices": [3]}
    assert trainer_device_kwargs(torch.device("cuda", 1), "gpu")["devices"] == [1]
    with pytest.raises(ConfigError, match=r"trainer\.accelerator.*disagrees with device=cpu"):
        trainer_device_kwargs(torch.device("cpu"), "gpu")
    with pytest.raises(ConfigError, match=r"trainer\.accelerator"):
        trainer_device_kwargs(torch.device("cuda", 0), "cpu")


def test_rank_gpu_index_does_not_change_the_job_fingerprint():
    config = compose(["scale=smoke"])
    plain = result_affecting_config(config)
    assert plain["device"] == "cpu"
    from dataclasses import replace

    assert result_affecting_config(replace(config, device="cuda:3"))["device"] == "cuda"


def test_backend_switches(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
    )
    try:
        configure_backends(torch.device("cpu"), allow_tf32=True, cudnn_benchmark=True, deterministic=False)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.benchmark
        configure_backends(torch.device("cpu"), allow_tf32=False, cudnn_benchmark=True, deterministic=True)
        assert not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.benchmark  # autotuning is not reproducible
        assert torch.are_deterministic_algorithms_enabled()
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[0], before[1]
        torch.backends.cudnn.benchmark = before[2]
        torch.use_deterministic_algorithms(before[3])
        torch.backends.cudnn.deterministic = before[4]
