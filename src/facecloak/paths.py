"""Where facecloak finds shared test resources and caches pretrained weights.

One root for shared resources: ``$FACECLOAK_SHARED`` (default ``../shared`` relative to the working
directory), holding ``golden/``, ``weights/`` and ``faces/``. One cache for fetched weights:
``$FACECLOAK_CHECKPOINTS``; else the project's ``checkpoints/`` when facecloak runs from its own source checkout;
else the user's cache folder (``$XDG_CACHE_HOME/facecloak/checkpoints``, default ``~/.cache/facecloak/checkpoints``).
Nothing is ever put in an arbitrary working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

SHARED_ENV = "FACECLOAK_SHARED"
CHECKPOINTS_ENV = "FACECLOAK_CHECKPOINTS"
DEFAULT_SHARED = "../shared"
DEFAULT_CHECKPOINTS = "checkpoints"
XDG_CACHE_ENV = "XDG_CACHE_HOME"


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


def source_checkout() -> Path | None:
    """The repository root when facecloak is imported from a source checkout (``src/`` layout), else None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "src" / "facecloak").is_dir() else None


def checkpoints_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Cache folder for fetched weights: override, environment, the checkout's own (when run inside it), XDG cache."""
    chosen = override or os.environ.get(CHECKPOINTS_ENV)
    if chosen:
        return Path(chosen).expanduser().resolve()
    checkout, here = source_checkout(), Path.cwd().resolve()
    if checkout is not None and (here == checkout or checkout in here.parents):
        return checkout / DEFAULT_CHECKPOINTS
    cache_home = os.environ.get(XDG_CACHE_ENV) or Path.home() / ".cache"
    return Path(cache_home).expanduser().resolve() / "facecloak" / DEFAULT_CHECKPOINTS
