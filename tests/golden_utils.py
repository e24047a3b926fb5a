"""Shared harness for golden parity tests: discover folders, rebuild weights, compare outputs.

Everything is read from ``$FACECLOAK_SHARED/golden/<folder>`` (``meta.json``, ``keys.json``,
``inputs.pt``, ``expected.pt``) so the tests pass for any folder of the same format.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from facecloak.paths import golden_dir


@dataclass
class GoldenCase:
    """One golden folder: its metadata, key layout, inputs and reference outputs."""

    folder: Path
    meta: dict[str, Any]
    keys: dict[str, dict[str, Any]]

    @property
    def name(self) -> str:
        return self.folder.name

    def inputs(self) -> dict[str, torch.Tensor]:
        return torch.load(self.folder / "inputs.pt", weights_only=True)

    def expected(self) -> dict[str, torch.Tensor]:
        return torch.load(self.folder / "expected.pt", weights_only=True)

    def state_dict(self) -> dict[str, torch.Tensor]:
        seed = int(self.meta.get("weights", {}).get("seed", 0))
        return detweights().deterministic_state_dict(self.keys, seed)


@cache
def detweights() -> ModuleType:
    """Import the shared deterministic-weights recipe from the golden folder (never vendored)."""
    path = golden_dir() / "detweights.py"
    if not path.exists():
        pytest.skip(f"golden recipe not found at {path}; set FACECLOAK_SHARED")
    spec = importlib.util.spec_from_file_location("facecloak_golden_detweights", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_case(folder: Path) -> GoldenCase:
    with open(folder / "meta.json") as f:
        meta = json.load(f)
    with open(folder / "keys.json") as f:
        keys = json.load(f)
    return GoldenCase(folder=folder, meta=meta, keys=keys)


def golden_folders(prefix: str) -> list[Path]:
    """Golden folders whose name starts with ``prefix`` (discovered, never hard-coded)."""
    root = golden_dir()
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix) and (p / "meta.json").exists())


def golden_params(prefix: str) -> list[Any]:
    """pytest parameters for every golden folder with this prefix, or one skip if none exist."""
    folders = golden_folders(prefix)
    if not folders:
        return [
            pytest.param(None, marks=pytest.mark.skip(reason=f"no golden folders '{prefix}*' under {golden_dir()}"))
        ]
    return [pytest.param(f, id=f.name) for f in folders]


def assert_keys_match(state_dict: dict[str, torch.Tensor], keys: dict[str, dict[str, Any]]) -> None:
    """Names, order, shapes and dtypes of ``state_dict`` equal the reference ``keys.json``."""
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state_dict.items()]
    ref = [(k, list(v["shape"]), v.get("dtype", "float32")) for k, v in keys.items()]
    missing = sorted({k for k, *_ in ref} - {k for k, *_ in ours})
    extra = sorted({k for k, *_ in ours} - {k for k, *_ in ref})
    assert not missing and not extra, f"missing keys {missing[:10]}, unexpected keys {extra[:10]}"
    assert ours == ref, "same names but different order, shapes or dtypes"


def assert_close(name: str, ours: torch.Tensor, ref: torch.Tensor, *, atol: float, rtol: float = 0.0) -> None:
    """Compare one output with a message that reports the worst deviation."""
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    diff = (ours.double() - ref.double()).abs()
    bound = atol + rtol * ref.double().abs()
    worst = float(diff.max())
    assert bool((diff <= bound).all()), f"{name}: max abs diff {worst:.3g} exceeds atol={atol} rtol={rtol}"


def parse_tolerance(meta: dict[str, Any], default_atol: float = 1e-5) -> tuple[float, float]:
    """Read ``atol``/``rtol`` from the free-text ``suggested_tolerance`` in ``meta.json``."""
    import re

    text = json.dumps(meta.get("suggested_tolerance", ""))
    atol = re.search(r"atol\s*=?\s*([0-9.eE+-]+)", text)
    rtol = re.search(r"rtol\s*=?\s*([0-9.eE+-]+)", text)
    return (float(atol.group(1)) if atol else default_atol, float(rtol.group(1)) if rtol else 0.0)
