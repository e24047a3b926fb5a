"""The parts of the GPU check (issue 12) and its report; ``scripts/gpu_check.sh`` runs each part under a time limit.

    python scripts/gpu_check.py part NAME --work DIR     # one part; writes DIR/NAME.json
    python scripts/gpu_check.py mark NAME --work DIR --status timeout --reason "..."   # a part the shell had to stop
    python scripts/gpu_check.py report --work DIR --out OUT   # OUT/gpu_check.json and OUT/gpu_check.md

Parts: ``env`` (versions, device, optional imports), ``cuda_tests`` (``pytest -m cuda``), ``e2e_fp32`` and
``e2e_bf16`` (photos end to end at a 1024 generator with random weights and the paper's step counts: projector 50,
pivot tuning 150, search 50; seconds and peak memory per stage), ``batch`` (``protect.batch_faces=4`` against 4 × 1,
where the key exists) and ``torchrun`` (two ranks on one device give the one-rank outputs). ``DEV=cpu SMALL=1`` runs
the same parts on a CPU at tiny sizes (the test suite does, tests/test_gpu_check.py). Every part records
``status``: ok, failed, timeout or skipped (with a ``reason``).

Only the standard library is imported at the top, so ``mark`` and ``report`` work even where torch does not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("env", "cuda_tests", "e2e_bf16", "e2e_fp32", "batch", "torchrun")
STATUSES = ("ok", "failed", "timeout", "skipped")
PHOTOS = ("jack_dorsey/img16.jpg", "elon_musk/img18.jpg", "angelina_jolie/img10.jpg", "george_clooney/img38.jpg")
"""The photos the check protects (one face each); scripts/gpu_carry.sh copies them."""
OPTIONAL_IMPORTS = ("wandb", "insightface", "dlib", "face_recognition_models", "open_clip", "onnxruntime")
"""Packages facecloak must import without (the GPU machine may lack them; the check does not use them)."""
PAPER_STEPS = {"projector": 50, "pivot": 150, "search": 50}
"""CLIP2Protect's step counts (projector as the offline inversion, PTI's 150 tuning steps, 50 search steps)."""
BATCH_STEP_SHARE = 5
"""The batch part runs a fifth of the paper's steps: faces per second scale with steps, so the ratio stands."""
CONFIG_F = ["generator.size=1024", "generator.style_dim=512", "generator.n_mlp=8", "generator.channel_base=32768"]
CONFIG_F += ["generator.channel_max=512"]
BF16 = "bf16-mixed"
"""StyleGAN2 config-f, the FFHQ 1024 generator's shape (weights random: the cost does not depend on them)."""


# --- settings -----------------------------------------------------------------------------------------------------


def small() -> bool:
    """``SMALL=1``: tiny sizes, for a CPU dry run."""
    return os.environ.get("SMALL", "0") == "1"


def device() -> str:
    """``DEV``: cuda (default) or cpu."""
    return os.environ.get("DEV", "cuda")


def photos() -> list[Path]:
    """The check's photos under ``$FACECLOAK_SHARED/faces`` (two in a small run)."""
    from facecloak.paths import shared_faces_dir

    chosen = [shared_faces_dir() / p for p in PHOTOS[: 2 if small() else 4]]
    missing = [str(p) for p in chosen if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"photos missing: {missing}; run scripts/gpu_carry.sh or set FACECLOAK_SHARED")
    return chosen


def overrides(steps: dict[str, int] | None = None, precision: str = "32-true") -> list[str]:
    """The check's config: the offline preset without dlib (face-api landmarks and held-out judge), full steps."""
    steps = steps or ({"projector": 2, "pivot": 2, "search": 2} if small() else PAPER_STEPS)
    shape = ["scale=smoke"] if small() else [*CONFIG_F, "search.layers=null", "pivot.loss_size=256"]
    return [
        "preset=offline",
        *shape,
        "logger=none",
        f"device={device()}",
        f"trainer.precision={precision}",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=10",
        "faces.landmarks68=faceapi",
        "faces.refine_landmarks=false",
        "fr.held_out=[faceapi_dlib]",
        "protect.max_faces=1",
        f"generator.projector.steps={steps['projector']}",
        f"pivot.steps={steps['pivot']}",
        "pivot.early_stop_perceptual=null",
        f"search.steps={steps['search']}",
        "search.early_stop=false",  # every step runs: the timing is of the full step counts
    ]


# --- parts --------------------------------------------------------------------------------------------------------


def part_env() -> dict[str, Any]:
    """Versions, the device, and which optional packages are absent (facecloak must import without them)."""
    import importlib.metadata as metadata
    import importlib.util

    import torch

    import facecloak.protect.pipeline  # the library path the check runs

    packages = {}
    for name in ("torch", "lightning", "torchmetrics", "kornia", "omegaconf", "open_clip_torch", "facenet-pytorch"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    data = {
        "python": platform.python_version(),
        "packages": packages,
        "cuda_available": torch.cuda.is_available(),
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.machine()})",
        "optional_absent": [m for m in OPTIONAL_IMPORTS if importlib.util.find_spec(m) is None],
        "facecloak": str(Path(facecloak.__file__).parent),
    }
    if device() == "cuda" and not torch.cuda.is_available():
        return {"status": "failed", "reason": "DEV=cuda but torch sees no GPU", **data}
    return {"status": "ok", **data}


def part_cuda_tests() -> dict[str, Any]:
    """``pytest -m cuda``: the tests that need a GPU (they skip without one)."""
    import torch

    report = Path(os.environ["GPU_CHECK_WORK"]) / "cuda_tests.xml"
    # Only the CUDA test file is collected: other test modules import packages the GPU machine may lack.
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", f"--junitxml={report}"]
    cmd.append("tests/test_cuda.py")
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    counts = _junit_counts(report)
    data = {"returncode": done.returncode, **counts, "tail": done.stdout[-1500:]}
    if done.returncode not in (0, 5) or counts.get("failures", 0) or counts.get("errors", 0):
        return {"status": "failed", "reason": "CUDA tests failed", **data}
    if not torch.cuda.is_available():
        return {"status": "skipped", "reason": f"no CUDA device: {counts.get('skipped', 0)} CUDA tests skip", **data}
    return {"status": "ok", **data}


def _junit_counts(path: Path) -> dict[str, int]:
    import xml.etree.ElementTree as ET

    if not path.is_file():
        return {}
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def part_e2e(precision: str) -> dict[str, Any]:
    """Photos end to end as ``protect`` runs them; per stage: synchronised seconds and peak memory (reset per stage)."""
    from facecloak.config.compose import compose
    from facecloak.evaluation.cost import CostLog, summarise_costs
    from facecloak.evaluation.metered_protect import StageMeter
    from facecloak.protect.methods import build_protector
    from facecloak.protect.pipeline import image_id_for
    from facecloak.stages import pivot_tuning

    out = Path(os.environ["GPU_CHECK_WORK"]) / f"e2e_{precision}"
    config = compose(overrides(precision=precision))
    protector = build_protector(config, stage_dir=out / ".stages")
    meter = StageMeter(protector, protector.device)
    protector.invert = _measured(meter, "projector", protector.invert)  # type: ignore[method-assign]
    if hasattr(pivot_tuning, "tune_images"):  # looked up when stage 1 runs, so the measured one is called
        pivot_tuning.tune_images = _measured(meter, "pivot", pivot_tuning.tune_images)
    rows = []
    for path in photos():
        meter.costs = CostLog()
        with meter.costs.stage("photo", protector.device) as total:
            record = protector.protect_photo(path, image_id_for(path), out)
        rows.append({"photo": path.name, "faces": len(record["faces"]), "stages": meter.costs.to_dict()})
        rows[-1]["seconds"] = total.seconds
    warm = rows[1:] or rows  # the first photo pays for kernel selection and allocator growth
    return {
        "status": "ok" if all(r["faces"] == 1 for r in rows) else "failed",
        "reason": "" if all(r["faces"] == 1 for r in rows) else "a photo had no face protected",
        "precision": precision,
        "settings": overrides(precision=precision),
        "photos": rows,
        "stages_warm": summarise_costs([r["stages"] for r in warm]),
        "seconds_per_face_warm": sum(r["seconds"] for r in warm) / sum(r["faces"] for r in warm),
    }


def _measured(meter: Any, stage: str, run: Callable[..., Any]) -> Callable[..., Any]:
    """``run`` timed and memory-measured as one more stage of the photo's costs."""

    def measured(*args: Any, **kwargs: Any) -> Any:
        with meter.stage(stage):
            return run(*args, **kwargs)

    return measured


def part_batch() -> dict[str, Any]:
    """``protect.batch_faces=4`` against 4 × 1 on the same photos: faces per second and the largest pixel change."""
    from dataclasses import fields

    from facecloak.config.schema import ProtectSettings

    if "batch_faces" not in {f.name for f in fields(ProtectSettings)}:
        return {"status": "skipped", "reason": "protect.batch_faces is not available on this branch"}
    from facecloak.config.compose import compose
    from facecloak.protect.runner import run_protect_job
    from facecloak.runtime.clock import device_clock

    steps = {k: 1 for k in PAPER_STEPS} if small() else {k: v // BATCH_STEP_SHARE for k, v in PAPER_STEPS.items()}
    precision = "32-true" if small() else BF16
    batch = len(photos())
    work = Path(os.environ["GPU_CHECK_WORK"])
    warm_up = compose([*overrides({k: 1 for k in PAPER_STEPS}, precision), "protect.batch_faces=1"])
    run_protect_job(photos()[:1], work / "batch_warm_up", warm_up)  # imports, kernels: neither timed run pays them
    runs = {}
    for faces in (1, batch):
        out = work / f"batch_{faces}"
        config = compose([*overrides(steps, precision), f"protect.batch_faces={faces}"])
        started = device_clock(config.device)
        summary = run_protect_job(photos(), out, config)
        seconds = device_clock(config.device) - started
        runs[faces] = {"seconds": seconds, "faces_per_second": len(photos()) / seconds, "summary_counts": summary}
        runs[faces]["outputs"] = _pixels(out)
    diff = max(_max_abs_diff(runs[1]["outputs"][k], runs[batch]["outputs"][k]) for k in runs[1]["outputs"])
    speedup = runs[batch]["faces_per_second"] / runs[1]["faces_per_second"]
    for run in runs.values():
        run.pop("outputs")
        run["summary_counts"] = run["summary_counts"].get("counts")
    return {"status": "ok", "steps": steps, "precision": precision, "batch": batch, "runs": runs,
            "speedup": speedup, "max_abs_pixel_diff": diff}  # fmt: skip


def _pixels(out: Path) -> dict[str, Any]:
    from facecloak.io.images import load_photo

    return {p.name: load_photo(p, max_side=None).rgb for p in sorted(out.glob("*.png"))}


def _max_abs_diff(a: Any, b: Any) -> int:
    import numpy as np

    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def part_torchrun() -> dict[str, Any]:
    """Two ranks on one device (torchrun) write what one rank writes: bit for bit, or within one level per pixel.

    Not ``trainer.deterministic``: PyTorch has no deterministic CUDA kernel for the backward of ``grid_sample``
    (the FR crops), so two runs may differ in the last bits there; the report says which of the two held.
    """
    steps = {k: 1 for k in PAPER_STEPS} if small() else {"projector": 5, "pivot": 5, "search": 5}
    base = overrides(steps)
    if not small():  # equality, not speed, is checked here: a 256 px generator keeps the part short
        base = [o for o in base if not o.startswith("generator.size")] + ["generator.size=256"]
    work = Path(os.environ["GPU_CHECK_WORK"])
    args = ["-m", "facecloak.cli.main", "protect", *map(str, photos())]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_", "WORLD_", "MASTER_", "SLURM_"))}
    outputs, digests = {}, {}
    for ranks, launcher in ((1, []), (2, ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"])):
        out = work / f"torchrun_{ranks}"
        done = subprocess.run([sys.executable, *launcher, *args, "--out", str(out), *base], cwd=ROOT, env=env,
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode:
            reason = f"{ranks} rank(s) exited {done.returncode}"
            return {"status": "failed", "reason": reason, "tail": done.stderr[-2000:]}
        digests[ranks] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.png"))}
        outputs[ranks] = _pixels(out)
    if not digests[1] or digests[1].keys() != digests[2].keys():
        return {"status": "failed", "reason": f"outputs {sorted(digests[1])} vs {sorted(digests[2])}"}
    diff = max(_max_abs_diff(outputs[1][k], outputs[2][k]) for k in outputs[1])
    equal = digests[1] == digests[2]
    return {"status": "ok" if diff <= 1 else "failed", "reason": "" if diff <= 1 else "2-rank outputs differ",
            "outputs": len(digests[1]), "equal": equal, "max_abs_pixel_diff": diff, "settings": base}  # fmt: skip


PART_RUNNERS: dict[str, Callable[[], dict[str, Any]]] = {
    "env": part_env,
    "cuda_tests": part_cuda_tests,
    "e2e_fp32": lambda: part_e2e("32-true"),
    "e2e_bf16": lambda: part_e2e(BF16),
    "batch": part_batch,
    "torchrun": part_torchrun,
}


# --- report -------------------------------------------------------------------------------------------------------


def write_part(work: Path, name: str, result: dict[str, Any]) -> None:
    """One part's result, as JSON in the work folder."""
    (work / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")


def run_part(name: str, work: Path) -> int:
    """Run one part; a crash is recorded as ``failed`` with its traceback, never lost."""
    os.environ["GPU_CHECK_WORK"] = str(work)
    started = time.perf_counter()
    try:
        result = PART_RUNNERS[name]()
    except Exception as error:  # the report must say what broke, whatever it was
        result = {"status": "failed", "reason": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    result["wall_seconds"] = round(time.perf_counter() - started, 2)
    write_part(work, name, result)
    return 0 if result["status"] in ("ok", "skipped") else 1


def report(work: Path, out: Path, budget_s: float, elapsed_s: float) -> dict[str, Any]:
    """Every part's result in one JSON and one markdown file under ``out``; a part that never ran says so."""
    parts = {}
    for name in PARTS:
        path = work / f"{name}.json"
        parts[name] = json.loads(path.read_text()) if path.is_file() else {"status": "skipped", "reason": "not run"}
    install = work / "install.json"
    result = {
        "dev": device(),
        "small": small(),
        "budget_seconds": budget_s,
        "elapsed_seconds": elapsed_s,
        "install": json.loads(install.read_text()) if install.is_file() else {"status": "skipped"},
        "parts": parts,
        "ok": all(p["status"] in ("ok", "skipped") for p in parts.values()),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    """The report for docs/benchmarks.md: parts, then per-stage seconds and peak memory, batch and ranks."""
    parts = result["parts"]
    env = parts["env"]
    lines = [f"# GPU check ({'small, ' if result['small'] else ''}{result['dev']}: {env.get('device_name', '?')})", ""]
    lines += [f"torch {env.get('packages', {}).get('torch')}, python {env.get('python')}; "
              f"{result['elapsed_seconds']:.0f} s of a {result['budget_seconds']:.0f} s budget.", ""]  # fmt: skip
    lines += ["| part | status | seconds | note |", "|---|---|---|---|"]
    for name, part in parts.items():
        lines.append(f"| {name} | {part['status']} | {part.get('wall_seconds', '')} | {part.get('reason', '')} |")
    for name in ("e2e_fp32", "e2e_bf16"):
        part = parts[name]
        if part["status"] != "ok":
            continue
        lines += ["", f"## {name}: {part['seconds_per_face_warm']:.1f} s per face (photos 2+)", ""]
        lines += ["| stage | mean s | peak MB |", "|---|---|---|"]
        for stage, cost in part["stages_warm"].items():
            peak = cost["peak_mb_max"]
            lines.append(f"| {stage} | {cost['seconds_per_image']:.2f} | {'' if peak is None else round(peak)} |")
    batch = parts["batch"]
    if batch["status"] == "ok":
        runs = batch["runs"]
        lines += ["", f"## batch: {batch['speedup']:.2f}× faces/s at batch {batch['batch']} vs 1 "
                  f"(max pixel change {batch['max_abs_pixel_diff']})", ""]  # fmt: skip
        lines += [f"- batch {k}: {v['seconds']:.1f} s, {v['faces_per_second']:.3f} faces/s" for k, v in runs.items()]
    run2 = parts["torchrun"]
    if "equal" in run2:
        same = "equal" if run2["equal"] else f"within {run2['max_abs_pixel_diff']} level(s) of"
        lines += ["", f"## torchrun: 2 ranks {same} 1 rank ({run2['outputs']} outputs)"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["part", "mark", "report"])
    parser.add_argument("name", nargs="?", choices=PARTS)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--status", choices=STATUSES, default="timeout")
    parser.add_argument("--reason", default="")
    parser.add_argument("--budget", type=float, default=0.0)
    parser.add_argument("--elapsed", type=float, default=0.0)
    args = parser.parse_args()
    if args.command == "part":
        sys.exit(run_part(args.name, args.work))
    if args.command == "mark":
        if not (args.work / f"{args.name}.json").is_file():  # a part that finished keeps its own result
            write_part(args.work, args.name, {"status": args.status, "reason": args.reason})
        return
    result = report(args.work, args.out, args.budget, args.elapsed)
    print(markdown(result))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
