"""Read TF.js weights manifests (graph models and face-api's layers-free manifests) into tensors.

A manifest is a list of groups; each group names ``paths`` (binary shards, concatenated in order) and
``weights`` (name, shape, dtype, optional quantisation). Values are stored back to back in manifest order.
Quantised weights are de-quantised here: ``uint8``/``uint16`` as ``min + q * scale``, ``float16`` as half floats.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facecloak.errors import CorruptWeightsError, MissingWeightsError

_NUMPY_DTYPES: dict[str, Any] = {
    "float32": np.float32,
    "int32": np.int32,
    "bool": np.bool_,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "float16": np.float16,
}


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Return the weights manifest of a graph-model ``model.json`` or of a face-api ``*-weights_manifest.json``."""
    path = Path(path)
    if not path.exists():
        raise MissingWeightsError(f"TF.js manifest not found: {path}")
    with open(path) as f:
        data = json.load(f)
    return data["weightsManifest"] if isinstance(data, dict) else data


def _decode(buffer: bytes, offset: int, spec: dict[str, Any]) -> tuple[np.ndarray, int]:
    shape = [int(s) for s in spec["shape"]]
    count = int(np.prod(shape)) if shape else 1
    quant = spec.get("quantization")
    stored = quant["dtype"] if quant else spec["dtype"]
    itemsize = np.dtype(_NUMPY_DTYPES[stored]).itemsize
    end = offset + count * itemsize
    if end > len(buffer):
        raise CorruptWeightsError(f"weight {spec['name']} runs past the end of the shard data (truncated file?)")
    raw = np.frombuffer(buffer, dtype=_NUMPY_DTYPES[stored], count=count, offset=offset)
    values = raw
    if quant is not None and stored in ("uint8", "uint16"):
        values = quant["min"] + raw.astype(np.float32) * quant["scale"]
    target = _NUMPY_DTYPES[spec["dtype"]]
    return values.astype(target).reshape(shape), end


def load_manifest_weights(manifest_path: str | Path, shard_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Load every weight of a TF.js manifest as a CPU tensor keyed by its TF name (TF layout kept as is)."""
    manifest_path = Path(manifest_path)
    shard_dir = Path(shard_dir) if shard_dir is not None else manifest_path.parent
    tensors: dict[str, torch.Tensor] = {}
    for group in read_manifest(manifest_path):
        buffer = b"".join(_read_shard(shard_dir / p) for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            array, offset = _decode(buffer, offset, spec)
            tensors[spec["name"]] = torch.from_numpy(array.copy())
        if offset != len(buffer):
            raise CorruptWeightsError(
                f"{manifest_path.name}: shards hold {len(buffer)} bytes but the manifest describes {offset}"
            )
    return tensors


def _read_shard(path: Path) -> bytes:
    if not path.exists():
        raise MissingWeightsError(f"TF.js weight shard not found: {path}")
    return path.read_bytes()


def weight_names(manifest_path: str | Path) -> Iterable[str]:
    """Names in manifest order, for strict key checks."""
    for group in read_manifest(manifest_path):
        for spec in group["weights"]:
            yield spec["name"]
