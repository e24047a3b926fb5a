"""Trial outcomes, their ranking by the sweep's metric under its constraints, and the results table.

Feasible trials (finished, every constraint met) rank first, then finished trials that break a constraint, then
failed ones; within a group the metric decides (its goal says which way), then the optional tie-break metric, then
the order the trials were planned.
With successive halving, runs at a larger budget rank above runs at a smaller one: a configuration's standing is
its result at the largest budget it reached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from facecloak.protect.job import write_json_atomic
from facecloak.sweep.halving import Score
from facecloak.sweep.spec import SweepSpec
from facecloak.sweep.trials import format_value

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
DONE, FAILED = "done", "failed"

# How each metric is printed in the markdown table (column header, format).
TABLE_COLUMNS = (
    ("held_out_success", "held-out success", "{:.2f}"),
    ("attacked_success", "attacked success", "{:.2f}"),
    ("held_out_similarity", "held-out sim.", "{:.3f}"),
    ("attacked_similarity", "attacked sim.", "{:.3f}"),
    ("face_psnr", "face PSNR", "{:.2f}"),
    ("face_ssim", "face SSIM", "{:.3f}"),
    ("face_haarpsi", "face HaarPSI", "{:.3f}"),
    ("seconds_per_photo", "s/photo", "{:.1f}"),
)


@dataclass
class TrialResult:
    """One protection job of a sweep: its values, where it ran, what it measured."""

    trial: str
    """Short hash of the trial's full overrides and photos; also its folder name under ``trials/``."""
    index: int
    """Position of the configuration in the sweep's plan (grid order or random draw)."""
    values: dict[str, Any]
    overrides: list[str]
    folder: str
    status: str
    metrics: dict[str, float | None] = field(default_factory=dict)
    budget: int | None = None
    error: str | None = None
    photos_done: int = 0
    photos_failed: int = 0
    violations: list[str] = field(default_factory=list)
    ran: bool = True
    """False when the trial was finished by an earlier run of the sweep and only read back."""

    @property
    def feasible(self) -> bool:
        """Finished and within every constraint."""
        return self.status == DONE and not self.violations

    def score(self, spec: SweepSpec) -> Score:
        """Sort key, higher is better: feasibility level, the metric signed by its goal, then the tie-break metric."""
        level = 1.0 if self.feasible else 0.0 if self.status == DONE else -1.0
        score = [level, self._signed(spec.metric, spec.goal)]
        if spec.tie_break is not None:
            score.append(self._signed(spec.tie_break, spec.tie_break_goal))
        return tuple(score)

    def _signed(self, metric: str, goal: str) -> float:
        value = self.metrics.get(metric)
        if value is None or math.isnan(value):
            return -math.inf
        return value if goal == "maximize" else -value

    def record(self) -> dict[str, Any]:
        """What ``trial.json`` keeps (the same minus the run-specific ``ran`` flag)."""
        out = asdict(self)
        out.pop("ran")
        return out


def apply_constraints(trial: TrialResult, spec: SweepSpec) -> None:
    """Fill in which constraints a finished trial breaks."""
    if trial.status == DONE:
        found = (c.violation(trial.metrics) for c in spec.constraints)
        trial.violations = [v for v in found if v]


def rank(trials: Sequence[TrialResult], spec: SweepSpec) -> list[TrialResult]:
    """Best first: larger budget, then score, then plan order."""
    return sorted(trials, key=lambda t: (-(t.budget or 0), tuple(-s for s in t.score(spec)), t.index))


def _cell(value: Any, fmt: str = "{}") -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return fmt.format(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def markdown_table(ranked: Sequence[TrialResult], spec: SweepSpec) -> str:
    """The ranked trials as a markdown table; the ranking metric's header is bold."""
    keys = [p.key for p in spec.parameters] + ([spec.halving.budget_key] if spec.halving else [])
    metric_headers = [f"**{h}**" if name == spec.metric else h for name, h, _ in TABLE_COLUMNS]
    header = ["rank", "trial", *keys, *metric_headers, "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for position, trial in enumerate(ranked, 1):
        values = [format_value(trial.values[k]) if k in trial.values else _cell(trial.budget) for k in keys]
        metrics = [_cell(trial.metrics.get(name), fmt) for name, _, fmt in TABLE_COLUMNS]
        notes = "; ".join(
            ([f"failed: {trial.error}"] if trial.status == FAILED else [])
            + trial.violations
            + ([f"{trial.photos_failed} photo(s) failed"] if trial.photos_failed else [])
        )
        lines.append("| " + " | ".join([str(position), f"`{trial.trial}`", *values, *metrics, notes]) + " |")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def describe(spec: SweepSpec) -> str:
    """One line saying how the sweep ranks trials."""
    bounds = [
        f"{c.metric} ≥ {c.min:g}" if c.min is not None else f"{c.metric} ≤ {c.max:g}"
        for c in spec.constraints
        if c.min is not None or c.max is not None
    ]
    tie = f", ties by {spec.tie_break} ({spec.tie_break_goal})" if spec.tie_break else ""
    return f"{spec.method} sweep, ranked by {spec.metric} ({spec.goal}){tie}" + (
        f", subject to {', '.join(bounds)}" if bounds else ""
    )


def write_results(
    out_dir: Path, spec: SweepSpec, trials: Sequence[TrialResult], base_overrides: Sequence[str], photos: Sequence[Path]
) -> dict[str, Any]:
    """Rank the trials and write ``results.json`` and ``results.md`` (atomically; called after every trial)."""
    ranked = rank(trials, spec)
    best = ranked[0] if ranked and ranked[0].feasible else None
    results = {
        "name": spec.name,
        "source": spec.source,
        "method": spec.method,
        "metric": {"name": spec.metric, "goal": spec.goal},
        "tie_break": {"name": spec.tie_break, "goal": spec.tie_break_goal} if spec.tie_break else None,
        "constraints": {c.metric: {"min": c.min, "max": c.max} for c in spec.constraints},
        "parameters": [p.key for p in spec.parameters],
        "seed": spec.seed,
        "halving": asdict(spec.halving) if spec.halving else None,
        "base_overrides": list(base_overrides),
        "photos": [str(p) for p in photos],
        "best": best.trial if best else None,
        "trials": [{"rank": i, **t.record(), "feasible": t.feasible, "ran": t.ran} for i, t in enumerate(ranked, 1)],
    }
    write_json_atomic(out_dir / RESULTS_JSON, results)
    body = [
        f"# Sweep `{spec.name}`",
        "",
        describe(spec) + f"; {_count(len(trials), 'trial')} on {_count(len(photos), 'photo')}.",
        "",
        "Base overrides: " + (" ".join(f"`{o}`" for o in base_overrides) or "none"),
        "",
        markdown_table(ranked, spec),
        "",
    ]
    (out_dir / RESULTS_MD).parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{RESULTS_MD}.tmp"
    tmp.write_text("\n".join(body))
    tmp.replace(out_dir / RESULTS_MD)
    return results
