"""Which trials a sweep runs: the grid or a seeded random draw, written as ``key=value`` config overrides.

A trial is a set of parameter values (plus, for successive halving, a budget). It becomes a protection job whose
configuration is the sweep's base overrides followed by the trial's own ``key=value`` overrides — the same strings
a user would type after ``facecloak protect``, so any trial can be rerun by hand from its record.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

from facecloak.config.compose import compose
from facecloak.errors import ConfigError
from facecloak.sweep.spec import SweepSpec

log = logging.getLogger(__name__)

MAX_DRAWS_PER_TRIAL = 100
"""A random sweep over few distinct values stops drawing after this many duplicates per wanted trial."""


def format_value(value: Any) -> str:
    """A value as the override parser reads it back (YAML scalars; lists in flow style)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def trial_overrides(values: Mapping[str, Any]) -> list[str]:
    """``key=value`` strings for a trial's values, in the order the sweep file names the keys."""
    return [f"{key}={format_value(value)}" for key, value in values.items()]


def trial_key(config: Mapping[str, Any] | Sequence[str], photos: Sequence[str]) -> str:
    """A short hash of everything that makes a trial's results: its resolved config (or overrides) and its photos.

    The trial's folder is named by it, so a rerun finds finished trials, two trials that resolve to the same
    configuration (e.g. a halving rung and an earlier grid) share one job, and a changed base config or photo list
    starts new folders instead of mixing results.
    """
    payload = json.dumps({"config": config, "photos": list(photos)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


def grid_values(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every combination of the parameters' values, the first parameter varying slowest."""
    keys = [p.key for p in spec.parameters]
    lists = [p.values or () for p in spec.parameters]
    return [dict(zip(keys, combo)) for combo in itertools.product(*lists)]


def random_values(spec: SweepSpec) -> list[dict[str, Any]]:
    """``n_trials`` distinct draws, reproducible from the sweep's seed (fewer if the space is smaller)."""
    assert spec.n_trials is not None
    rng = random.Random(spec.seed)
    trials: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(spec.n_trials * MAX_DRAWS_PER_TRIAL):
        values = {p.key: p.sample(rng) for p in spec.parameters}
        signature = json.dumps(values, sort_keys=True, default=str)
        if signature not in seen:
            seen.add(signature)
            trials.append(values)
        if len(trials) == spec.n_trials:
            break
    if len(trials) < spec.n_trials:
        log.warning("only %d distinct configurations in the sweep space (asked for %d)", len(trials), spec.n_trials)
    return trials


def initial_values(spec: SweepSpec) -> list[dict[str, Any]]:
    """The configurations a sweep starts with: the grid, or a random draw when ranges or ``n_trials`` ask for it."""
    if spec.method == "grid" or (spec.method == "halving" and spec.n_trials is None):
        return grid_values(spec)
    return random_values(spec)


def check_against_config(spec: SweepSpec, base_overrides: Sequence[str]) -> None:
    """Compose the base config, then each parameter value (or range end) and budget on top of it.

    Raises :class:`ConfigError` naming the sweep key, so a typo or an out-of-range value is caught before the
    first trial spends minutes.
    """
    base = list(base_overrides)
    try:
        compose(base)
    except ConfigError as err:
        raise ConfigError(f"sweep overrides: {err}") from err
    checks = [(f"parameters.{p.key}", p.key, v) for p in spec.parameters for v in p.candidates()]
    if spec.halving is not None:
        key = spec.halving.budget_key
        checks += [("halving.budget_key", key, b) for b in (spec.halving.min_budget, spec.halving.max_budget)]
    for where, key, value in checks:
        try:
            compose([*base, f"{key}={format_value(value)}"])
        except ConfigError as err:
            raise ConfigError(f"sweep key '{where}' (value {format_value(value)}): {err}") from err
