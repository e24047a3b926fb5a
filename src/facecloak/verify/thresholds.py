"""Verification thresholds per FR model and false-accept rate, each with its provenance and its metric.

Two sources exist: published values from the weights registry (the AMT-GAN numbers the papers use, cosine) and a
calibration JSON written by ``facecloak fr calibrate`` (measured with our detector and crops, in each model's own
metric). Every command that judges a face picks between them by one config key, ``fr.threshold_source``, through
:func:`build_threshold_table`, so protect, evaluate and sweep read the same number.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from facecloak.errors import ConfigError
from facecloak.registry.entries import get_entry

FAR_LEVELS = (0.1, 0.01, 0.001)  # the three levels of the AMT-GAN / CLIP2Protect tables
ThresholdSource = Literal["calibrated", "published"]
THRESHOLD_SOURCES: tuple[ThresholdSource, ...] = ("calibrated", "published")
DEFAULT_THRESHOLD_SOURCE: ThresholdSource = "calibrated"
"""Calibrated first: measured with the detector and crops facecloak judges with; published values fill the gaps
(set ``fr.threshold_source=published`` to compare with the papers' tables)."""


def far_key(far: float | str) -> str:
    """Canonical text of a FAR level (``0.01`` -> ``"0.01"``), the key used by the registry and calibration files."""
    return format(float(far), "g")


@dataclass(frozen=True)
class Threshold:
    """One threshold, where it came from, and the metric it is in (similarity above / distance below = match)."""

    value: float
    source: str
    metric: str = "cosine"


class ThresholdTable:
    """Thresholds per model and FAR level, merged from several sources; earlier sources take precedence."""

    def __init__(self, entries: Mapping[str, Mapping[str, Threshold]] | None = None) -> None:
        self._entries: dict[str, dict[str, Threshold]] = {m: dict(t) for m, t in (entries or {}).items()}

    @classmethod
    def from_registry(cls, models: Sequence[str]) -> ThresholdTable:
        """Published thresholds of registry models (those without any are simply absent from the table)."""
        entries: dict[str, dict[str, Threshold]] = {}
        for model in models:
            published = get_entry(model).thresholds
            if published is not None:
                source = f"published: {published.source}"
                entries[model] = {far_key(f): Threshold(float(v), source) for f, v in published.far.items()}
        return cls(entries)

    @classmethod
    def from_calibration(cls, path: str | os.PathLike[str]) -> ThresholdTable:
        """Thresholds measured by ``facecloak fr calibrate`` (``{model: {"auc": .., "thresholds": {far: t}}}``)."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise ConfigError(f"calibration file {path} not found; write it with: facecloak fr calibrate") from err
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"calibration file {path} is not valid JSON ({err}); re-run: facecloak fr calibrate"
            ) from err
        entries: dict[str, dict[str, Threshold]] = {}
        for model, report in raw.items():
            if model.startswith("_"):
                continue  # metadata of the run (faces folder, failures), not a model
            if not isinstance(report, dict) or not isinstance(report.get("thresholds"), dict):
                raise ConfigError(f"calibration file {path}: model '{model}' has no 'thresholds' mapping")
            auc = report.get("auc")
            metric = str(report.get("metric", "cosine"))
            source = f"calibrated: {path}" + (f" (AUC {auc:.3f})" if isinstance(auc, (int, float)) else "")
            entries[model] = {far_key(f): Threshold(float(v), source, metric) for f, v in report["thresholds"].items()}
        return cls(entries)

    def merged(self, *others: ThresholdTable) -> ThresholdTable:
        """A new table: this one with gaps filled from ``others`` in order (this one wins where both have a value)."""
        entries: dict[str, dict[str, Threshold]] = {}
        for table in reversed((self, *others)):
            for model, levels in table._entries.items():
                entries.setdefault(model, {}).update(levels)
        return ThresholdTable(entries)

    def get(self, model: str, far: float | str, metric: str | None = None) -> Threshold:
        """The threshold of a model at a FAR level (checked to be in ``metric`` when given), or how to get one."""
        level = self._entries.get(model, {}).get(far_key(far))
        if level is None:
            raise ConfigError(
                f"no threshold for model '{model}' at FAR {far_key(far)}; calibrate it with: facecloak fr calibrate "
                f"(known: { {m: sorted(t) for m, t in self._entries.items()} })"
            )
        if metric is not None and level.metric != metric:
            raise ConfigError(
                f"the {level.source} threshold of '{model}' is a {level.metric} value but the model is compared by "
                f"{metric}; recalibrate it with: facecloak fr calibrate --models {model}"
            )
        return level

    def describe(self) -> dict[str, dict[str, dict[str, float | str]]]:
        """Plain data for reports: every value with its source and metric."""
        return {m: {f: asdict(t) for f, t in levels.items()} for m, levels in self._entries.items()}


def build_threshold_table(
    models: Sequence[str],
    calibration: str | os.PathLike[str] | None = None,
    prefer: ThresholdSource = DEFAULT_THRESHOLD_SOURCE,
) -> ThresholdTable:
    """Published and calibrated thresholds merged; ``prefer`` (``fr.threshold_source``) wins where both exist.

    Published values make results comparable with the papers; calibrated ones are the only option for models
    the papers did not use.
    """
    if prefer not in THRESHOLD_SOURCES:
        raise ConfigError(f"config key 'fr.threshold_source': must be one of {THRESHOLD_SOURCES}, got '{prefer}'")
    published = ThresholdTable.from_registry(models)
    if calibration is None:
        return published
    calibrated = ThresholdTable.from_calibration(calibration)
    return published.merged(calibrated) if prefer == "published" else calibrated.merged(published)
