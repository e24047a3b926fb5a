"""Throughput of the per-photo stages: images per second vs how many photos share one optimisation step.

Pivot tuning batches photos by stacking per-photo weight offsets into one vmapped generator; the latent search
batches photos through one shared (tuned) generator. Both are timed here at the offline preset's generator shape
(128 px, random weights — weights do not change the cost) with the preset's real attacked FR models, for batch sizes
1, 2, 4, … Each case runs in its own subprocess; the first step (warm-up) is excluded.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_throughput.py --out docs/bench_throughput.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch

from facecloak.config.compose import compose
from facecloak.faces.templates import get_template
from facecloak.losses.identity import AdversarialIdentityLoss, IdentityReference
from facecloak.models.fr.zoo import load_fr_model
from facecloak.protect.pipeline import build_generator
from facecloak.runtime.clock import device_clock
from facecloak.stages.latent_search import search_latents
from facecloak.stages.pivot_tuning import tune_images


class StepClock(L.Callback):
    """Wall time of every optimisation step after the first (the GPU's queued work included)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        """Record the moment each step's work ends."""
        self.times.append(device_clock(module.device))

    def seconds_per_step(self) -> float:
        """Mean time between step ends, skipping the warm-up step."""
        gaps = [b - a for a, b in zip(self.times, self.times[1:], strict=False)]
        return sum(gaps) / len(gaps)


def run_case(stage: str, batch: int, steps: int, device: str) -> dict[str, Any]:
    """Time ``steps`` steps of one stage on ``batch`` photos at the offline preset's shape."""
    config = compose(["preset=offline", f"device={device}"])
    generator, _ = build_generator(config.generator)
    generator.to(device)
    rng = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = generator.mapping(torch.randn(batch, generator.style_dim, generator=rng).to(device))
    pivots = w[:, None].repeat(1, generator.n_latent, 1)
    noise = [n.to(device) for n in generator.make_noise(batch, generator=rng)]
    ids = [f"photo{i}" for i in range(batch)]
    clock = StepClock()
    trainer = {"accelerator": "gpu" if device == "cuda" else "cpu", "enable_progress_bar": False, "callbacks": [clock]}
    if stage == "tune":
        with torch.no_grad():
            targets = generator.synthesis(pivots + 0.3, noise).clamp(-1, 1)
        tune = replace(config.pivot, steps=steps, batch_size=batch, early_stop_perceptual=None)
        tune_images(generator, targets, pivots, ids, tune, trainer, noise=noise)
    else:
        attacked = [load_fr_model(name, device) for name in config.fr.attacked]
        identity = AdversarialIdentityLoss(attacked, "dodge")
        landmarks = torch.as_tensor(get_template("arcface_112").scaled(generator.config.size).points_array())
        landmarks5 = landmarks.float().expand(batch, 5, 2).clone().to(device)
        with torch.no_grad():
            source = identity.embed((generator.synthesis(pivots, noise) + 1) / 2, landmarks5)
        search = replace(config.search, steps=steps, early_stop=False, identity_mode="dodge")
        thresholds = {m.name: -1.0 for m in attacked}
        search_latents(generator, pivots, noise, landmarks5, ids, identity, IdentityReference(source), thresholds,
                       search, trainer)  # fmt: skip
    per_step = clock.seconds_per_step()
    return {
        "stage": stage,
        "batch": batch,
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "steps": steps,
        "seconds_per_step": per_step,
        "images_per_second": batch / per_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", default=["tune", "search"], choices=["tune", "search"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=6, help="steps per case; the first is not timed")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--case", nargs=2, metavar=("STAGE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")

    if args.case:  # child process: one case, one JSON line on stdout
        print("BENCH " + json.dumps(run_case(args.case[0], int(args.case[1]), args.steps, device)))
        return
    rows = []
    for stage in args.stages:
        for batch in args.batches:
            cmd = [sys.executable, __file__, "--case", stage, str(batch), "--steps", str(args.steps)]
            out = subprocess.run([*cmd, "--device", device], check=True, capture_output=True, text=True).stdout
            row = json.loads(next(line for line in out.splitlines() if line.startswith("BENCH "))[6:])
            print(f"{stage} batch {batch}: {row['images_per_second']:.3f} images/s", file=sys.stderr, flush=True)
            rows.append(row)
    print("| stage | batch | device | s/step | image-steps/s | speed-up vs batch 1 |\n|---|---|---|---|---|---|")
    for row in rows:
        single = next(r for r in rows if r["stage"] == row["stage"] and r["batch"] == rows[0]["batch"])
        speedup = row["images_per_second"] / single["images_per_second"]
        print(f"| {row['stage']} | {row['batch']} | {row['device']} | {row['seconds_per_step']:.3f} | "
              f"{row['images_per_second']:.3f} | {speedup:.2f}× |")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
