"""Kill a real protection job with SIGKILL at a random moment, rerun it, and get bit-identical outputs."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_protect import TINY

KILL_ROUNDS = 2


def _photos(faces_dir: Path) -> list[str]:
    return [str(faces_dir / "jack_dorsey" / "img16.jpg"), str(faces_dir / "katy_perry" / "img26.jpg")]


def _command(photos: list[str], out: Path) -> list[str]:
    return [sys.executable, "-m", "facecloak.cli.main", "protect", *photos, "--out", str(out), *TINY]


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.png"))}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_killed_job_resumes_to_identical_outputs(faces_dir: Path, tmp_path: Path) -> None:
    photos = _photos(faces_dir)
    reference = tmp_path / "reference"
    subprocess.run(_command(photos, reference), check=True, env=_env(), capture_output=True)
    expected = _digests(reference)
    assert len(expected) == 4  # protected photo + before/after, per photo

    resumed = tmp_path / "resumed"
    rng = random.Random(0)
    for _ in range(KILL_ROUNDS):
        process = subprocess.Popen(
            _command(photos, resumed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(4.0, 12.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        leftovers = [p.name for p in resumed.rglob("*") if p.is_file() and ".tmp" in p.name]
        for name in leftovers:  # a temporary file may be caught mid-write; it is never a final name
            assert name.startswith(".")
    subprocess.run(_command(photos, resumed), check=True, env=_env(), capture_output=True)
    assert _digests(resumed) == expected
