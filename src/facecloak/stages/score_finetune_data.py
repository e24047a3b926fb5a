"""What MAP fine-tuning trains on, prepared once per photo before the fit (no Lightning here).

Each photo is DDIM-inverted once with the network *before* fine-tuning (the latents stay fixed while it trains), and
every fixed reference the losses need is gathered: identity embeddings, face boxes, the landmark mesh, and with a
composite the photo, the paste-back mask and the regeneration before tuning (see
:meth:`facecloak.stages.score_finetune.ScoreFinetune.composite`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from facecloak.diffusion import NoiseSchedule, ddim_generate, ddim_invert
from facecloak.errors import ConfigError
from facecloak.losses.expression import face_boxes_from_landmarks, faceapi_crop
from facecloak.losses.identity import AdversarialIdentityLoss
from facecloak.losses.landmark_smoothness import laplacian_coordinates, mesh_laplacian
from facecloak.models.ddpm import DDPMUNet
from facecloak.stages.score_finetune_config import ScoreFinetuneConfig

Composite = Literal["delta", "replace"]
"""How a regenerated face enters the shared photo (as in ``protect.paste``): its change, or the face itself."""


class FinetuneFaces(Dataset):
    """Per-image tensors the training step needs, precomputed once; items are dicts keyed as in :meth:`__getitem__`.

    Keys: ``index`` (image id), ``x0`` (original in [-1, 1]), ``x_t0`` (fixed DDIM latent), ``landmarks5``,
    ``boxes`` (face crop box), ``laplacian`` and ``delta`` (landmark mesh and original Laplacian coordinates),
    ``source`` / ``target`` (per-model reference embeddings).
    """

    def __init__(self, tensors: dict[str, Any]) -> None:
        self.tensors = tensors
        self.length = int(tensors["x0"].shape[0])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {key: _index(value, i) for key, value in self.tensors.items()}


def _index(value: Any, i: int) -> Any:
    if isinstance(value, Mapping):
        return {k: _index(v, i) for k, v in value.items()}
    return value[i]


@torch.no_grad()
def prepare_finetune_faces(
    unet: DDPMUNet,
    images01: torch.Tensor,
    landmarks5: torch.Tensor,
    config: ScoreFinetuneConfig,
    identity_loss: AdversarialIdentityLoss,
    landmark_net: nn.Module | None = None,
    target_embeddings: Mapping[str, torch.Tensor] | None = None,
    schedule: NoiseSchedule | None = None,
    composite: Composite | None = None,
    change_mask: torch.Tensor | None = None,
) -> FinetuneFaces:
    """Invert the photos with the network *before* fine-tuning and gather every fixed reference the losses need.

    ``images01`` are ``[N, 3, S, S]`` square face photos in [0, 1] and ``landmarks5`` their five landmarks in those
    pixels; ``S`` is the network's resolution ``R`` unless the photos are composited. ``target_embeddings`` (per
    model, ``[D]`` or ``[N, D]``) are needed for impersonation.

    ``composite`` makes the losses judge what paste-back will share instead of the bare regeneration:
    ``"delta"`` adds the change (regeneration by the tuned network minus the regeneration by this network, before
    fine-tuning) to the real photo, ``"replace"`` blends in the regeneration itself; both upsampled from ``R`` to
    ``S`` and under ``change_mask`` (``[N, 1, S, S]`` weights in [0, 1]; default: everywhere). The network then sees
    the photos downsampled to ``R``. See :meth:`ScoreFinetune.composite`.
    """
    schedule = schedule or NoiseSchedule()
    n = images01.shape[0]
    size = unet.config.resolution
    if tuple(images01.shape[-2:]) == (size, size):
        network_images = images01
    elif composite is not None:
        network_images = F.interpolate(images01, size=(size, size), mode="area")  # antialiased, like a photo crop
    else:
        raise ConfigError(
            f"photos of {list(images01.shape[-2:])} pixels need a composite mode; without one they must be at the "
            f"network's resolution {size}"
        )
    x0 = network_images * 2.0 - 1.0
    was_training = unet.training
    unet.eval()
    x_t0 = ddim_invert(unet, schedule, x0, t0=config.t0, num_steps=config.inversion_steps)
    unet.train(was_training)
    boxes = face_boxes_from_landmarks(landmarks5.float(), config.box_margin)
    tensors: dict[str, Any] = {
        "index": torch.arange(n),
        "x0": x0,
        "x_t0": x_t0,
        "landmarks5": landmarks5.float(),
        "boxes": boxes,
        "source": identity_loss.embed(images01, landmarks5.float()),
    }
    if target_embeddings is not None:
        tensors["target"] = {name: emb.expand(n, -1).clone() for name, emb in target_embeddings.items()}
    elif config.identity_mode == "impersonate":
        raise ConfigError("map.identity_mode='impersonate' needs target embeddings (embed a photo of the target)")
    if config.weights.landmark > 0:
        if landmark_net is None:
            raise ConfigError("map.weights.landmark > 0 needs a 68-landmark network (load_faceapi_model('landmark68'))")
        reference = landmark_net(faceapi_crop(images01, boxes))
        tensors["laplacian"] = mesh_laplacian(reference).to(images01)
        tensors["delta"] = laplacian_coordinates(reference, tensors["laplacian"], config.landmark_scale_invariant)
    if composite is not None:
        tensors.update(_composite_tensors(unet, images01, x_t0, config, schedule, composite, change_mask))
    elif change_mask is not None:
        raise ConfigError("a change mask needs a composite mode ('delta' or 'replace') to apply it to")
    return FinetuneFaces(tensors)


def _composite_tensors(
    unet: DDPMUNet,
    images01: torch.Tensor,
    x_t0: torch.Tensor,
    config: ScoreFinetuneConfig,
    schedule: NoiseSchedule,
    composite: str,
    change_mask: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """``photo`` and ``mask`` at the photos' resolution, and for delta the ``base`` regeneration before tuning."""
    if composite not in get_args(Composite):
        raise ConfigError(f"composite={composite!r} must be one of {list(get_args(Composite))}")
    n, _, height, width = images01.shape
    mask = torch.ones(n, 1, height, width) if change_mask is None else change_mask
    if mask.shape != (n, 1, height, width):
        raise ConfigError(f"change mask must have shape {[n, 1, height, width]}, got {list(mask.shape)}")
    tensors = {"photo": images01, "mask": mask.to(images01)}
    if composite == "delta":
        was_training = unet.training
        unet.eval()
        regenerated = ddim_generate(
            unet, schedule, x_t0, t0=config.t0, num_steps=config.generation_steps, grad_mode="none"
        )
        unet.train(was_training)
        tensors["base"] = (regenerated + 1.0) / 2.0
    return tensors
