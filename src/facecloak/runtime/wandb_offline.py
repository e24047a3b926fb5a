"""Read an offline W&B run without a server: its logged history, config and exit code.

Offline runs (the default here) are written as a ``run-<id>.wandb`` transaction log: a 7-byte W&B header, then
LevelDB-style log blocks of 32 KiB whose chunks carry protobuf ``Record`` messages. Reading it back lets a user — and
the tests — check the loss curves of a job on a machine with no network, before ``wandb sync`` uploads it.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facecloak.errors import FacecloakError

WANDB_IDENT = b":W&B"
FILE_HEADER_BYTES = 7
BLOCK_BYTES = 32768
CHUNK_HEADER_BYTES = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What an offline run recorded."""

    path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    def curve(self, key: str) -> list[float]:
        """Every logged value of one metric, in logging order."""
        return [row[key] for row in self.history if key in row]


def _chunks(data: bytes) -> Iterator[bytes]:
    """Whole records from the block-structured log (a record may span several chunks and blocks)."""
    position, pending = FILE_HEADER_BYTES, b""
    while position + CHUNK_HEADER_BYTES <= len(data):
        left_in_block = BLOCK_BYTES - position % BLOCK_BYTES
        if left_in_block < CHUNK_HEADER_BYTES:  # block trailer padding
            position += left_in_block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position : position + CHUNK_HEADER_BYTES])
        position += CHUNK_HEADER_BYTES
        chunk = data[position : position + length]
        position += length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk


def _item_key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(run_dir: Path, wait_for_exit_s: float = 0.0) -> OfflineRun:
    """Parse ``run_dir/run-*.wandb`` (an ``offline-run-*`` folder).

    W&B's service process may still be writing when ``finish()`` has returned; ``wait_for_exit_s`` re-reads the log
    until its exit record is there (or the time is up, leaving ``exit_code`` None).
    """
    deadline = time.monotonic() + wait_for_exit_s
    run = _read_once(Path(run_dir))
    while run.exit_code is None and time.monotonic() < deadline:
        time.sleep(0.2)
        run = _read_once(Path(run_dir))
    return run


def _read_once(run_dir: Path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2

    logs = sorted(run_dir.glob("run-*.wandb"))
    if not logs:
        raise FacecloakError(f"{run_dir} holds no run-*.wandb file; is it an offline W&B run folder?")
    data = logs[0].read_bytes()
    if not data.startswith(WANDB_IDENT):
        raise FacecloakError(f"{logs[0]} is not a W&B transaction log")
    run = OfflineRun(logs[0])
    for raw in _chunks(data):
        record = wandb_internal_pb2.Record.FromString(raw)  # type: ignore[attr-defined]
        kind = record.WhichOneof("record_type")
        if kind == "history":
            run.history.append({_item_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "config":
            run.config.update({_item_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "exit":
            run.exit_code = int(record.exit.exit_code)
    return run


def offline_runs(save_dir: Path) -> list[Path]:
    """The offline run folders under a logger's ``save_dir``, oldest first."""
    return sorted((Path(save_dir) / "wandb").glob("offline-run-*"))
