"""Benchmark pivot tuning: seconds per step and peak memory for full-width generators at several sizes and batches.

Every (size, batch) case runs in its own subprocess, so the peak resident set size (CPU) or the peak CUDA
allocation (GPU) belongs to that case alone. Generators have random weights with the config-f widths (channel_base
32768, channel_max 512, style_dim 512, 8 mapping layers); the images are random, which does not change the cost.
tracemalloc is not used: it only sees Python allocations, not torch's tensors, so CPU memory is the process RSS.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_pivot_tuning.py --steps 3 --out bench.md
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from facecloak.models.stylegan2 import Generator, GeneratorConfig
from facecloak.runtime.clock import device_clock
from facecloak.stages.artifacts import save_artifact
from facecloak.stages.pivot_tuning import tune_images
from facecloak.stages.pivot_tuning_config import PivotTuningConfig

STYLE_DIM = 512
N_MLP = 8
MEAN_LATENT_SAMPLES = 1000


def rss_mib() -> float:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(size: int, batch: int, steps: int, perceptual: str, device: str, seed: int) -> dict:
    """Tune ``batch`` random images once with a random full-width generator and measure it."""
    torch.manual_seed(seed)
    started = device_clock(device)
    generator = Generator(GeneratorConfig(size=size, style_dim=STYLE_DIM, n_mlp=N_MLP)).eval().to(device)
    pivots = generator.mean_latent(MEAN_LATENT_SAMPLES)[:, None].repeat(batch, generator.n_latent, 1)
    images = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    ids = [f"bench{i}" for i in range(batch)]
    setup_s = device_clock(device) - started
    rss_setup = rss_mib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    config = PivotTuningConfig(steps=steps, batch_size=batch, perceptual=perceptual)
    accelerator = "gpu" if device == "cuda" else "cpu"
    trainer = {"accelerator": accelerator, "enable_progress_bar": False}
    started = device_clock(device)
    results = tune_images(generator, images, pivots, ids, config, trainer)
    run_s = device_clock(device) - started

    row = {
        "size": size,
        "batch": batch,
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "steps": steps,
        "seconds_per_step": results[0].metrics["seconds_per_step"],
        "run_seconds": run_s,
        "setup_seconds": setup_s,
        "rss_setup_mib": rss_setup,
        "peak_rss_mib": peak_rss_mib(),
        "psnr_gain_db": results[0].metrics["psnr_after"] - results[0].metrics["psnr_before"],
    }
    if device == "cuda":
        row["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        save_artifact(tmp, results[0], generator.cpu())
        row["artifact_bytes"] = sum(p.stat().st_size for p in Path(tmp).iterdir())
    return row


def table(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    gpu = any("peak_cuda_mib" in r for r in rows)
    head = ["size", "batch", "device", "s/step", "s/step/image", "peak RSS MiB", "RSS at setup MiB"]
    head += ["peak CUDA MiB"] if gpu else []
    head += ["artifact MB/image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['size']}²", str(r["batch"]), r["device"], f"{r['seconds_per_step']:.2f}"]
        cells += [f"{r['seconds_per_step'] / r['batch']:.2f}", f"{r['peak_rss_mib']:.0f}", f"{r['rss_setup_mib']:.0f}"]
        cells += [f"{r.get('peak_cuda_mib', float('nan')):.0f}"] if gpu else []
        cells += [f"{r['artifact_bytes'] / 1e6:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=3, help="tuning steps per case; the first is not timed")
    parser.add_argument("--perceptual", default="auto", help="auto | lpips_vgg | msssim")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("--case", type=int, nargs=2, metavar=("SIZE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")

    if args.case:  # child process: one case, one JSON line on stdout
        row = run_case(*args.case, steps=args.steps, perceptual=args.perceptual, device=device, seed=args.seed)
        print("BENCH " + json.dumps(row))
        return

    rows = []
    for size in args.sizes:
        for batch in args.batches:
            cmd = [sys.executable, __file__, "--case", str(size), str(batch), "--steps", str(args.steps)]
            cmd += ["--perceptual", args.perceptual, "--device", device, "--seed", str(args.seed)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row = json.loads(next(line for line in out.splitlines() if line.startswith("BENCH "))[6:])
            print(f"size {size} batch {batch}: {row['seconds_per_step']:.2f} s/step", file=sys.stderr, flush=True)
            rows.append(row)
    text = f"Pivot tuning, {args.steps} steps per case (first step not timed), perceptual={args.perceptual}\n\n"
    text += table(rows) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
