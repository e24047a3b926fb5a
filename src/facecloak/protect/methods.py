"""Pick the protection method of a job: every method shares detection, paste-back, outputs and judging."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facecloak.config.schema import AppConfig
from facecloak.protect.pipeline import PhotoProtector


def build_protector(
    config: AppConfig, stage_dir: Path | None = None, logger: Any = None, callbacks: list[Any] | None = None
) -> PhotoProtector:
    """The protector for ``config.protect.method`` (networks loaded once per job)."""
    if config.protect.method == "map":
        from facecloak.protect.map_method import MapProtector

        return MapProtector(config, stage_dir=stage_dir, logger=logger, callbacks=callbacks)
    if config.protect.method == "warp":
        from facecloak.protect.warp_method import WarpProtector

        return WarpProtector(config, stage_dir=stage_dir, logger=logger, callbacks=callbacks)
    from facecloak.protect.clip2protect import Protector

    return Protector(config, stage_dir=stage_dir, logger=logger, callbacks=callbacks)
