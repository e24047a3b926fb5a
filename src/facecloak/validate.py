"""Checks every config dataclass shares: a rule that names the user's key, and strict building from plain dicts.

A leaf module (it imports only :mod:`facecloak.errors`), so each layer can validate its own config without
importing the config layer above it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

from facecloak.errors import ConfigError

T = TypeVar("T")


def require(condition: bool, key: str, message: str) -> None:
    """Raise a :class:`ConfigError` naming the user's config ``key`` (e.g. ``search.lr``) unless ``condition``."""
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


def from_plain_dict(cls: type[T], values: Mapping[str, Any], section: str) -> T:
    """``cls(**values)`` after checking every key is a field of ``cls``; errors name the section and the keys."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {section} config keys {unknown}; known keys are {sorted(known)}")
    return cls(**dict(values))
