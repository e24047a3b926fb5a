"""One progress bar per job: photos done / total, and the current photo's stage, step and losses.

Per-photo stages run short Trainer fits one after another; a Lightning bar per fit would scroll hundreds of bars
past the user. Instead the job owns one tqdm bar and a Lightning callback writes each stage step into its postfix.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from tqdm import tqdm

STAGE_NAMES = {"PivotTuning": "tune", "AdversarialLatentSearch": "search", "ScoreFinetune": "finetune"}
SHOWN_LOSSES = 3


class JobProgress(L.Callback):
    """The job's bar; as a callback of each stage Trainer it shows the running step and its loss terms."""

    def __init__(
        self, total: int, enabled: bool = True, rank: int = 0, world_size: int = 1, every_n_steps: int = 1
    ) -> None:
        label = "photos" if world_size == 1 else f"photos (rank {rank}/{world_size})"
        self.bar = tqdm(total=total, desc=label, unit="photo", disable=not enabled, position=rank, dynamic_ncols=True)
        self.enabled = enabled
        # Reading a loss for display copies it from the GPU (a host sync): done only every this many steps.
        self.every_n_steps = every_n_steps
        self.photo = ""
        self.latest: dict[str, float] = {}

    def start_photo(self, name: str) -> None:
        """A new photo begins: show its name."""
        self.photo = name
        self.latest = {}
        self._show("load")

    def finish_photo(self) -> None:
        """The photo is written (or failed and recorded)."""
        self.bar.update(1)

    def close(self) -> None:
        """Close the bar (the job is over)."""
        self.bar.close()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """Every ``every_n_steps`` optimisation steps (and the last): stage, step / max steps, the loss terms."""
        step = trainer.global_step
        if not self.enabled or (step % self.every_n_steps and step != trainer.max_steps):
            return
        losses = {k.split("/")[-1]: float(v) for k, v in trainer.callback_metrics.items() if "loss" in k}
        self.latest = dict(sorted(losses.items())[:SHOWN_LOSSES])
        stage = STAGE_NAMES.get(type(pl_module).__name__, type(pl_module).__name__)
        self._show(f"{stage} {trainer.global_step}/{trainer.max_steps}")

    def _show(self, stage: str) -> None:
        terms = " ".join(f"{k}={v:.3g}" for k, v in self.latest.items())
        self.bar.set_postfix_str(f"{self.photo} | {stage} {terms}".rstrip(), refresh=True)
