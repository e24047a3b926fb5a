"""The adversarial identity objective shared by every protection method (CLIP2Protect's L_adv, MAP's identity term).

Faces are cropped differentiably from the generated image onto each model's own alignment template (from the
image's five landmarks), embedded by the attacked face-recognition ensemble and compared by cosine similarity:

- impersonation: ``1 - cos(f(x), f(target))`` — pull the face toward the target identity;
- dodging: ``cos(f(x), f(source))`` — push it away from the user's own identity (optionally also toward a target);
  CLIP2Protect's dodging (``dodge_objective="source_minus_target"``) is ``cos(f(x), f(source)) − cos(f(x), f(target))``.

The per-model terms are combined by ``reduce``: ``"sum"`` as the CLIP2Protect reference (so λ_adv weighs the
ensemble's total), or ``"mean"`` (ours before; equal to the sum scaled by 1/len(models)). Faces reach the models
either aligned onto each model's template from five landmarks (``preprocess="align5"``) or as the reference's box
crop (``preprocess="box"``, :mod:`facecloak.faces.box_crop`), the box carried by :class:`IdentityReference`.

Losses are returned per image so callers can stop each image on its own once it passes its thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from facecloak.errors import ConfigError
from facecloak.faces.align import align_tensor
from facecloak.faces.box_crop import crop_boxes
from facecloak.faces.templates import get_template
from facecloak.models.fr.zoo import FaceEmbedder
from facecloak.runtime.precision import full_precision, widened

Mode = Literal["dodge", "impersonate"]
MODES: tuple[str, ...] = ("dodge", "impersonate")
ENSEMBLE_REDUCTIONS: tuple[str, ...] = ("sum", "mean")
DODGE_OBJECTIVES: tuple[str, ...] = ("source", "source_minus_target")
"""``source``: cos(x, source) (ours); ``source_minus_target``: cos(x, source) − cos(x, target) (the reference)."""
FR_PREPROCESSING: tuple[str, ...] = ("align5", "box")


@dataclass(frozen=True)
class IdentityReference:
    """Per-model embeddings of the user's own face (``source``) and, optionally, of the target identity."""

    source: dict[str, torch.Tensor]
    target: dict[str, torch.Tensor] | None = None
    boxes: torch.Tensor | None = None
    """Per-image face boxes ``[B, 4]`` (x0, y0, x1, y1, image pixels) for ``preprocess="box"``: the source photo's."""

    def to(self, device: torch.device | str) -> IdentityReference:
        """The same reference on ``device``."""

        def move(embeddings: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
            return None if embeddings is None else {k: v.to(device) for k, v in embeddings.items()}

        source = move(self.source)
        assert source is not None
        return IdentityReference(source, move(self.target), None if self.boxes is None else self.boxes.to(device))


class AdversarialIdentityLoss(nn.Module):
    """L_adv over an ensemble of differentiable face-recognition models."""

    def __init__(
        self,
        models: Sequence[FaceEmbedder],
        mode: Mode,
        model_weights: Sequence[float] | None = None,
        dodge_toward_target: bool = False,
        reduce: str = "mean",
        dodge_objective: str = "source",
        preprocess: str = "align5",
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"identity mode must be one of {MODES}, got '{mode}'")
        if reduce not in ENSEMBLE_REDUCTIONS:
            raise ConfigError(f"search.ensemble_reduce must be one of {ENSEMBLE_REDUCTIONS}, got '{reduce}'")
        if dodge_objective not in DODGE_OBJECTIVES:
            raise ConfigError(f"search.dodge_objective must be one of {DODGE_OBJECTIVES}, got '{dodge_objective}'")
        if preprocess not in FR_PREPROCESSING:
            raise ConfigError(f"fr.preprocess must be one of {FR_PREPROCESSING}, got '{preprocess}'")
        for model in models:
            if not model.differentiable:
                raise ConfigError(f"'{model.name}' is a black-box evaluator and cannot be attacked; hold it out")
            if model.template.startswith("dlib_chip"):
                raise ConfigError(f"'{model.name}' needs dlib's chip alignment, which is not differentiable here")
        weights = list(model_weights) if model_weights is not None else [1.0] * len(models)
        if len(weights) != len(models) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError("identity model weights must be non-negative, one per attacked model, not all zero")
        self.models: list[FaceEmbedder] = list(models)
        self._modules_list = nn.ModuleList(models)
        self.mode = mode
        self.dodge_objective = dodge_objective
        self.dodge_toward_target = dodge_toward_target or dodge_objective == "source_minus_target"
        self.preprocess = preprocess
        self.model_weights: torch.Tensor
        scale = sum(weights) if reduce == "mean" else 1.0
        self.register_buffer("model_weights", torch.tensor(weights) / scale, persistent=False)

    @property
    def names(self) -> list[str]:
        """Names of the attacked models, in order."""
        return [m.name for m in self.models]

    def embed(
        self, images01: torch.Tensor, landmarks5: torch.Tensor, boxes: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Embeddings of each image's face under every attacked model (its template, or the box crop)."""
        out = {}
        if self.preprocess == "box":
            if boxes is None:
                raise ConfigError("fr.preprocess=box needs each image's face box (IdentityReference.boxes)")
            box_crops = crop_boxes(images01, boxes)
            return {m.name: torch.cat([m(crop, range_first=True) for crop in box_crops]) for m in self.models}
        for model in self.models:
            crops = align_tensor(images01, landmarks5, get_template(model.template))
            out[model.name] = model(crops)
        return out

    def similarities(
        self, embeddings: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Cosine similarity per model and image (unit-norm embeddings), in fp32: verdicts and early stops read it."""
        with full_precision():
            return {
                name: (widened(emb) * reference[name].to(widened(emb))).sum(dim=1) for name, emb in embeddings.items()
            }

    def forward(
        self, images01: torch.Tensor, landmarks5: torch.Tensor, reference: IdentityReference
    ) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
        """Per-image loss ``[B]`` and the similarities it came from (``{"source": {...}, "target": {...}}``)."""
        embeddings = self.embed(images01, landmarks5, reference.boxes)
        sims = {"source": self.similarities(embeddings, reference.source)}
        needs_target = self.mode == "impersonate" or self.dodge_toward_target
        if needs_target:
            if reference.target is None:
                raise ConfigError(f"identity mode '{self.mode}' needs target embeddings (a target photo)")
            sims["target"] = self.similarities(embeddings, reference.target)
        per_model = []
        for name in self.names:
            term = torch.zeros_like(sims["source"][name])
            if self.mode == "dodge":
                term = term + sims["source"][name]
            if needs_target:
                term = term + (1.0 - sims["target"][name])
            if self.mode == "dodge" and self.dodge_objective == "source_minus_target":
                term = term - 1.0  # cos(x, s) + (1 − cos(x, t)) − 1: the reference's Σ[cos(x, s) − cos(x, t)]
            per_model.append(term)
        terms = torch.stack(per_model, dim=1)
        with full_precision():
            loss = (terms * self.model_weights.to(terms)).sum(dim=1)
        return loss, sims


def passes_thresholds(
    sims: Mapping[str, Mapping[str, torch.Tensor]],
    thresholds: Mapping[str, float],
    mode: Mode,
    margin: float = 0.0,
) -> torch.Tensor:
    """Per image, whether every attacked model sees the intended outcome with ``margin`` to spare.

    Dodging succeeds when the similarity to the user's own face is at or below the model's threshold (no match);
    impersonation when the similarity to the target is above it (match). Faces match when similarity > threshold.
    """
    key = "source" if mode == "dodge" else "target"
    verdicts = []
    for name, sim in sims[key].items():
        threshold = thresholds[name]
        verdicts.append(sim <= threshold - margin if mode == "dodge" else sim > threshold + margin)
    return torch.stack(verdicts, dim=1).all(dim=1)
