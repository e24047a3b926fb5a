"""Successive halving: spend little on every configuration, and more only on the ones that look best.

Every configuration runs at the smallest budget (e.g. ``search.steps=25``); the best ``1/eta`` of them (at least
one) run again at ``eta`` times the budget, and so on until the largest budget (Jamieson & Talwalkar, "Non-stochastic
best arm identification and hyperparameter optimization", AISTATS 2016). The scheduler only sees scores, so it is
tested on a cheap objective; the sweep runner plugs protection trials into it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

Score = tuple[float, ...]
"""Higher is better, compared as a tuple (the runner puts feasibility before the metric)."""


@dataclass(frozen=True)
class Rung:
    """One budget level: which configurations ran at it, their scores, and which went on to the next level."""

    budget: int
    evaluated: tuple[int, ...]
    scores: tuple[Score, ...]
    promoted: tuple[int, ...]


def survivors(n: int, eta: int) -> int:
    """How many of ``n`` configurations go on to the next budget (``n // eta``, never zero)."""
    return max(1, n // eta)


def successive_halving(
    n_configs: int, budgets: Sequence[int], eta: int, evaluate: Callable[[int, int], Score]
) -> list[Rung]:
    """Run configurations ``0..n_configs-1`` through ``budgets``; ``evaluate(config, budget)`` scores one run.

    Ties keep the lower configuration index, so the schedule is deterministic. The last rung promotes nobody.
    """
    alive = list(range(n_configs))
    rungs: list[Rung] = []
    for level, budget in enumerate(budgets):
        scores = [evaluate(config, budget) for config in alive]
        last = level == len(budgets) - 1
        order = sorted(range(len(alive)), key=lambda i: (tuple(-s for s in scores[i]), alive[i]))
        promoted = () if last else tuple(alive[i] for i in order[: survivors(len(alive), eta)])
        rungs.append(Rung(budget, tuple(alive), tuple(scores), promoted))
        alive = list(promoted)
        if not alive:
            break
    return rungs
