"""``facecloak sweep configs/sweep/NAME.yaml --out DIR``: run a hyper-parameter sweep locally and rank its trials.

Every trial is a protection job (:mod:`facecloak.sweep.runner`); ``key=value`` arguments are base overrides added
to the sweep file's. With ``--trial`` the ``key=value`` arguments are one trial's values instead: that is what
``wandb agent`` runs for each trial of a sweep defined by ``configs/sweep/NAME.wandb.yaml``, and the trial's metrics
then go to the agent's W&B run.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from facecloak.sweep.results import TrialResult
    from facecloak.sweep.spec import SweepSpec

WANDB_SWEEP_ENV = "WANDB_SWEEP_ID"
"""Set by ``wandb agent`` for the runs it starts: the trial's metrics are then logged to W&B."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the sweep command."""
    parser.add_argument("sweep", type=Path, help="sweep definition, e.g. configs/sweep/loss_weights.yaml")
    parser.add_argument("--out", type=Path, required=True, help="output folder (trials, results.json, results.md)")
    parser.add_argument("--photos", nargs="+", type=Path, help="photos to protect instead of the sweep file's")
    parser.add_argument(
        "--trial",
        action="store_true",
        help="run one trial whose values are the key=value arguments (what `wandb agent` calls); print its metrics",
    )


def log_trial_to_wandb(trial: TrialResult, spec: SweepSpec) -> dict[str, float]:
    """Log a trial's metrics to the W&B run ``wandb agent`` prepared (no images), closed even on failure; returns them.

    ``objective`` is the ranking metric when every constraint holds and absent otherwise, so W&B's own search
    (``metric: objective`` in the ``.wandb.yaml`` file) never prefers a trial that breaks a constraint.
    """
    import os

    import wandb

    # The run's files: $WANDB_DIR as the user sets it now (not as an earlier run in this process saw it), else the
    # trial's own folder under the sweep's --out; never the working directory.
    run = wandb.init(dir=os.environ.get("WANDB_DIR") or trial.folder)
    try:
        logged: dict[str, float] = {k: v for k, v in trial.metrics.items() if v is not None}
        logged["feasible"] = float(trial.feasible)
        value = trial.metrics.get(spec.metric)
        if trial.feasible and value is not None:
            logged["objective"] = value
        run.log(logged)
        run.summary["trial_folder"] = trial.folder
    finally:
        run.finish(exit_code=0 if trial.status == "done" else 1)
    return logged


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    """Run the sweep and print its ranked table, or run one trial and print its metrics."""
    from facecloak.sweep.runner import run_sweep, run_trial
    from facecloak.sweep.spec import load_sweep
    from facecloak.sweep.trials import check_against_config

    spec = load_sweep(args.sweep)
    photos = [p.resolve() for p in args.photos] if args.photos else spec.resolved_photos()
    if not args.trial:
        results = run_sweep(spec, args.out, overrides, photos)
        print((args.out / "results.md").read_text())
        print(f"best trial: {results['best'] or 'none meets the constraints'}")
        return 0 if any(t["status"] == "done" for t in results["trials"]) else 1
    base = list(spec.overrides)
    check_against_config(spec, base)
    values = dict(item.split("=", 1) for item in overrides)
    trial = run_trial(spec, args.out, values, base, photos)
    print(json.dumps({"trial": trial.trial, "status": trial.status, "metrics": trial.metrics}, default=float))
    if os.environ.get(WANDB_SWEEP_ENV):
        log_trial_to_wandb(trial, spec)
    return 0 if trial.status == "done" else 1


COMMAND = (add_arguments, run)
