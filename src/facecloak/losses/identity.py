"""The adversarial identity objective shared by every protection method (CLIP2Protect's L_adv, MAP's identity term).

Faces are cropped differentiably from the generated image onto each model's own alignment template (from the
image's five landmarks), embedded by the attacked face-recognition ensemble and compared by cosine similarity:

- impersonation: ``1 - cos(f(x), f(target))`` — pull the face toward the target identity;
- dodging: ``cos(f(x), f(source))`` — push it away from the user's own identity (optionally also toward a target).

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
from facecloak.faces.templates import get_template
from facecloak.models.fr.zoo import FaceEmbedder

Mode = Literal["dodge", "impersonate"]
MODES: tuple[str, ...] = ("dodge", "impersonate")


@dataclass(frozen=True)
class IdentityReference:
    """Per-model embeddings of the user's own face (``source``) and, optionally, of the target identity."""

    source: dict[str, torch.Tensor]
    target: dict[str, torch.Tensor] | None = None


class AdversarialIdentityLoss(nn.Module):
    """L_adv over an ensemble of differentiable face-recognition models."""

    def __init__(
        self,
        models: Sequence[FaceEmbedder],
        mode: Mode,
        model_weights: Sequence[float] | None = None,
        dodge_toward_target: bool = False,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"identity mode must be one of {MODES}, got '{mode}'")
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
        self.dodge_toward_target = dodge_toward_target
        self.model_weights: torch.Tensor
        self.register_buffer("model_weights", torch.tensor(weights) / sum(weights), persistent=False)

    @property
    def names(self) -> list[str]:
        """Names of the attacked models, in order."""
        return [m.name for m in self.models]

    def embed(self, images01: torch.Tensor, landmarks5: torch.Tensor) -> dict[str, torch.Tensor]:
        """Embeddings of each image's face under every attacked model (each on its own template)."""
        out = {}
        for model in self.models:
            crops = align_tensor(images01, landmarks5, get_template(model.template))
            out[model.name] = model(crops)
        return out

    def similarities(
        self, embeddings: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Cosine similarity per model and image (embeddings are unit-norm)."""
        return {name: (emb * reference[name].to(emb)).sum(dim=1) for name, emb in embeddings.items()}

    def forward(
        self, images01: torch.Tensor, landmarks5: torch.Tensor, reference: IdentityReference
    ) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
        """Per-image loss ``[B]`` and the similarities it came from (``{"source": {...}, "target": {...}}``)."""
        embeddings = self.embed(images01, landmarks5)
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
            per_model.append(term)
        loss = (torch.stack(per_model, dim=1) * self.model_weights.to(images01)).sum(dim=1)
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
