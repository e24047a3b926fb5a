"""Combine the gradients of competing objectives by projecting away their conflicts (PCGrad, Yu et al. 2020).

MAP fine-tunes one score network for two goals that can pull in opposite directions: the adversarial identity
change and the requested facial expression. Summing their gradients lets the larger one cancel the smaller; instead,
when two gradients conflict (negative inner product) each is projected onto the normal plane of the other before they
are summed, so the update never works against either goal to first order. Gradients that agree or are orthogonal
are summed unchanged.

An optional exponential moving average (EMA) of each objective's gradient smooths the conflict test and the
projection over steps; its state is a plain dict so a trainer can checkpoint and resume it.

Everything works on flattened gradient vectors (one 1-D tensor per objective), with helpers to go to and from a
parameter list. No training framework is imported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from facecloak.errors import ConfigError

NORM_EPS = 1e-20
"""Squared norms below this are treated as a zero gradient (nothing to project onto)."""


# --- flattening ------------------------------------------------------------------------------------------------------


def flatten_grads(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> torch.Tensor:
    """One vector from per-parameter gradients, zeros where a parameter got none (``allow_unused=True``)."""
    if len(grads) != len(params):
        raise ValueError(f"got {len(grads)} gradients for {len(params)} parameters")
    parts = [
        (torch.zeros_like(p) if g is None else g).reshape(-1).to(p.dtype) for g, p in zip(grads, params, strict=True)
    ]
    return torch.cat(parts) if parts else torch.zeros(0)


def unflatten_like(flat: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat vector back into tensors shaped like ``params``, e.g. to write ``p.grad``."""
    sizes = [p.numel() for p in params]
    if flat.numel() != sum(sizes):
        raise ValueError(f"flat gradient has {flat.numel()} entries, the parameters {sum(sizes)}")
    return [chunk.view_as(p) for chunk, p in zip(torch.split(flat, sizes), params, strict=True)]


# --- projection ------------------------------------------------------------------------------------------------------


def project_conflicting(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of the objectives' gradients after removing, from each, its component against every conflicting other.

    For each gradient g_i (in a fixed order, for reproducibility) and each other original gradient g_j with
    ``g_i · g_j < 0``: ``g_i ← g_i − (g_i · g_j) / ‖g_j‖² · g_j``. With two objectives the result has a non-negative
    inner product with both originals (PCGrad's guarantee).
    """
    if not grads:
        raise ValueError("project_conflicting needs at least one gradient")
    originals = [g.reshape(-1) for g in grads]
    if len({g.numel() for g in originals}) != 1:
        raise ValueError(f"gradients must have equal sizes, got {[g.numel() for g in originals]}")
    squared_norms = [torch.dot(g, g) for g in originals]
    projected = []
    for i, g_i in enumerate(originals):
        g = g_i.clone()
        for j, g_j in enumerate(originals):
            if j == i or squared_norms[j] <= NORM_EPS:
                continue
            inner = torch.dot(g, g_j)
            if inner < 0:
                g = g - inner / squared_norms[j] * g_j
        projected.append(g)
    return torch.stack(projected).sum(dim=0).view_as(grads[0])


def gradient_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine between two gradients, logged to see how often and how strongly the objectives conflict."""
    return torch.nn.functional.cosine_similarity(a.reshape(1, -1), b.reshape(1, -1), eps=1e-12)[0]


class GradientProjector:
    """PCGrad with an optional per-objective gradient EMA, whose state can be checkpointed.

    ``ema_decay = 0`` uses the raw gradients. Otherwise objective k keeps ``m_k ← β m_k + (1 − β) g_k`` (the first
    step initialises ``m_k = g_k``, so there is no start-up bias) and the projection combines the averages.
    """

    def __init__(self, num_objectives: int, ema_decay: float = 0.0, project: bool = True) -> None:
        if num_objectives < 1:
            raise ConfigError(f"gradient projection needs at least one objective, got {num_objectives}")
        if not 0.0 <= ema_decay < 1.0:
            raise ConfigError(f"gradient EMA decay must be in [0, 1), got {ema_decay}")
        self.num_objectives = num_objectives
        self.ema_decay = ema_decay
        self.project = project
        self.averages: list[torch.Tensor] | None = None

    def smooth(self, grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Update the EMA with this step's gradients and return what the projection should combine."""
        if len(grads) != self.num_objectives:
            raise ValueError(f"expected {self.num_objectives} gradients, got {len(grads)}")
        if self.ema_decay == 0.0:
            return [g.detach() for g in grads]
        if self.averages is None:
            self.averages = [g.detach().clone() for g in grads]
        else:
            beta = self.ema_decay
            self.averages = [beta * m.to(g) + (1.0 - beta) * g.detach() for m, g in zip(self.averages, grads)]
        return list(self.averages)

    def combine(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """The update direction for this step: projected (or plain) sum of the (smoothed) objective gradients."""
        smoothed = self.smooth(grads)
        if not self.project:
            return torch.stack([g.reshape(-1) for g in smoothed]).sum(dim=0).view_as(grads[0])
        return project_conflicting(smoothed)

    def state_dict(self) -> dict[str, object]:
        """Plain state (EMA vectors on the CPU), so a resumed run continues with the same averages."""
        averages = None if self.averages is None else [m.detach().cpu().clone() for m in self.averages]
        return {"ema_decay": self.ema_decay, "project": self.project, "averages": averages}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict`; settings must match, since mixing two EMA rates would be silent drift."""
        if state["ema_decay"] != self.ema_decay or state["project"] != self.project:
            raise ConfigError(
                f"checkpointed gradient projection (ema_decay={state['ema_decay']}, project={state['project']}) "
                f"differs from the configured one (ema_decay={self.ema_decay}, project={self.project}); "
                "resume with the original settings"
            )
        averages = state["averages"]
        if averages is not None and not isinstance(averages, list | tuple):
            raise ConfigError(f"gradient projection state holds {type(averages).__name__} averages, not a list")
        self.averages = None if averages is None else [torch.as_tensor(m).clone() for m in averages]
