"""Seconds per photo of a real `facecloak protect` job at ``protect.batch_faces`` 1 vs N, on the same photos.

Each run is a fresh process running the job as a user would (detection, the three CLIP2Protect stages, paste-back,
writing, judging); a photo's cost is the ``seconds`` of its record (its own work plus its share of its batch's stage
runs), so loading the networks once per job is left out. Every run repeats ``--repeats`` times; the table gives the
mean seconds per photo and the spread (min–max of the per-run means).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_batch_faces.py --batches 1 4 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean

from facecloak.paths import shared_root

PHOTOS = ("jack_dorsey/img16.jpg", "katy_perry/img26.jpg", "elon_musk/img18.jpg", "george_clooney/img38.jpg")
STEPS = 20
"""Steps of every stage: enough that the stages, not the fixed per-photo work, dominate at the smoke size."""
SETTINGS = (
    "preset=offline",
    "scale=smoke",
    "trainer.progress_bar=false",
    f"generator.projector.steps={STEPS}",
    f"pivot.steps={STEPS}",
    f"search.steps={STEPS}",
    "search.early_stop=false",  # every face runs every step, so the batch sizes do the same work
)


def run_job(photos: list[str], batch: int, out: Path, extra: list[str]) -> float:
    """Mean seconds per photo of one job (from its records)."""
    command = [sys.executable, "-m", "facecloak.cli.main", "protect", *photos, "--out", str(out)]
    command += [*SETTINGS, f"protect.batch_faces={batch}", *extra]
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    records = [json.loads(p.read_text()) for p in out.glob("*.json") if p.name not in ("job.json", "summary.json")]
    if len(records) != len(photos):
        raise RuntimeError(f"{out}: {len(records)} records for {len(photos)} photos")
    return mean(r["seconds"] for r in records)


def main() -> None:
    """Time every batch size, repeated, and print one markdown row per batch size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for every job")
    args = parser.parse_args()
    photos = [str(shared_root() / "faces" / p) for p in PHOTOS]
    results: dict[int, list[float]] = {b: [] for b in args.batches}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for batch in args.batches:  # interleaved, so a load change on the machine hits every batch size
                seconds = run_job(photos, batch, Path(tmp) / f"b{batch}_r{repeat}", args.overrides)
                results[batch].append(seconds)
                print(f"batch {batch}, run {repeat + 1}: {seconds:.2f} s per photo", flush=True)
    print("\n| batch_faces | s per photo (mean) | spread (min–max of runs) | runs |\n|---|---|---|---|")
    for batch, runs in results.items():
        print(f"| {batch} | {mean(runs):.2f} | {min(runs):.2f}–{max(runs):.2f} | {len(runs)} |")
    if args.out is not None:
        payload = {"photos": PHOTOS, "settings": SETTINGS, "seconds_per_photo": results}
        args.out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
