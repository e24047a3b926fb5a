"""The pixel baselines (PGD, MI-FGSM, TI-DIM) as a Lightning stage: precision, devices, loss curves, progress.

The steps are the attack's own (:meth:`facecloak.attacks.pixel.PixelAttack.step`), so a baseline run through the
Trainer gives exactly the images of :meth:`~facecloak.attacks.pixel.PixelAttack.perturb` at full precision; the
Trainer adds what every stage of a job gets — ``trainer.precision``, the accelerator, loss curves and the job's
progress bar.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor

from facecloak.attacks.pixel import AttackRun, PixelAttack
from facecloak.losses.identity import IdentityReference
from facecloak.stages.fit import build_trainer, quiet_fit, steps_loader

EXPECTED_WARNINGS = ("returned `None`",)
"""A Lightning warning that does not apply: no optimizer (the attack steps itself)."""


class PixelAttackStage(L.LightningModule):
    """One pixel attack on a batch of face regions; every training step is one attack step."""

    def __init__(
        self,
        attack: PixelAttack,
        images01: Tensor,
        landmarks5: Tensor,
        reference: IdentityReference,
        mask: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.attack = attack  # a plain object: its frozen models are not submodules, so never checkpointed
        self._inputs = (images01, landmarks5, reference, mask)
        self.run: AttackRun | None = None

    def on_fit_start(self) -> None:
        """Fresh attack state (clean images, seeded draws, first iterate) for this fit."""
        self.run = self.attack.start(*self._inputs)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """One attack step; logs the identity loss the step started from."""
        assert self.run is not None
        loss = self.attack.step(self.run)
        # not prog_bar: Lightning would read it back every step (a GPU sync); loggers read it every N steps
        self.log(f"baseline/{self.attack.name}/loss", loss.float().mean(), batch_size=loss.shape[0])

    def configure_optimizers(self) -> None:
        """No optimizer: the attack's step rule (signed, projected) is the update."""
        return None


def trainer_perturb(
    attack: PixelAttack,
    images01: Tensor,
    landmarks5: Tensor,
    reference: IdentityReference,
    mask: Tensor | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    """:meth:`PixelAttack.perturb` through a Lightning Trainer (``trainer_kwargs`` override the defaults)."""
    module = PixelAttackStage(attack, images01, landmarks5, reference, mask)
    trainer = build_trainer(attack.config.steps, trainer_kwargs, "the attack's steps")
    with torch.enable_grad():
        quiet_fit(trainer, module, steps_loader(attack.config.steps), expected=EXPECTED_WARNINGS)
    assert module.run is not None
    return module.run.adv.detach()
