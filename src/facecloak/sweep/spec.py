"""A sweep definition (``configs/sweep/NAME.yaml``) parsed into typed, validated objects.

The file names the configuration keys to vary and how (a list of values, or a range with a distribution), the
search method (``grid``, ``random`` or successive ``halving`` over a budget key such as ``search.steps``), the
metric that ranks trials and its goal, constraints that a trial must meet to be ranked first (e.g. a minimum face
SSIM), the photos and the base overrides every trial starts from. Every parameter value (or range end) and the
budget range are composed against the real configuration schema when the file is loaded, so an unknown key or a bad
value stops the sweep before any trial runs, with a message naming the key.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from facecloak.errors import ConfigError

METHODS = ("grid", "random", "halving")
GOALS = ("maximize", "minimize")
DISTRIBUTIONS = ("uniform", "log_uniform_values", "int_uniform")
"""W&B's names and meanings (its ``log_uniform`` takes exponents as min/max: refused here to avoid a mix-up)."""
SAMPLE_DIGITS = 4
"""Sampled floats are rounded to this many significant digits, so overrides and tables stay readable."""

METRICS: dict[str, str] = {
    "held_out_success": "share of faces that every held-out FR model no longer matches (black-box PSR)",
    "attacked_success": "share of faces that every attacked FR model no longer matches (white-box PSR)",
    "held_out_similarity": "mean similarity of the protected face to the original under the held-out models",
    "attacked_similarity": "mean similarity of the protected face to the original under the attacked models",
    "face_psnr": "mean PSNR (dB) of the face box, protected photo against the original",
    "face_ssim": "mean SSIM of the face box",
    "face_haarpsi": "mean HaarPSI of the face box",
    "seconds_per_photo": "mean wall-clock seconds of protection per photo",
}
"""Metrics a trial reports; any of them can rank a sweep or constrain it."""


def _fail(key: str, message: str) -> ConfigError:
    return ConfigError(f"sweep key '{key}': {message}")


@dataclass(frozen=True)
class ParameterSpec:
    """One configuration key to vary: explicit ``values``, or ``min``/``max`` with a ``distribution``."""

    key: str
    values: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    distribution: str = "uniform"

    def __post_init__(self) -> None:
        where = f"parameters.{self.key}"
        if self.values is not None:
            if not self.values:
                raise _fail(where, "has no values")
            if self.min is not None or self.max is not None:
                raise _fail(where, "give either values or min/max, not both")
            return
        if self.min is None or self.max is None:
            raise _fail(where, "needs a list of values or both min and max")
        if self.distribution == "log_uniform":
            raise _fail(f"{where}.distribution", "use log_uniform_values (min and max as values, not exponents)")
        if self.distribution not in DISTRIBUTIONS:
            raise _fail(f"{where}.distribution", f"must be one of {DISTRIBUTIONS}, got '{self.distribution}'")
        if not self.min < self.max:
            raise _fail(where, f"min ({self.min}) must be below max ({self.max})")
        if self.distribution == "log_uniform_values" and self.min <= 0:
            raise _fail(where, "a log-uniform range must be positive")
        if self.distribution == "int_uniform" and not (float(self.min).is_integer() and float(self.max).is_integer()):
            raise _fail(where, "an int_uniform range needs integer min and max")

    @property
    def is_grid(self) -> bool:
        """Whether the parameter has a finite list of values (a grid needs every parameter to have one)."""
        return self.values is not None

    def candidates(self) -> tuple[Any, ...]:
        """Values to check against the config schema: the list, or both ends of the range."""
        if self.values is not None:
            return self.values
        assert self.min is not None and self.max is not None
        if self.distribution == "int_uniform":
            return (int(self.min), int(self.max))
        return (float(self.min), float(self.max))

    def sample(self, rng: random.Random) -> Any:
        """One draw: a uniform choice from the values, or from the range's distribution."""
        if self.values is not None:
            return self.values[rng.randrange(len(self.values))]
        assert self.min is not None and self.max is not None
        if self.distribution == "int_uniform":
            return rng.randint(int(self.min), int(self.max))
        if self.distribution == "log_uniform_values":
            value = math.exp(rng.uniform(math.log(self.min), math.log(self.max)))
        else:
            value = rng.uniform(self.min, self.max)
        return float(f"{value:.{SAMPLE_DIGITS}g}")


@dataclass(frozen=True)
class Constraint:
    """A bound a trial's metric must respect to be ranked among the feasible trials."""

    metric: str
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise _fail(f"constraints.{self.metric}", f"unknown metric; known: {sorted(METRICS)}")
        if self.min is None and self.max is None:
            raise _fail(f"constraints.{self.metric}", "needs min or max")

    def violation(self, metrics: Mapping[str, float | None]) -> str | None:
        """Why ``metrics`` break this bound (a missing value breaks it), or None when it holds."""
        value = metrics.get(self.metric)
        if value is None or math.isnan(value):
            return f"{self.metric} missing"
        if self.min is not None and value < self.min:
            return f"{self.metric} {value:.4g} < {self.min:g}"
        if self.max is not None and value > self.max:
            return f"{self.metric} {value:.4g} > {self.max:g}"
        return None


@dataclass(frozen=True)
class HalvingSpec:
    """Successive halving: every configuration at ``min_budget``, the best ``1/eta`` go on at ``eta`` times more."""

    budget_key: str
    min_budget: int
    max_budget: int
    eta: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.min_budget < self.max_budget:
            raise _fail("halving.min_budget", f"must be >= 1 and below max_budget ({self.max_budget})")
        if self.eta < 2:
            raise _fail("halving.eta", "must be at least 2")

    def budgets(self) -> list[int]:
        """``min_budget · eta^k`` while below ``max_budget``, then ``max_budget`` (the winner runs at full budget)."""
        budgets = [self.min_budget]
        while budgets[-1] * self.eta < self.max_budget:
            budgets.append(budgets[-1] * self.eta)
        return [*budgets, self.max_budget]


@dataclass(frozen=True)
class SweepSpec:
    """Everything a sweep needs besides its output folder."""

    name: str
    method: str
    parameters: tuple[ParameterSpec, ...]
    metric: str = "held_out_success"
    goal: str = "maximize"
    tie_break: str | None = None
    """A second metric that orders trials whose ranking metric is equal (success shares over few photos tie often)."""
    tie_break_goal: str = "minimize"
    n_trials: int | None = None
    seed: int = 0
    constraints: tuple[Constraint, ...] = ()
    photos: tuple[str, ...] = ()
    photos_root: str | None = None
    """Relative photo paths are read from here; None: the shared faces folder (``$FACECLOAK_SHARED/faces``)."""
    overrides: tuple[str, ...] = ()
    halving: HalvingSpec | None = None
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise _fail("method", f"must be one of {METHODS}, got '{self.method}'")
        if not self.parameters:
            raise _fail("parameters", "name at least one configuration key to vary")
        if self.metric not in METRICS:
            raise _fail("metric.name", f"unknown metric '{self.metric}'; known: {sorted(METRICS)}")
        if self.goal not in GOALS:
            raise _fail("metric.goal", f"must be one of {GOALS}, got '{self.goal}'")
        if self.tie_break is not None and self.tie_break not in METRICS:
            raise _fail("metric.tie_break.name", f"unknown metric '{self.tie_break}'; known: {sorted(METRICS)}")
        if self.tie_break_goal not in GOALS:
            raise _fail("metric.tie_break.goal", f"must be one of {GOALS}, got '{self.tie_break_goal}'")
        for key, value in (("n_trials", self.n_trials), ("seed", self.seed)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise _fail(key, f"must be an integer, got {value!r}")
        if self.n_trials is not None and self.n_trials < 1:
            raise _fail("n_trials", "must be at least 1")
        if self.method == "grid" and self.n_trials is not None:
            raise _fail("n_trials", "a grid sweep runs every combination of the values; remove n_trials")
        grid = all(p.is_grid for p in self.parameters)
        if self.method == "grid" and not grid:
            ranged = [p.key for p in self.parameters if not p.is_grid]
            raise _fail(f"parameters.{ranged[0]}", "a grid sweep needs a list of values, not a range")
        if self.method == "random" and self.n_trials is None:
            raise _fail("n_trials", "a random sweep needs the number of trials")
        if self.method == "halving":
            if self.halving is None:
                raise _fail("halving", "a halving sweep needs budget_key, min_budget and max_budget")
            if not grid and self.n_trials is None:
                raise _fail("n_trials", "halving over ranges needs the number of configurations to start with")
            if any(p.key == self.halving.budget_key for p in self.parameters):
                raise _fail(f"parameters.{self.halving.budget_key}", "is the halving budget; it cannot also vary")
        if not self.photos:
            raise _fail("photos", "name at least one photo")

    def resolved_photos(self) -> list[Path]:
        """The photos as paths; a missing one stops the sweep before any trial runs."""
        from facecloak.paths import shared_faces_dir

        root = Path(self.photos_root).expanduser() if self.photos_root else shared_faces_dir()
        paths = [p if p.is_absolute() else root / p for p in (Path(s).expanduser() for s in self.photos)]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise _fail("photos", f"not found: {missing}")
        return [p.resolve() for p in paths]


# --- reading a sweep file ----------------------------------------------------------------------------------------

TOP_LEVEL_KEYS = (
    "name",
    "method",
    "parameters",
    "metric",
    "n_trials",
    "seed",
    "constraints",
    "photos",
    "photos_root",
    "overrides",
    "halving",
)


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(key, f"must be a mapping, got {type(value).__name__}")
    return value


def _known_keys(values: Mapping[str, Any], known: Sequence[str], section: str) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        where = f"{section}.{unknown[0]}" if section else str(unknown[0])
        raise _fail(where, f"unknown key; known keys are {list(known)}")


def _parameter(key: str, value: Any) -> ParameterSpec:
    if isinstance(value, list):
        return ParameterSpec(key, values=tuple(value))
    body = _mapping(value, f"parameters.{key}")
    _known_keys(body, ("values", "min", "max", "distribution"), f"parameters.{key}")
    values = body.get("values")
    if values is not None and not isinstance(values, list):
        raise _fail(f"parameters.{key}.values", "must be a list")
    return ParameterSpec(
        key,
        values=tuple(values) if values is not None else None,
        min=body.get("min"),
        max=body.get("max"),
        distribution=str(body.get("distribution", "uniform")),
    )


def _constraints(value: Any) -> tuple[Constraint, ...]:
    out = []
    for metric, bounds in _mapping(value or {}, "constraints").items():
        body = _mapping(bounds, f"constraints.{metric}")
        _known_keys(body, ("min", "max"), f"constraints.{metric}")
        out.append(Constraint(str(metric), min=body.get("min"), max=body.get("max")))
    return tuple(out)


def _halving(value: Any) -> HalvingSpec | None:
    if value is None:
        return None
    body = _mapping(value, "halving")
    _known_keys(body, ("budget_key", "min_budget", "max_budget", "eta"), "halving")
    for key in ("budget_key", "min_budget", "max_budget"):
        if key not in body:
            raise _fail(f"halving.{key}", "is required")
    for key in ("min_budget", "max_budget", "eta"):
        if key in body and not isinstance(body[key], int):
            raise _fail(f"halving.{key}", f"must be an integer, got {body[key]!r}")
    return HalvingSpec(str(body["budget_key"]), body["min_budget"], body["max_budget"], body.get("eta", 2))


def parse_sweep(raw: Mapping[str, Any], source: str | None = None) -> SweepSpec:
    """A sweep from the plain mapping of a YAML file; unknown keys and bad values name the key."""
    _known_keys(raw, TOP_LEVEL_KEYS, "")
    metric = _mapping(raw.get("metric", {}), "metric")
    _known_keys(metric, ("name", "goal", "tie_break"), "metric")
    tie_break = _mapping(metric.get("tie_break", {}), "metric.tie_break")
    _known_keys(tie_break, ("name", "goal"), "metric.tie_break")
    photos = raw.get("photos") or []
    overrides = raw.get("overrides") or []
    for key, value in (("photos", photos), ("overrides", overrides)):
        if not isinstance(value, list):
            raise _fail(key, "must be a list")
    return SweepSpec(
        name=str(raw.get("name") or (Path(source).stem if source else "sweep")),
        method=str(raw.get("method", "")),
        parameters=tuple(_parameter(str(k), v) for k, v in _mapping(raw.get("parameters", {}), "parameters").items()),
        metric=str(metric.get("name", "held_out_success")),
        goal=str(metric.get("goal", "maximize")),
        tie_break=str(tie_break["name"]) if "name" in tie_break else None,
        tie_break_goal=str(tie_break.get("goal", "minimize")),
        n_trials=raw.get("n_trials"),
        seed=raw.get("seed", 0),
        constraints=_constraints(raw.get("constraints")),
        photos=tuple(str(p) for p in photos),
        photos_root=None if raw.get("photos_root") is None else str(raw["photos_root"]),
        overrides=tuple(str(o) for o in overrides),
        halving=_halving(raw.get("halving")),
        source=source,
    )


def load_sweep(path: Path) -> SweepSpec:
    """Read and parse a sweep file (its keys are checked here; its config values by :func:`check_against_config`)."""
    if not path.exists():
        raise ConfigError(f"sweep file not found: {path}")
    raw = yaml.safe_load(path.read_text())
    return parse_sweep(_mapping(raw, str(path)), source=str(path))
