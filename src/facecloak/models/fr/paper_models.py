"""The four face-recognition networks of CLIP2Protect / AMT-GAN / DiffAM, built and loaded by name.

Each entry of :data:`PAPER_NETWORKS` says how to build the network, which AMT-GAN checkpoint fills it, and what
the weights expect as input (square RGB crop in [-1, 1] of ``input_size`` pixels) and return (whether the
embedding is already L2-normalised). A generic wrapper applies preprocessing and normalisation from here, so
the networks themselves take exactly the tensor the reference code feeds them.

Checkpoints: ``irse50.pth``, ``ir152.pth``, ``mobile_face.pth``, ``facenet.pth`` from AMT-GAN's ``assets.zip``
(``assets/models/``; weights originally from Adv-Makeup). Each is a plain state_dict without prefix.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from facecloak.errors import ConfigError, CorruptWeightsError, MissingWeightsError
from facecloak.models.fr.facenet import InceptionResnetV1
from facecloak.models.fr.irse import MobileFaceNet, ir_152, ir_se_50

PAPER_INPUT_RANGE = (-1.0, 1.0)
"""Pixel range every paper network expects: ``(x - 0.5) / 0.5`` of an RGB image in [0, 1], no other mean/std."""

ARCFACE_INPUT_SIZE = 112
"""Side of the square crop for the IR / IR-SE / MobileFaceNet models (InsightFace convention)."""

FACENET_INPUT_SIZE = 160
"""Side of the square crop for FaceNet (facenet-pytorch convention)."""

WEIGHTS_SOURCE = "AMT-GAN's assets.zip (assets/models/), as linked by CLIP2Protect"


@dataclass(frozen=True)
class PaperNetworkInfo:
    """What a caller must know to feed one paper network and to compare its embeddings."""

    arch: str
    input_size: int
    """Side of the square input crop; resize bilinearly (align_corners=False) to this size."""
    l2_normalized: bool
    """Whether ``forward`` already returns unit-length embeddings (IR-152 returns the raw BatchNorm1d output)."""
    weights_file: str
    """File name of the official checkpoint in the AMT-GAN assets."""
    reference_constructor: str
    """How the reference code (CLIP2Protect ``models/``) builds the same network."""
    build: Callable[[], nn.Module]


PAPER_NETWORKS: Mapping[str, PaperNetworkInfo] = {
    info.arch: info
    for info in (
        PaperNetworkInfo(
            arch="irse50",
            input_size=ARCFACE_INPUT_SIZE,
            l2_normalized=True,
            weights_file="irse50.pth",
            reference_constructor="irse.Backbone(50, 0.6, 'ir_se')",
            build=ir_se_50,
        ),
        PaperNetworkInfo(
            arch="ir152",
            input_size=ARCFACE_INPUT_SIZE,
            l2_normalized=False,
            weights_file="ir152.pth",
            reference_constructor="ir152.IR_152((112, 112))",
            build=ir_152,
        ),
        PaperNetworkInfo(
            arch="mobile_face",
            input_size=ARCFACE_INPUT_SIZE,
            l2_normalized=True,
            weights_file="mobile_face.pth",
            reference_constructor="irse.MobileFaceNet(512)",
            build=MobileFaceNet,
        ),
        PaperNetworkInfo(
            arch="facenet",
            input_size=FACENET_INPUT_SIZE,
            l2_normalized=True,
            weights_file="facenet.pth",
            reference_constructor="facenet.InceptionResnetV1(num_classes=8631)",
            build=InceptionResnetV1,
        ),
    )
}
"""Registry of the paper networks, keyed by the names the papers' code uses."""


def paper_network_info(arch: str) -> PaperNetworkInfo:
    """Look up one paper network, failing with the list of valid names for a typo in a config."""
    try:
        return PAPER_NETWORKS[arch]
    except KeyError:
        choices = sorted(PAPER_NETWORKS)
        raise ConfigError(f"unknown face-recognition network {arch!r}; choose one of {choices}") from None


def build_paper_network(arch: str) -> nn.Module:
    """Build an untrained network with the official layout, e.g. to load weights or to run golden tests."""
    return paper_network_info(arch).build()


def load_paper_network(arch: str, path: str | os.PathLike[str]) -> nn.Module:
    """Build ``arch`` and strictly load its official AMT-GAN checkpoint; returned frozen and in eval mode.

    Raises :class:`MissingWeightsError` when the file is absent and :class:`CorruptWeightsError` when it cannot be
    read as a plain state_dict or its keys/shapes do not match the official layout.
    """
    info = paper_network_info(arch)
    path = Path(path)
    hint = f"expected {info.weights_file!r} for {arch} from {WEIGHTS_SOURCE}"
    if not path.is_file():
        raise MissingWeightsError(f"{arch} weights not found at {path}; {hint}")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated zips and foreign pickles
        raise CorruptWeightsError(f"cannot read {path} as a PyTorch state_dict ({error}); {hint}") from error
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CorruptWeightsError(f"{path} is not a plain state_dict of tensors; {hint}")

    model = info.build()
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise CorruptWeightsError(
            f"{path} does not have the {arch} layout: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}); {hint}"
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:  # same names, different shapes
        raise CorruptWeightsError(f"{path} has the {arch} key names but wrong shapes: {error}; {hint}") from error
    model.eval()
    model.requires_grad_(False)
    return model
