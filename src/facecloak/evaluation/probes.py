"""What every evaluated method receives and returns: a probe photo, and its protected version with its cost.

A leaf module so the harness and the methods it runs (:mod:`facecloak.evaluation.metered_protect`) both import it
and neither imports the other at module level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facecloak.evaluation.protocol import ProtocolItem
from facecloak.faces.detect import Face


@dataclass
class Probe:
    """A photo to protect: its explicit id, person, source, pixels and detected face."""

    item: ProtocolItem
    rgb: np.ndarray
    face: Face

    @property
    def image_id(self) -> str:
        """The folder's explicit id of the photo."""
        return self.item.image_id


@dataclass
class Protected:
    """One method's output for one probe (``rgb`` None when the method failed on it) and what it cost per stage."""

    rgb: np.ndarray | None
    seconds: float
    error: str | None = None
    cost: dict[str, dict[str, Any]] = field(default_factory=dict)
