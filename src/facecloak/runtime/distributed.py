"""Ranks of a multi-process protection job, found through Lightning's cluster environments.

Per-image stages never average gradients between photos: each rank protects its own share of the photos with a
single-device Trainer, so a photo's result does not depend on how many ranks ran the job. The ranks only meet at
barriers (a gloo process group, whatever the accelerator), so the job can check its own completeness at the end —
a rank that crashed is reported instead of leaving a silently incomplete job with exit code 0.

Works under ``torchrun`` (TorchElastic), SLURM (``srun``) and plain single-process runs.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch.distributed as dist

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    environment: str = "single"

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the job-level files (summary, restart clean-up)."""
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """Items of this rank: a round-robin split of an order every rank agrees on."""
        return list(items[self.rank :: self.world_size])

    def device(self, configured: str) -> str:
        """The device of this rank: ``auto``/``cuda`` → ``cuda:(LOCAL_RANK mod visible GPUs)``; explicit ones kept."""
        from facecloak.runtime.devices import resolve_device

        return str(resolve_device(configured, self.local_rank))

    def barrier(self, timeout_s: float) -> list[int]:
        """Wait for every rank; the ranks that did not arrive in time (empty when all did)."""
        if self.world_size == 1 or not dist.is_initialized():
            return []
        try:
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=timeout_s), wait_all_ranks=True)
        except RuntimeError as err:
            log.error("ranks missing at the barrier: %s", err)
            return _ranks_named_in(str(err), self.world_size)
        return []


def _ranks_named_in(message: str, world_size: int) -> list[int]:
    """Parse gloo's 'Ranks 1, 2 failed to pass monitoredBarrier' (any rank but 0 when it cannot be parsed)."""
    import re

    match = re.search(r"[Rr]anks? ([\d, ]+) failed", message)
    if match:
        return sorted(int(r) for r in match.group(1).replace(" ", "").split(",") if r)
    return list(range(1, world_size))


def _cluster_environment() -> Any:
    """The Lightning cluster environment this process runs under (torchrun, SLURM), else None."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    for environment in (TorchElasticEnvironment, SLURMEnvironment):
        if environment.detect():
            return environment()
    return None


def detect_ranks() -> Ranks:
    """Rank, world size and local rank from torchrun or SLURM; a single rank otherwise."""
    environment = _cluster_environment()
    if environment is None:
        return Ranks()
    return Ranks(
        environment.global_rank(),
        environment.world_size(),
        environment.local_rank(),
        type(environment).__name__.removesuffix("Environment").lower(),
    )


@contextlib.contextmanager
def job_ranks(timeout_s: float) -> Iterator[Ranks]:
    """The job's ranks, with a gloo process group for the barriers while the job runs (when there are several)."""
    ranks = detect_ranks()
    started_group = False
    if ranks.world_size > 1 and not dist.is_initialized():
        environment = _cluster_environment()
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://{environment.main_address}:{environment.main_port}",
            rank=ranks.rank,
            world_size=ranks.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        started_group = True
    try:
        yield ranks
    finally:
        if started_group:
            dist.destroy_process_group()
