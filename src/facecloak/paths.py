"""Where facecloak finds shared test resources and caches pretrained weights.

One root for shared resources: ``$FACECLOAK_SHARED`` (default ``../shared`` relative to the working
directory), holding ``golden/``, ``weights/`` and ``faces/``. One cache for fetched weights:
``$FACECLOAK_CHECKPOINTS`` (default ``checkpoints/`` in the working directory).
"""

from __future__ import annotations

import os
from pathlib import Path

SHARED_ENV = "FACECLOAK_SHARED"
CHECKPOINTS_ENV = "FACECLOAK_CHECKPOINTS"
DEFAULT_SHARED = "../shared"
DEFAULT_CHECKPOINTS = "checkpoints"


def shared_root() -> Path:
    """Root of the shared resources, so tests and tools read one configurable place."""
    return Path(os.environ.get(SHARED_ENV, DEFAULT_SHARED)).expanduser().resolve()


def golden_dir() -> Path:
    """Folder of golden parity data (one sub-folder per model configuration)."""
    return shared_root() / "golden"


def shared_weights_dir() -> Path:
    """Folder of small real pretrained models that work offline."""
    return shared_root() / "weights"


def shared_faces_dir() -> Path:
    """Folder of labelled real face photos (``labels.csv``)."""
    return shared_root() / "faces"


def checkpoints_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Cache folder for fetched weights: explicit override, then the environment, then ``checkpoints/``."""
    chosen = override or os.environ.get(CHECKPOINTS_ENV, DEFAULT_CHECKPOINTS)
    return Path(chosen).expanduser().resolve()
