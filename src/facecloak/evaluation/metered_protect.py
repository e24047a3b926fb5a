"""The ``protect`` method under the evaluation harness, with the cost of each photo and, where visible, each stage.

Why not ``run_protect_job``: the job runner measures only whole photos, and the cost table needs CLIP2Protect's stage
1 (inversion plus pivot tuning) and stage 2 (the adversarial latent search) apart, because they scale differently
(stage 1 with the generator, stage 2 with the FR ensemble). The protector is the job's own (``build_protector``, so
``protect.method`` is honoured), writing the same photos and per-photo records; a :class:`StageMeter` is its
``measure_stage`` hook, so it times the stages the method reports; a method that reports none (MAP) is measured per
photo. Photos are protected one by one, and a photo that fails is reported and skipped exactly as the job runner
does.

Imported only when ``protect`` is evaluated: it brings the generator and its trainer.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from facecloak.config.schema import AppConfig
from facecloak.errors import FacecloakError
from facecloak.evaluation.cost import CostLog
from facecloak.evaluation.probes import Probe, Protected
from facecloak.io.images import load_photo
from facecloak.protect import pipeline
from facecloak.protect.methods import build_protector
from facecloak.protect.pipeline import PhotoJob, image_id_for
from facecloak.protect.runner import STAGE_DIR_NAME

PROTECT_STAGE = "protect"
"""The whole photo as a user runs it: detection, every face's protection, paste-back, outputs and judging."""
STAGE1 = f"{PROTECT_STAGE}/{pipeline.STAGE1}"
STAGE2 = f"{PROTECT_STAGE}/{pipeline.STAGE2}"


class StageMeter:
    """Times the stages a protector reports (its ``measure_stage`` hook) into the current photo's ``costs``."""

    def __init__(self, protector: PhotoJob, device: torch.device) -> None:
        self.costs = CostLog()
        self.device = device
        protector.measure_stage = self.stage

    def stage(self, name: str) -> AbstractContextManager[Any]:
        """One measured stage of the photo being protected."""
        return self.costs.stage(f"{PROTECT_STAGE}/{name}", self.device)


def protect_probes(probes: Sequence[Probe], config: AppConfig, out: Path) -> dict[str, Protected]:
    """Protect every probe photo as ``facecloak protect`` would, recording the cost of each photo and stage."""
    out.mkdir(parents=True, exist_ok=True)
    protector = build_protector(config, stage_dir=out / STAGE_DIR_NAME)  # set-up errors stop evaluate at once
    meter = StageMeter(protector, protector.device)
    results = {}
    for probe in probes:
        meter.costs = CostLog()
        try:
            with meter.costs.stage(PROTECT_STAGE, protector.device) as total:
                record = protector.protect_photo(probe.item.path, image_id_for(probe.item.path), out)
        except FacecloakError as err:
            results[probe.image_id] = Protected(None, 0.0, str(err))
            continue
        rgb = load_photo(record["outputs"]["photo"], max_side=None).rgb  # judge exactly what the job wrote
        results[probe.image_id] = Protected(rgb, total.seconds, cost=meter.costs.to_dict())
    return results
