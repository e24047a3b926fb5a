"""What reaches the user's terminal: facecloak's own lines, and the libraries' chatter only under ``-v``.

A job runs many short Lightning fits and one W&B run; left alone they print a "GPU/TPU available" block and a
"💡 Tip" advertisement per fit, a W&B banner, history sparklines and sync hints, and a ``_pytree`` deprecation
warning per stage — dozens of lines that bury the one line per finished photo. This module is the one place that
quiets them; the CLI entry calls :func:`configure_console` before any command runs. Nothing here imports Lightning
or W&B (it only sets logger levels, warning filters and environment defaults), so ``--help`` stays fast.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

# Loggers of the libraries that narrate every fit; facecloak's own logger stays at INFO.
CHATTY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
# Warnings that say nothing a facecloak user can act on.
NOISE_WARNINGS = (
    r".*torch\.utils\._pytree\._register_pytree_node.* is deprecated.*",
    r".*isinstance\(treespec, LeafSpec\).* is deprecated.*",
    r".*does not have many workers.*",
    r".*The number of training batches .* is smaller than the logging interval.*",
)
# W&B's own switches: no banner, no sparklines, no sync hints, no console capture.
WANDB_QUIET_ENV = {"WANDB_SILENT": "true", "WANDB_QUIET": "true", "WANDB_CONSOLE": "off"}
LOG_FORMAT = "%(message)s"
VERBOSE_FORMAT = "%(levelname)s %(name)s: %(message)s"


class _BarSafeHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Write each line above the job's progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def _own_or_important(record: logging.LogRecord) -> bool:
    """Libraries reset their loggers' levels on import (Lightning sets INFO): filter at the handler instead."""
    return record.name.split(".")[0] == "facecloak" or record.levelno >= logging.WARNING


class _FilteredLogger(logging.Logger):
    """A library logger whose own handlers get the same filter (``lightning`` adds a handler of its own on import)."""

    def addHandler(self, hdlr: logging.Handler) -> None:  # noqa: N802 (logging's name)
        """Attach the handler behind the filter."""
        hdlr.addFilter(_own_or_important)
        super().addHandler(hdlr)


def _quiet_library_loggers() -> None:
    """Filter the library loggers' own handlers, those added later (on import) and those already there."""
    previous = logging.getLoggerClass()
    logging.setLoggerClass(_FilteredLogger)
    try:
        for name in CHATTY_LOGGERS:
            for handler in logging.getLogger(name).handlers:
                handler.addFilter(_own_or_important)
    finally:
        logging.setLoggerClass(previous)


class _FacecloakFormatter(logging.Formatter):
    """Plain lines for information, a ``warning:``/``error:`` prefix where the user must look."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        if record.levelno >= logging.WARNING:
            return f"warning: {message}"
        return message


def release_console() -> None:
    """Remove the handler :func:`configure_console` installed (for callers that run commands in-process)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _BarSafeHandler)]:
        root.removeHandler(handler)


def configure_console(verbose: bool = False) -> None:
    """Default: facecloak's lines and the progress bar; ``verbose``: every library's logs and warnings too."""
    handler = _BarSafeHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(VERBOSE_FORMAT) if verbose else _FacecloakFormatter(LOG_FORMAT))
    if not verbose:
        handler.addFilter(_own_or_important)
    root = logging.getLogger()
    for previous in [h for h in root.handlers if isinstance(h, _BarSafeHandler)]:
        root.removeHandler(previous)  # a second call (tests run many commands) replaces the first one's handler
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("facecloak").setLevel(logging.DEBUG if verbose else logging.INFO)
    if verbose:
        return
    _quiet_library_loggers()
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for key, value in WANDB_QUIET_ENV.items():
        os.environ.setdefault(key, value)


# W&B's documented variables for its debug logs, cache and staging area (default: under the user's home).
WANDB_FILE_ENV = {"WANDB_CACHE_DIR": "cache", "WANDB_DATA_DIR": "data"}
_USER_WANDB_ENV = frozenset(k for k in WANDB_FILE_ENV if k in os.environ)


def wandb_settings(run_dir: Path) -> dict[str, object]:
    """W&B settings that keep a run quiet (unless ``-v``) and every W&B file under ``run_dir``.

    W&B otherwise writes its debug logs to ``~/.cache/wandb`` and stages files under the user's home; a job must
    leave nothing outside its own output folder. Variables the user set themselves are left alone.
    """
    for key, sub in WANDB_FILE_ENV.items():
        if key not in _USER_WANDB_ENV:
            os.environ[key] = str(run_dir / "wandb-internal" / sub)
    quiet = not logging.getLogger("facecloak").isEnabledFor(logging.DEBUG)
    return {"silent": quiet, "quiet": quiet, "console": "off" if quiet else "auto", "show_info": not quiet}
