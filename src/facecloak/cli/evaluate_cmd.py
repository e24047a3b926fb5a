"""``facecloak evaluate --faces DIR --methods ... --out OUT``: the papers' protocol report for several methods.

Protects the probes of a labelled folder with every method, judges the saved photos with every attacked and held-out
FR model at each FAR (and after each robustness transform), measures quality and cost, and writes
``report.json``, ``report.md``, ``psr_vs_threshold.png`` and ``grid.png`` (see :mod:`facecloak.evaluation.harness`).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from facecloak.attacks.pixel import DEFAULT_EPS_255, DEFAULT_STEPS
from facecloak.config.compose import compose
from facecloak.evaluation.harness import DEFAULT_METHODS, METHODS, EvaluationSettings
from facecloak.paths import shared_faces_dir

DEFAULT_N_PHOTOS = 10
DEFAULT_PRESET = "offline"
"""The preset that runs with nothing but the shared weights; ``--preset paper`` for the paper's models."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the evaluate command."""
    parser.add_argument("--faces", type=Path, default=None, help="labelled folder (labels.csv); default shared faces")
    parser.add_argument(
        "--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS, help="methods to compare"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder for photos and reports")
    parser.add_argument("--n-photos", type=int, default=DEFAULT_N_PHOTOS, help="people to protect (one photo each)")
    parser.add_argument("--eps", type=float, default=DEFAULT_EPS_255, help="pixel baselines' L∞ budget (of 255)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="pixel baselines' iterations")
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="configuration preset for protect and the models")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pixel baselines' randomness")


def log_to_wandb(report: dict) -> bool:
    """Log the summary scalars to the active W&B run, if any (never images); True when logged."""
    if importlib.util.find_spec("wandb") is None:
        return False
    import wandb

    if wandb.run is None:
        return False
    from facecloak.evaluation.report import summary_metrics

    wandb.run.log({f"evaluate/{k}": v for k, v in summary_metrics(report).items()})
    return True


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    """Compose the configuration (dodging), run the harness, write the reports and print the main table."""
    from facecloak.evaluation.harness import evaluate
    from facecloak.evaluation.report import psr_table, write_report

    config = compose([f"preset={args.preset}", "protect.mode=dodge", *overrides])
    settings = EvaluationSettings(
        methods=tuple(args.methods), n_photos=args.n_photos, eps_255=args.eps, steps=args.steps, seed=args.seed
    )
    report = evaluate(args.faces or shared_faces_dir(), args.out, config, settings)
    paths = write_report(report, args.out)
    log_to_wandb(report)
    print(psr_table(report))
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0 if all(r["n"] for r in report["methods"].values()) else 1


COMMAND = (add_arguments, run)
