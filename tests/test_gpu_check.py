"""The GPU check's CPU dry run (``DEV=cpu SMALL=1 scripts/gpu_check.sh``): every part runs or says why not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from gpu_check import PARTS  # noqa: E402

DRY_RUN_BUDGET_S = 240
"""The script's own budget for a small run; the test allows a margin on top for a loaded machine."""
NEEDS_A_GPU = {"cuda_tests"}
"""Parts that can only skip on a CPU."""


@pytest.mark.slow
def test_cpu_dry_run_reports_every_part(faces_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_", "WORLD_", "MASTER_", "SLURM_"))}
    env.update(DEV="cpu", SMALL="1", OUT=str(tmp_path / "out"), CARRY=str(tmp_path / "no_carry"), OMP_NUM_THREADS="1")
    env.update(PYTHON=sys.executable, FACECLOAK_SHARED=str(faces_dir.parent))
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=DRY_RUN_BUDGET_S + 120)  # fmt: skip
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert done.returncode == 0, log[-3000:]

    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert result["dev"] == "cpu" and result["small"] and result["ok"]
    assert set(result["parts"]) == set(PARTS)
    for name, part in result["parts"].items():
        assert part["status"] in ("ok", "skipped"), (name, part)
        if part["status"] == "skipped":
            assert part["reason"] and part["reason"] != "not run", (name, part)
    assert {n for n, p in result["parts"].items() if p["status"] == "skipped"} <= NEEDS_A_GPU | {"batch"}
    for name in ("e2e_fp32", "e2e_bf16"):
        stages = result["parts"][name]["stages_warm"]
        assert {"photo", "protect/projector", "protect/pivot"} <= set(stages), stages
        assert all(s["seconds_per_image"] > 0 and s["peak_mb_max"] for s in stages.values())
    assert result["parts"]["torchrun"]["equal"]
    report = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| e2e_bf16 | ok |" in report and "2 ranks equal 1 rank" in report
