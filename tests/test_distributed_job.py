"""Multi-process protection jobs on CPU (gloo): torchrun and SLURM-style ranks, same outputs as one process."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facecloak.protect.pipeline import image_id_for
from facecloak.runtime.distributed import Ranks, _ranks_named_in, detect_ranks
from test_protect import TINY

SLURM_JOB = {
    "SLURM_NTASKS": "2",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_NODELIST": "127.0.0.1",
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "protect",
}
"""What ``srun --ntasks-per-node=2`` sets for a two-task job on this machine (plus each task's id)."""
PEOPLE = ("jack_dorsey/img16.jpg", "katy_perry/img26.jpg", "elon_musk/img18.jpg")


def _photos(faces_dir: Path) -> list[str]:
    photos = [faces_dir / p for p in PEOPLE]
    missing = [str(p) for p in photos if not p.exists()]
    assert not missing, f"shared photos moved: {missing}"
    return [str(p) for p in photos]


def _env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "LOCAL_", "GROUP_", "WORLD_"))}
    return {**keep, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _protect_args(photos: list[str], out: Path) -> list[str]:
    return ["-m", "facecloak.cli.main", "protect", *photos, "--out", str(out), *TINY]


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.png"))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def single_process(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("one_rank")
    subprocess.run([sys.executable, *_protect_args(_photos(faces_dir), out)], check=True, env=_env(), timeout=900)
    digests = _digests(out)
    assert len(digests) == 2 * len(PEOPLE)
    return digests


def test_ranks_split_photos_round_robin() -> None:
    items = [f"p{i}" for i in range(7)]
    shares = [Ranks(r, 3).share(items) for r in range(3)]
    assert sorted(p for share in shares for p in share) == items  # every photo exactly once
    assert shares[0] == ["p0", "p3", "p6"]
    assert Ranks(1, 2, local_rank=1).device("cpu") == "cpu"  # GPU layouts: tests/test_devices.py


def test_ranks_come_from_the_cluster_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    assert detect_ranks() == Ranks()
    slurm = {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "3", "SLURM_LOCALID": "1"}
    for key, value in {**slurm, "SLURM_NODELIST": "node[1-2]", "SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "job"}.items():
        monkeypatch.setenv(key, value)
    assert detect_ranks() == Ranks(3, 4, 1, "slurm")
    assert _ranks_named_in("Ranks 1, 3 failed to pass monitoredBarrier in 5 ms", 4) == [1, 3]


@pytest.mark.slow
def test_two_ranks_under_torchrun_equal_one_rank(
    faces_dir: Path, tmp_path: Path, single_process: dict[str, str]
) -> None:
    out = tmp_path / "two_ranks"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    subprocess.run(
        [*launcher, *_protect_args(_photos(faces_dir), out)], check=True, env=_env(), timeout=900, capture_output=True
    )
    assert _digests(out) == single_process  # bit-identical, every output written once
    summary = json.loads((out / "summary.json").read_text())
    assert summary["all_photos_processed"] and summary["counts"] == {"done": len(PEOPLE)}


@pytest.mark.slow
def test_a_crashed_rank_is_reported_and_a_rerun_completes(
    faces_dir: Path, tmp_path: Path, single_process: dict[str, str]
) -> None:
    """SLURM-style launch (srun sets these variables); rank 1 is killed, rank 0 finishes and reports it."""
    out = tmp_path / "crash"
    photos = _photos(faces_dir)
    port = str(_free_port())
    processes = []
    for rank in (0, 1):
        task = {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "MASTER_PORT": port}
        env = _env(**SLURM_JOB, **task)
        args = [*_protect_args(photos, out), "trainer.barrier_timeout_s=600"]
        processes.append(subprocess.Popen([sys.executable, *args], env=env, stderr=subprocess.PIPE, text=True))
    # Kill rank 1 mid-photo: once its photo's stage-1 checkpoint exists (both ranks are past start-up).
    rank1_photo = sorted(image_id_for(Path(p)) for p in photos)[1]
    deadline = time.monotonic() + 600
    while not list((out / ".stages").rglob(f"{rank1_photo}*.json")) and time.monotonic() < deadline:
        assert processes[1].poll() is None, "rank 1 ended before it could be killed"
        time.sleep(0.1)
    processes[1].send_signal(signal.SIGKILL)
    processes[1].wait()
    _, stderr = processes[0].communicate(timeout=900)
    assert processes[0].returncode != 0, stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["all_photos_processed"] and summary["missing_ranks"] == [1]
    assert summary["incomplete"]  # rank 1's photo

    subprocess.run([sys.executable, *_protect_args(photos, out)], check=True, env=_env(), timeout=900)
    assert json.loads((out / "summary.json").read_text())["all_photos_processed"]
    assert _digests(out) == single_process


@pytest.mark.slow
def test_score_network_finetuning_is_data_parallel(faces_dir: Path, tmp_path: Path) -> None:
    """MAP on a set of photos under torchrun: two DDP ranks end with the same weights, which rank 0 saves."""
    import torch

    from facecloak.models.ddpm import DDPMUNet

    script = Path(__file__).resolve().parents[1] / "scripts" / "map_finetune_set.py"
    photos = [str(faces_dir / "angelina_jolie" / "img1.jpg"), str(faces_dir / "george_clooney" / "img38.jpg")]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    options = ["--resolution", "16", "--steps", "2", "--inversion-steps", "2", "--devices", "2", "--accelerator", "cpu"]
    subprocess.run([*launcher, *photos, "--out", str(tmp_path), *options], check=True, env=_env(), timeout=900)

    digests = {p.read_text().strip() for p in tmp_path.glob("weights_rank*.sha256")}
    assert len(list(tmp_path.glob("weights_rank*.sha256"))) == 2 and len(digests) == 1  # replicas never diverged
    saved = DDPMUNet.from_pretrained(tmp_path / "network")
    torch.manual_seed(0)  # the script's seed: the network before fine-tuning
    initial = DDPMUNet(saved.config)
    changed = [n for n, p in saved.state_dict().items() if not torch.equal(p, initial.state_dict()[n])]
    assert changed, "fine-tuning did not change the network"
    assert json.loads((tmp_path / "finetune.json").read_text())["world_size"] == 2
