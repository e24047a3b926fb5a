"""Errors that tell the user what went wrong and what to do about it.

Every error raised for bad input carries an actionable message; the CLI prints the message and
exits non-zero instead of showing a traceback, and batch jobs record it per photo and go on.
"""

from __future__ import annotations


class FacecloakError(Exception):
    """Base class: an expected failure with a message meant for the user."""


class ConfigError(FacecloakError, ValueError):
    """A configuration key is unknown or has a bad value."""


class WeightsError(FacecloakError):
    """A pretrained model file is missing, corrupt or of the wrong layout."""


class MissingWeightsError(WeightsError, FileNotFoundError):
    """A pretrained model file is not in the cache or the search path."""


class CorruptWeightsError(WeightsError):
    """A pretrained model file exists but its checksum or layout is wrong."""


class ImageError(FacecloakError):
    """An input photo cannot be used (corrupt, truncated, unsupported)."""


class NoFaceError(FacecloakError):
    """No face was found where one was required."""
