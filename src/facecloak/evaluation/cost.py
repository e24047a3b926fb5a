"""What one stage of a method costs: wall-clock seconds and peak memory, per image.

Why a helper of its own: the evaluation compares methods whose costs differ by orders of magnitude (a pixel attack,
the two stages of ``protect``), and the papers' claims of practicality rest on exactly these two numbers. Measuring
them the same way for every method is the only way the cost table compares like with like.

Memory, by device; both use a process-wide peak counter that is reset when a stage starts:

- **CUDA**: ``torch.cuda.max_memory_allocated`` (tensors only, not the allocator's cache), reset with
  ``torch.cuda.reset_peak_memory_stats``.
- **CPU**: the kernel's high-water mark of the process's resident set (``VmHWM`` in ``/proc/self/status``), reset
  by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0): exact, and free while the stage runs. Where the
  reset is refused, a small thread samples the RSS every ``SAMPLE_SECONDS`` instead (and the high-water mark still
  counts when it rose during the stage). Without ``/proc`` at all the memory numbers are None, never guessed.
  A reset also resets ``getrusage``'s ``ru_maxrss`` of this process.

Blocks may nest (a photo around its two stages): before an inner block resets the counter, the peak so far is
folded into every enclosing block, and the inner peak is folded out again when it ends, so every level stays exact.
Not thread-safe: measure one thing at a time per process.

Each measurement reports the absolute peak (``peak_mb``: the process RSS, or CUDA tensors, models included) and the
stage's own working memory (``peak_increase_mb``: peak minus what was in use when the stage started).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

MB = float(1 << 20)
SAMPLE_SECONDS = 0.005
"""Fallback CPU sampling period: short against any stage worth measuring, one small file read per sample."""
STATM = Path("/proc/self/statm")
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_HIGH_WATER_MARK = "5"
"""proc(5), /proc/pid/clear_refs: writing 5 resets the peak RSS to the current RSS."""
CUDA_SOURCE = "peak CUDA tensor memory (torch.cuda.max_memory_allocated, reset per stage)"
CPU_SOURCE = "peak process RSS (kernel high-water mark, reset per stage)"
CPU_SAMPLED_SOURCE = f"peak process RSS (sampled every {SAMPLE_SECONDS * 1000:g} ms)"


@dataclass
class StageCost:
    """Seconds and memory of one stage on one image (memory None where the platform cannot measure it)."""

    seconds: float = 0.0
    peak_mb: float | None = None
    peak_increase_mb: float | None = None
    memory_source: str | None = None

    def add(self, other: StageCost) -> None:
        """Fold a later run of the same stage into this one (e.g. a second face): seconds add, peaks take the max."""
        self.seconds += other.seconds
        self.peak_mb = _max_or_none(self.peak_mb, other.peak_mb)
        self.peak_increase_mb = _max_or_none(self.peak_increase_mb, other.peak_increase_mb)
        self.memory_source = self.memory_source or other.memory_source

    def to_dict(self) -> dict[str, Any]:
        """Plain data for reports."""
        return asdict(self)


def _max_or_none(a: float | None, b: float | None) -> float | None:
    values = [v for v in (a, b) if v is not None]
    return max(values) if values else None


# ---------------------------------------------------------------- reading the counters


def rss_bytes() -> int | None:
    """Resident set size of this process now, or None where ``/proc`` is not available."""
    try:
        return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError, AttributeError):
        return None


def high_water_mark_bytes() -> int | None:
    """The kernel's peak RSS of this process since start or the last reset (``VmHWM``); None without ``/proc``."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, IndexError, ValueError):
        return None
    return None


def _reset_high_water_mark() -> bool:
    try:
        CLEAR_REFS.write_text(RESET_HIGH_WATER_MARK)
    except OSError:
        return False
    return True


def _hwm_or_zero() -> int:
    return high_water_mark_bytes() or 0


class _ResettablePeak:
    """A process-wide peak counter shared by nested blocks: what one block's reset erases is kept for the others."""

    def __init__(self, read: Callable[[], int], reset: Callable[[], bool]) -> None:
        self.read = read
        self.reset = reset
        self.open: list[list[int]] = []  # peak seen so far by each enclosing block, innermost last

    def _fold(self, value: int) -> None:
        for peak in self.open:
            peak[0] = max(peak[0], value)

    def enter(self) -> list[int] | None:
        """Hand the peak so far to the open blocks, reset the counter and open a new block (None: reset refused)."""
        self._fold(self.read())
        if not self.reset():
            return None
        frame = [self.read()]
        self.open.append(frame)
        return frame

    def exit(self, frame: list[int]) -> int:
        """Close the innermost block; its peak, which the enclosing blocks also saw."""
        assert self.open and self.open[-1] is frame, "cost blocks must nest"
        self.open.pop()
        peak = max(frame[0], self.read())
        self._fold(peak)
        return peak


_CPU_PEAK = _ResettablePeak(_hwm_or_zero, _reset_high_water_mark)
_CUDA_PEAKS: dict[torch.device, _ResettablePeak] = {}


def _cuda_peak(device: torch.device) -> _ResettablePeak:
    def reset() -> bool:
        torch.cuda.reset_peak_memory_stats(device)
        return True

    if device not in _CUDA_PEAKS:
        _CUDA_PEAKS[device] = _ResettablePeak(lambda: torch.cuda.max_memory_allocated(device), reset)
    return _CUDA_PEAKS[device]


class _RssSampler:
    """Fallback where the high-water mark cannot be reset: a daemon thread keeping the largest RSS it sees."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="facecloak-rss-sampler", daemon=True)

    def _sample(self) -> None:
        value = rss_bytes()
        if value is not None and value > self.peak:
            self.peak = value

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def start(self) -> None:
        self._sample()
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self._sample()  # what is still held at the very end counts too
        return self.peak


# ---------------------------------------------------------------- measuring a block


def uses_cuda(device: str | torch.device) -> bool:
    """Whether a configured device string names a CUDA device."""
    return torch.device(device).type == "cuda"


def memory_source(device: str | torch.device) -> str:
    """What the memory numbers of a run on ``device`` measure, for reports (each stage also names its own)."""
    return CUDA_SOURCE if uses_cuda(device) else f"{CPU_SOURCE}; where refused, {CPU_SAMPLED_SOURCE}"


@contextmanager
def measure(device: str | torch.device = "cpu") -> Iterator[StageCost]:
    """Time a block and record its peak memory on ``device``; the yielded record is filled in when the block ends."""
    cost = StageCost()
    if uses_cuda(device):
        with _measure_cuda(torch.device(device), cost):
            yield cost
    else:
        with _measure_cpu(cost):
            yield cost


@contextmanager
def _measure_cuda(device: torch.device, cost: StageCost) -> Iterator[None]:
    counter = _cuda_peak(device)
    torch.cuda.synchronize(device)
    start_bytes = torch.cuda.memory_allocated(device)
    frame = counter.enter()
    assert frame is not None  # the CUDA counter always resets
    started = time.perf_counter()
    try:
        yield
    finally:
        torch.cuda.synchronize(device)
        cost.seconds = time.perf_counter() - started
        peak_bytes = counter.exit(frame)
        cost.peak_mb = peak_bytes / MB
        cost.peak_increase_mb = (peak_bytes - start_bytes) / MB
        cost.memory_source = CUDA_SOURCE


@contextmanager
def _measure_cpu(cost: StageCost) -> Iterator[None]:
    start_bytes = rss_bytes()
    if start_bytes is None:  # no /proc: time only
        started = time.perf_counter()
        try:
            yield
        finally:
            cost.seconds = time.perf_counter() - started
        return
    frame = _CPU_PEAK.enter()
    sampler = _RssSampler(SAMPLE_SECONDS) if frame is None else None
    start_hwm = high_water_mark_bytes()
    if sampler is not None:
        sampler.start()
    started = time.perf_counter()
    try:
        yield
    finally:
        cost.seconds = time.perf_counter() - started
        if frame is not None:
            peak_bytes = _CPU_PEAK.exit(frame)
            cost.memory_source = CPU_SOURCE
        else:
            assert sampler is not None
            peak_bytes = sampler.stop()
            end_hwm = high_water_mark_bytes()
            if start_hwm is not None and end_hwm is not None and end_hwm > start_hwm:
                peak_bytes = max(peak_bytes, end_hwm)  # the process's record was set during this block
            cost.memory_source = CPU_SAMPLED_SOURCE
        cost.peak_mb = peak_bytes / MB
        cost.peak_increase_mb = max(0, peak_bytes - start_bytes) / MB


# ---------------------------------------------------------------- per image, per stage


@dataclass
class CostLog:
    """Costs of named stages for one image; a stage run twice (two faces) is folded with ``StageCost.add``."""

    stages: dict[str, StageCost] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str, device: str | torch.device) -> Iterator[StageCost]:
        """Measure a block as (another run of) stage ``name``; stages are listed in the order they first start."""
        fresh = name not in self.stages
        if fresh:
            self.stages[name] = StageCost()
        try:
            with measure(device) as cost:
                yield cost
        except BaseException:
            if fresh:
                del self.stages[name]  # an unfinished stage has no cost to report
            raise
        self.stages[name].add(cost)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{stage: {seconds, peak_mb, peak_increase_mb, memory_source}}``."""
        return {name: cost.to_dict() for name, cost in self.stages.items()}


def summarise_costs(per_image: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per stage over images: mean seconds, mean and max peak memory, the number of images and the memory source."""
    names = list(dict.fromkeys(name for image in per_image for name in image))
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        runs = [image[name] for image in per_image if name in image]
        peaks = [r["peak_mb"] for r in runs if r["peak_mb"] is not None]
        increases = [r["peak_increase_mb"] for r in runs if r["peak_increase_mb"] is not None]
        out[name] = {
            "n": len(runs),
            "seconds_per_image": sum(r["seconds"] for r in runs) / len(runs),
            "peak_mb_max": max(peaks) if peaks else None,
            "peak_increase_mb_mean": sum(increases) / len(increases) if increases else None,
            "peak_increase_mb_max": max(increases) if increases else None,
            "memory_source": next((r["memory_source"] for r in runs if r["memory_source"]), None),
        }
    return out
