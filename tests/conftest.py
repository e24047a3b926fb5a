"""Test session set-up: offline, quiet, few threads, shared resources from ``$FACECLOAK_SHARED``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("FACECLOAK_SHARED", str((Path(__file__).resolve().parents[1] / ".." / "shared").resolve()))

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest
import torch

from facecloak.paths import shared_root

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread for modules of many tiny kernels, where a second thread only adds synchronisation."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared resource root; skip only if it truly is absent."""
    root = shared_root()
    if not root.exists():
        pytest.skip(f"shared resources not found at {root}; set FACECLOAK_SHARED")
    return root


@pytest.fixture(scope="session")
def faces_dir(shared: Path) -> Path:
    path = shared / "faces"
    if not (path / "labels.csv").exists():
        pytest.skip(f"no labelled faces at {path}")
    return path


@pytest.fixture(scope="session")
def weights_dir(shared: Path) -> Path:
    path = shared / "weights"
    if not path.exists():
        pytest.skip(f"no shared weights at {path}")
    return path
