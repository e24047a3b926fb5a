"""Run a sweep locally: each trial is a protection job in its own folder, measured, ranked and tabulated.

``<out>/trials/<trial>/`` holds a trial's protection job (protected photos, records, the job manifest) and its
``trial.json`` (values, overrides, metrics), written once the trial is finished. A rerun of the same sweep reads
finished trials back instead of running them again, and an interrupted trial resumes through the protection job's
own manifest. ``<out>/results.json`` and ``<out>/results.md`` are rewritten after every trial.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from facecloak.config.compose import compose
from facecloak.config.schema import AppConfig
from facecloak.errors import ConfigError
from facecloak.protect.job import write_json_atomic
from facecloak.protect.runner import result_affecting_config, run_protect_job
from facecloak.sweep.halving import successive_halving
from facecloak.sweep.metrics import job_metrics, job_records
from facecloak.sweep.results import DONE, FAILED, TrialResult, apply_constraints, write_results
from facecloak.sweep.spec import SweepSpec
from facecloak.sweep.trials import check_against_config, initial_values, trial_key, trial_overrides

log = logging.getLogger(__name__)
TRIALS_DIR = "trials"
TRIAL_RECORD = "trial.json"


def run_trial(
    spec: SweepSpec,
    out_dir: Path,
    values: Mapping[str, Any],
    base_overrides: Sequence[str],
    photos: Sequence[Path],
    index: int = 0,
    budget: int | None = None,
) -> TrialResult:
    """One trial: base overrides + the trial's values (+ budget) as a protection job; read back if finished before."""
    overrides = trial_overrides(values)
    if budget is not None:
        assert spec.halving is not None
        overrides.append(f"{spec.halving.budget_key}={budget}")
    full = [*base_overrides, *overrides]
    config: AppConfig | None = None
    error = None
    try:
        config = compose(full)
    except ConfigError as err:  # a combination of individually valid values can still be invalid
        error = str(err)
    key = trial_key(result_affecting_config(config) if config else full, [str(p) for p in photos])
    folder = out_dir / TRIALS_DIR / key
    trial = TrialResult(key, index, dict(values), overrides, str(folder), FAILED, budget=budget, error=error)
    record_path = folder / TRIAL_RECORD
    if record_path.exists():
        stored = json.loads(record_path.read_text())
        current = {"index": index, "values": dict(values), "overrides": overrides, "budget": budget}
        trial = TrialResult(**{**stored, **current}, ran=False)
        apply_constraints(trial, spec)  # constraints may have changed since the trial ran
        return trial
    if config is not None:
        summary = run_protect_job(list(photos), folder, config)
        failed = set(summary["failed"])
        records = job_records(folder, photos, failed)
        trial.photos_done, trial.photos_failed = len(records), len(failed)
        if records:
            trial.status, trial.metrics = DONE, job_metrics(records, config)
        else:
            trial.error = "no photo protected: " + "; ".join(f"{i}: {e}" for i, e in summary["failed"].items())
    apply_constraints(trial, spec)
    write_json_atomic(record_path, trial.record())
    return trial


def _log_trial(trial: TrialResult, spec: SweepSpec, position: str) -> None:
    values = " ".join(trial.overrides)
    if trial.status == FAILED:
        outcome = f"failed: {trial.error}"
    else:
        outcome = f"{spec.metric} {trial.metrics.get(spec.metric)}" + (
            f" ({'; '.join(trial.violations)})" if trial.violations else ""
        )
    log.info(
        "trial %s %s [%s]: %s%s", position, trial.trial, values, outcome, "" if trial.ran else " (finished before)"
    )


def run_sweep(
    spec: SweepSpec, out_dir: Path, extra_overrides: Sequence[str] = (), photos: Sequence[Path] | None = None
) -> dict[str, Any]:
    """Run every trial of the sweep (grid, random or successive halving) and write the ranked results."""
    base = [*spec.overrides, *extra_overrides]
    photo_paths = [p.resolve() for p in photos] if photos else spec.resolved_photos()
    check_against_config(spec, base)
    configs = initial_values(spec)
    trials: list[TrialResult] = []
    results: dict[str, Any] = {}

    def run(index: int, budget: int | None, position: str) -> TrialResult:
        nonlocal results
        trial = run_trial(spec, out_dir, configs[index], base, photo_paths, index, budget)
        trials.append(trial)
        _log_trial(trial, spec, position)
        results = write_results(out_dir, spec, trials, base, photo_paths)
        return trial

    if spec.method == "halving":
        assert spec.halving is not None
        budgets = spec.halving.budgets()
        successive_halving(
            len(configs),
            budgets,
            spec.halving.eta,
            lambda i, b: run(i, b, f"{i + 1}/{len(configs)} @ {b}").score(spec),
        )
    else:
        for index in range(len(configs)):
            run(index, None, f"{index + 1}/{len(configs)}")
    return results
