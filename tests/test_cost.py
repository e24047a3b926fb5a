"""Cost measurement: seconds and peak memory of a block, on crafted allocations whose size is known."""

from __future__ import annotations

import mmap
import time
from pathlib import Path

import pytest
import torch

from facecloak.evaluation import cost as cost_module
from facecloak.evaluation.cost import CPU_SAMPLED_SOURCE, CPU_SOURCE, CostLog, measure, rss_bytes, summarise_costs

ALLOCATED_MB = 200
SEEN = 0.75 * ALLOCATED_MB
"""What a measurement must at least report for an ALLOCATED_MB array (pages the allocator had kept may be reused)."""

needs_proc = pytest.mark.skipif(rss_bytes() is None, reason="process RSS needs /proc (Linux)")


def _touch(megabytes: int) -> mmap.mmap:
    """Fresh anonymous memory whose every page is written, so it is resident, not just reserved.

    An anonymous mapping, not a numpy array: in a long test process the allocator may hand back pages it kept from
    earlier tests (already resident), and the block would then rightly show no increase.
    """
    block = mmap.mmap(-1, megabytes << 20)
    block.write(b"\x01" * (megabytes << 20))
    return block


@pytest.fixture(params=["high-water mark", "sampled"])
def cpu_method(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Both CPU paths: the kernel's resettable high-water mark, and the sampling thread used where it is refused."""
    if request.param == "sampled":
        monkeypatch.setattr(cost_module, "CLEAR_REFS", tmp_path / "absent" / "clear_refs")  # the reset is refused
        return CPU_SAMPLED_SOURCE
    return CPU_SOURCE


@needs_proc
def test_cpu_peak_sees_an_allocation_freed_inside_the_block(cpu_method: str) -> None:
    with measure("cpu") as cost:
        block = _touch(ALLOCATED_MB)
        time.sleep(0.05)  # longer than a sampling period
        del block  # freed before the block ends: only the peak counter can have seen it
    assert cost.memory_source == cpu_method
    assert cost.peak_increase_mb is not None and cost.peak_mb is not None
    assert cost.peak_increase_mb >= SEEN
    assert cost.peak_mb >= cost.peak_increase_mb
    assert cost.seconds >= 0.05


@needs_proc
def test_cpu_block_without_allocation_reports_little_memory(cpu_method: str) -> None:
    with measure("cpu") as cost:
        time.sleep(0.02)
    assert cost.peak_increase_mb is not None and cost.peak_increase_mb < 0.25 * ALLOCATED_MB


@needs_proc
def test_outer_block_keeps_the_peak_an_inner_reset_would_erase() -> None:
    with measure("cpu") as outer:
        block = _touch(ALLOCATED_MB)
        del block
        with measure("cpu") as inner:  # resets the high-water mark: the 200 MB must survive in the outer block
            small = _touch(ALLOCATED_MB // 4)
            del small
    assert inner.memory_source == CPU_SOURCE
    assert inner.peak_increase_mb is not None and inner.peak_increase_mb < SEEN
    assert outer.peak_increase_mb is not None and outer.peak_increase_mb >= SEEN


@needs_proc
def test_cost_log_folds_repeated_stages_and_summarises() -> None:
    images = []
    for megabytes in (ALLOCATED_MB // 4, ALLOCATED_MB):
        log = CostLog()
        with log.stage("photo", "cpu"):
            for _ in range(2):  # two faces: the same inner stage twice
                with log.stage("face", "cpu"):
                    block = _touch(megabytes)
                    del block
        images.append(log.to_dict())
    inner, outer = images[1]["face"], images[1]["photo"]
    assert outer["peak_increase_mb"] >= SEEN  # the outer block saw what its inner blocks allocated
    assert inner["seconds"] <= outer["seconds"]
    summary = summarise_costs(images)
    assert list(summary) == ["photo", "face"]  # in the order the stages start
    assert summary["photo"]["n"] == 2
    assert summary["photo"]["peak_increase_mb_max"] >= SEEN
    assert summary["photo"]["peak_increase_mb_mean"] < summary["photo"]["peak_increase_mb_max"]
    assert summary["face"]["seconds_per_image"] == pytest.approx((images[0]["face"]["seconds"] + inner["seconds"]) / 2)


def test_a_failed_stage_is_not_reported() -> None:
    log = CostLog()
    with pytest.raises(RuntimeError), log.stage("photo", "cpu"):
        raise RuntimeError("no face")
    assert log.to_dict() == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA peak memory needs a GPU")
def test_cuda_peak_of_nested_blocks() -> None:
    device = torch.device("cuda")
    with measure(device) as outer:
        big = torch.empty(ALLOCATED_MB << 20, dtype=torch.uint8, device=device)
        del big
        with measure(device) as inner:
            small = torch.empty((ALLOCATED_MB // 4) << 20, dtype=torch.uint8, device=device)
            del small
    assert inner.peak_increase_mb == pytest.approx(ALLOCATED_MB / 4, rel=0.05)
    # The inner block reset the counter; the outer one still reports the larger allocation made before it.
    assert outer.peak_increase_mb is not None and outer.peak_increase_mb >= 0.99 * ALLOCATED_MB
