"""One interface for every face-recognition model: embed aligned faces given as RGB in [0, 1].

Each model's own preprocessing (input size, colour order, value range, layout, flip-concatenation, embedding
normalisation) comes from its weights-registry entry, so callers never hand-code it. Networks that are PyTorch
modules are differentiable w.r.t. the input; black-box evaluators (native dlib, insightface ONNX) are not and say so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facecloak.errors import ConfigError
from facecloak.registry.entries import ModelEntry, entries_of_kind, get_entry
from facecloak.registry.store import resolve
from facecloak.runtime.precision import full_precision, widened


def _to_network_input(x01: torch.Tensor, entry: ModelEntry, range_first: bool = False) -> torch.Tensor:
    """Apply the registry preprocessing to RGB crops in [0, 1] (already aligned to the model's template).

    ``range_first``: map the value range before the resize, as CLIP2Protect's box crop does. The result differs only
    by rounding, but rounding decides which side of a ReLU kink a near-zero unit falls, and so the gradient.
    """
    pre = entry.preprocessing
    size = None if pre.input_size is None else tuple(pre.input_size)
    resize = size is not None and tuple(x01.shape[-2:]) != size
    if resize and not range_first:
        x01 = F.interpolate(x01, size=size, mode="bilinear", align_corners=False, antialias=False)
    if pre.color == "BGR":
        x01 = x01.flip(1)
    elif pre.color == "GREY":
        weights = x01.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        x01 = (x01 * weights).sum(1, keepdim=True)
    channels = x01.shape[1]
    if range_first:
        # (x - mean / scale) · (scale / std): for the paper models exactly the reference's (x - 0.5) · 2. Colour
        # order and grey are per-pixel and linear, so they commute with the resize; only the range moves before it.
        shift = x01.new_tensor([m / pre.scale for m in pre.mean[:channels]]).view(1, -1, 1, 1)
        gain = x01.new_tensor([pre.scale / s for s in pre.std[:channels]]).view(1, -1, 1, 1)
        x = (x01 - shift) * gain
        if resize:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    else:
        mean = x01.new_tensor(pre.mean[:channels]).view(1, -1, 1, 1)
        std = x01.new_tensor(pre.std[:channels]).view(1, -1, 1, 1)
        x = (x01 * pre.scale - mean) / std
    return x.permute(0, 2, 3, 1).contiguous() if pre.layout == "NHWC" else x


class FaceEmbedder(nn.Module):
    """A face-recognition model with its preprocessing: ``forward(faces01) -> embeddings`` (unit norm for cosine)."""

    differentiable: bool = True

    def __init__(self, entry: ModelEntry, network: nn.Module) -> None:
        super().__init__()
        self.entry = entry
        self.network = network.eval().requires_grad_(False)

    @property
    def name(self) -> str:
        """Registry name of the model."""
        return self.entry.name

    @property
    def template(self) -> str:
        """Alignment template the weights expect (see :mod:`facecloak.faces.templates`)."""
        return self.entry.preprocessing.template or "arcface_112"

    def train(self, mode: bool = True) -> FaceEmbedder:
        """Frozen networks stay in eval mode whatever the surrounding module does (BatchNorm, dropout)."""
        super().train(False)
        return self

    def embed_network_input(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network on already-preprocessed input (flip-concatenation included)."""
        out = self.network(x)
        if self.entry.preprocessing.flip_concat:
            width_axis = 2 if self.entry.preprocessing.layout == "NHWC" else 3
            out = torch.cat([out, self.network(x.flip(width_axis))], dim=1)
        return out.flatten(1)

    def forward(self, faces01: torch.Tensor, range_first: bool = False) -> torch.Tensor:
        """Embed aligned RGB crops in [0, 1], ``[B, 3, H, W]``; returns ``[B, D]`` (``range_first``: see below)."""
        out = self.embed_network_input(_to_network_input(faces01, self.entry, range_first))
        with full_precision():  # the embedding's norm and every cosine taken from it: fp32 under autocast
            out = widened(out)
            return F.normalize(out, dim=1) if self.entry.preprocessing.embedding_norm == "l2" else out


class BlackBoxEmbedder(FaceEmbedder):
    """A model we can query but not differentiate (native dlib, ONNX runtimes): an evaluator, never attacked."""

    differentiable = False

    def __init__(self, entry: ModelEntry, embed_uint8: Callable[[np.ndarray], np.ndarray]) -> None:
        super().__init__(entry, nn.Identity())
        self._embed_uint8 = embed_uint8

    @torch.no_grad()
    def forward(self, faces01: torch.Tensor, range_first: bool = False) -> torch.Tensor:
        """Quantise to uint8 HWC as the black box expects, embed each face (unit norm unless the entry says none)."""
        size = self.entry.preprocessing.input_size
        if size is not None and tuple(faces01.shape[-2:]) != tuple(size):
            faces01 = F.interpolate(faces01, size=tuple(size), mode="bilinear", align_corners=False)
        images = (faces01.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        out = torch.from_numpy(np.stack([self._embed_uint8(img) for img in images])).float()
        if self.entry.preprocessing.embedding_norm == "l2":
            out = F.normalize(out, dim=1)
        return out.to(faces01.device)


# ---------------------------------------------------------------- builders, one per architecture family


def _build_paper(entry: ModelEntry, paths: list[Path]) -> FaceEmbedder:
    from facecloak.models.fr.paper_models import load_paper_network

    assert entry.architecture is not None
    return FaceEmbedder(entry, load_paper_network(entry.architecture, paths[0]))


def _build_mobilefacenet_casia(entry: ModelEntry, paths: list[Path]) -> FaceEmbedder:
    from facecloak.models.fr.mobilefacenet_casia import load_mobilefacenet_casia

    return FaceEmbedder(entry, load_mobilefacenet_casia(paths[0]))


def _build_tfjs_graph(entry: ModelEntry, paths: list[Path]) -> FaceEmbedder:
    from facecloak.models.tfjs.human_models import load_human_model

    assert entry.architecture is not None
    graph_json = next(p for p in paths if p.suffix == ".json")
    network = load_human_model(entry.architecture.split(":", 1)[1], graph_json, outputs=["embedding"])
    return FaceEmbedder(entry, network)


def _build_faceapi(entry: ModelEntry, paths: list[Path]) -> FaceEmbedder:
    from facecloak.models.faceapi import load_faceapi_model

    assert entry.architecture is not None
    manifest = next(p for p in paths if p.suffix == ".json")
    return FaceEmbedder(entry, load_faceapi_model(entry.architecture.split(":", 1)[1], manifest))


def _build_dlib(entry: ModelEntry, paths: list[Path]) -> FaceEmbedder:
    from facecloak.models import dlib_native

    return BlackBoxEmbedder(entry, dlib_native.chip_descriptor)


def _build_onnx(entry: ModelEntry, paths: list[Path]) -> FaceEmbedder:
    from insightface.model_zoo import get_model

    model = get_model(str(paths[0]), providers=["CPUExecutionProvider"])

    def embed(image_rgb: np.ndarray) -> np.ndarray:
        return np.asarray(model.get_feat(image_rgb[:, :, ::-1].copy())).reshape(-1)

    return BlackBoxEmbedder(entry, embed)


_BUILDERS: dict[str, Callable[[ModelEntry, list[Path]], FaceEmbedder]] = {
    "irse50": _build_paper,
    "ir152": _build_paper,
    "facenet": _build_paper,
    "mobile_face": _build_paper,
    "mobilefacenet_casia": _build_mobilefacenet_casia,
    "tfjs": _build_tfjs_graph,
    "faceapi": _build_faceapi,
    "dlib": _build_dlib,
    "onnx": _build_onnx,
}

_LOADED: dict[tuple[str, str], FaceEmbedder] = {}


def fr_model_names(available_only: bool = False) -> list[str]:
    """Names of every face-recognition model in the registry (optionally only those whose files are present)."""
    from facecloak.registry.store import is_available

    names = [e.name for e in entries_of_kind("face_recognition")]
    return [n for n in names if is_available(n)] if available_only else names


def load_fr_model(name: str, device: str | torch.device = "cpu") -> FaceEmbedder:
    """Build a zoo model once per process and device (models are never reloaded per image)."""
    key = (name, str(device))
    if key not in _LOADED:
        entry = get_entry(name)
        if entry.kind != "face_recognition":
            raise ConfigError(f"'{name}' is a {entry.kind} model, not a face-recognition model")
        family = (entry.architecture or "").split(":", 1)[0]
        if family not in _BUILDERS:
            raise ConfigError(f"no builder for architecture '{entry.architecture}' of '{name}'")
        _LOADED[key] = _BUILDERS[family](entry, resolve(name)).to(device)
    return _LOADED[key]


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of embedding rows (embeddings from the zoo are unit-norm already)."""
    return F.cosine_similarity(a, b, dim=-1)
