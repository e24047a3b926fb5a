"""Protect new photos with a fine-tuned MAP score network, without further training (no Lightning here)."""

from __future__ import annotations

import torch

from facecloak.diffusion import NoiseSchedule, ddim_generate, ddim_invert
from facecloak.models.ddpm import DDPMUNet
from facecloak.stages.score_finetune_config import ScoreFinetuneConfig


@torch.no_grad()
def protect_with_finetuned(
    unet: DDPMUNet,
    images01: torch.Tensor,
    config: ScoreFinetuneConfig,
    original: DDPMUNet | None = None,
    schedule: NoiseSchedule | None = None,
) -> torch.Tensor:
    """Protect photos (``[N, 3, R, R]`` in [0, 1]) with a fine-tuned network, without further training.

    Generation always uses the fine-tuned ``unet``. Inversion uses ``original`` when given: that is DiffusionCLIP's
    recipe (``edit_one_image`` inverts with the pretrained model) and matches training, where the latents came from
    the network before fine-tuning. Without it the fine-tuned network also inverts, so a single saved network is
    enough to protect; the round trip then tends to undo part of the edit, so pass ``original`` when you have it.
    """
    schedule = schedule or NoiseSchedule()
    inverter = original if original is not None else unet
    states = [(net, net.training) for net in ([unet] if original is None else [unet, original])]
    for net, _ in states:
        net.eval()
    x0 = images01.to(next(unet.parameters())) * 2.0 - 1.0
    x_t0 = ddim_invert(inverter, schedule, x0, t0=config.t0, num_steps=config.inversion_steps)
    x = ddim_generate(unet, schedule, x_t0, t0=config.t0, num_steps=config.generation_steps, grad_mode="none")
    for net, mode in states:
        net.train(mode)
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)
