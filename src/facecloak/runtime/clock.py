"""Wall-clock readings that include the GPU's queued work, for benchmarks and stage timings.

CUDA kernels run asynchronously: ``time.perf_counter()`` right after launching them measures the launch, not the
work. :func:`device_clock` waits for the device first, so a difference of two readings is the time the work took.
On a CPU it is the plain clock.
"""

from __future__ import annotations

import time

import torch


def device_clock(device: str | torch.device | None = None) -> float:
    """``time.perf_counter()`` once ``device``'s queued work is done (CUDA waits, a CPU reads at once)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
