"""Build a config dataclass from a plain dict, refusing unknown keys (a typo must never be silently dropped)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

from facecloak.errors import ConfigError

T = TypeVar("T")


def from_plain_dict(cls: type[T], values: Mapping[str, Any], section: str) -> T:
    """``cls(**values)`` after checking every key is a field of ``cls``; errors name the section and the keys."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {section} config keys {unknown}; known keys are {sorted(known)}")
    return cls(**dict(values))
