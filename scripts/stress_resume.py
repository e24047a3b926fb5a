"""Kill a real protection job with SIGKILL at random moments, many times, and check the resumed outputs.

An uninterrupted reference run is made first. Then, per trial, a fresh job is started and killed at a random moment
(uniform over the reference duration), restarted (resuming) and killed again, until a run reaches the end by itself;
after every kill no final file may be half-written (every PNG decodes, every JSON parses; temporary files are
dot-files), and the finished outputs must be bit-identical to the reference.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/stress_resume.py --trials 5 --out outputs/stress [override=value ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from facecloak.paths import shared_faces_dir

DEFAULT_PHOTOS = ("jack_dorsey/img16.jpg", "katy_perry/img26.jpg", "elon_musk/img18.jpg")
TINY = ["preset=offline", "scale=smoke"]
"""Small settings so that many kill rounds fit in minutes; the code path is the full one."""


def command(photos: list[str], out: Path, overrides: list[str]) -> list[str]:
    """The protect command every round runs (identical, so each rerun resumes the same job)."""
    args = ["protect", *photos, "--out", str(out), "trainer.progress_bar=false", *overrides]
    return [sys.executable, "-m", "facecloak.cli.main", *args]


def digests(out: Path) -> dict[str, str]:
    """SHA-256 of every shared output (protected photos and before/after images)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.png"))}


def half_written(out: Path) -> list[str]:
    """Final-named files that do not parse (a temporary file is always a dot-file, so it is not counted)."""
    bad = []
    for path in out.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            if path.suffix == ".png":
                with Image.open(path) as image:
                    image.load()
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except Exception as err:  # any parse failure is the finding
            bad.append(f"{path.relative_to(out)}: {err}")
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--trials", type=int, default=5, help="fresh jobs, each killed until it finishes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--photos", nargs="+", help="photos (default: three shared faces)")
    parser.add_argument("overrides", nargs="*", help="config overrides (default: tiny settings)")
    args = parser.parse_args()
    photos = args.photos or [str(shared_faces_dir() / p) for p in DEFAULT_PHOTOS]
    overrides = args.overrides or TINY
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}

    started = time.perf_counter()
    reference_dir = args.out / "reference"
    subprocess.run(command(photos, reference_dir, overrides), check=True, env=env, capture_output=True)
    reference_s = time.perf_counter() - started
    reference = digests(reference_dir)

    rng = random.Random(args.seed)
    kills: list[float] = []
    problems: list[str] = []
    identical = []
    for trial in range(args.trials):
        resumed = args.out / f"trial{trial}"
        while True:  # start, kill at a random moment, resume ... until a run gets to the end by itself
            at = rng.uniform(0.5, reference_s)
            process = subprocess.Popen(command(photos, resumed, overrides), env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)  # fmt: skip
            try:
                process.wait(timeout=at)
                break
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
                kills.append(round(at, 2))
                problems += half_written(resumed)
        identical.append(digests(resumed) == reference)
    report = {
        "photos": len(photos),
        "reference_seconds": round(reference_s, 1),
        "trials": args.trials,
        "kills": len(kills),
        "kills_at_seconds": kills,
        "half_written_files_seen": problems,
        "trials_identical_to_reference": sum(identical),
    }
    print(json.dumps(report, indent=2))
    (args.out / "stress_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if problems or not all(identical):
        sys.exit(1)


if __name__ == "__main__":
    main()
