"""The one judge: detect → crop → embed → compare → a typed :class:`Verdict` per face and FR model.

``protect`` (on the saved photo), ``evaluate`` (per photo) and the sweep (through protect's records) all judge faces
here, so one photo gets one answer whichever command asks. A verdict is one of three things:

- ``protected``: dodging, the model no longer matches the face to the original (impersonating: it matches the target);
- ``recognised``: the model still matches the face to the original (impersonating: not to the target);
- ``no_face_found``: the detector no longer finds the face on the protected photo (no box overlaps the original's by
  :data:`SAME_FACE_MIN_IOU`). Never counted as protected: a face recognition system with a better detector may still
  find it.

Each model is compared by its own metric (:mod:`facecloak.verify.metrics`): cosine similarity, or Euclidean distance
for dlib's descriptor, beside face_recognition's tolerance. The margin is how far the protected photo sits on the
protected side of the threshold (negative: on the recognised side), in the metric's units.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch

from facecloak.faces.crops import box_iou, crop_for_template, detect_with_config
from facecloak.faces.detect import Face, FaceDetector
from facecloak.models.fr.zoo import FaceEmbedder
from facecloak.verify.metrics import FACE_RECOGNITION_TOLERANCE, Metric, compare_rows, matches
from facecloak.verify.thresholds import Threshold

if TYPE_CHECKING:
    from facecloak.faces.config import FacesConfig

SAME_FACE_MIN_IOU = 0.3
"""A face found on the protected photo is the protected face when its box overlaps the original's at least this
much (intersection over union); else the face was not found again."""
Outcome = Literal["protected", "recognised", "no_face_found"]
OUTCOMES: tuple[Outcome, ...] = ("protected", "recognised", "no_face_found")
OUTCOME_WORDS: dict[str, str] = {
    "protected": "protected",
    "recognised": "still recognised",
    "no_face_found": "no face found",
}
Role = Literal["attacked", "held_out"]
Mode = Literal["dodge", "impersonate"]


def same_face(original: Face, candidates: Sequence[Face]) -> Face | None:
    """The candidate that is ``original`` found again (largest overlap, at least :data:`SAME_FACE_MIN_IOU`)."""
    scored = [(box_iou(original.box, c.box), c) for c in candidates]
    overlap, best = max(scored, key=lambda s: s[0], default=(0.0, None))
    return best if overlap >= SAME_FACE_MIN_IOU else None


@dataclass(frozen=True)
class Verdict:
    """How one FR model judges one protected face, with the numbers it was decided on (metric units)."""

    model: str
    role: Role
    verdict: Outcome
    metric: Metric
    threshold: float
    threshold_source: str
    before: float
    """The original photo against the reference (dodging: itself; impersonating: the target)."""
    after: float | None
    """The protected photo against the reference; None when no face was found on it."""
    margin: float | None
    """Distance to the threshold on the protected side (negative: recognised); None when no face was found."""
    cosine_after: float | None = None
    """Cosine similarity of the protected face to the reference, for every model (sweeps average it across models)."""

    def to_record(self) -> dict[str, Any]:
        """Plain data for the per-photo JSON record."""
        record: dict[str, Any] = {
            "role": self.role,
            "verdict": self.verdict,
            "metric": self.metric,
            "before": round(self.before, 4),
            "after": None if self.after is None else round(self.after, 4),
            "threshold": round(self.threshold, 4),
            "threshold_source": self.threshold_source,
            "margin": None if self.margin is None else round(self.margin, 4),
            "cosine_after": None if self.cosine_after is None else round(self.cosine_after, 4),
        }
        if self.metric == "euclidean" and self.after is not None:
            # face_recognition's default reading of the same distance, beside our calibrated threshold.
            record["face_recognition_tolerance"] = FACE_RECOGNITION_TOLERANCE
            record["recognised_at_tolerance"] = bool(self.after < FACE_RECOGNITION_TOLERANCE)
        return record


def decide(after: float, threshold: float, metric: Metric, mode: Mode) -> tuple[Outcome, float]:
    """Protected or recognised, and the margin on the protected side, for one value against its threshold."""
    matched = bool(matches(after, threshold, metric))
    protected = matched if mode == "impersonate" else not matched
    toward_match = after - threshold if metric == "cosine" else threshold - after  # > 0: on the matching side
    margin = toward_match if mode == "impersonate" else -toward_match
    return ("protected" if protected else "recognised"), float(margin)


class FaceJudge:
    """Every judged FR model behind one detector: finds a face again after an edit, embeds it, gives verdicts."""

    def __init__(
        self,
        models: Sequence[FaceEmbedder],
        detector: FaceDetector,
        faces_config: FacesConfig,
        device: torch.device | str = "cpu",
        roles: Mapping[str, Role] | None = None,
    ) -> None:
        self.models = list(models)
        self.detector = detector
        self.faces_config = faces_config
        self.device = torch.device(device)
        self.roles: dict[str, Role] = dict(roles or {m.name: "attacked" for m in self.models})

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces of a photo, largest first, as the run's configuration detects them."""
        return detect_with_config(rgb, self.detector, self.faces_config)

    def locate(self, rgb: np.ndarray, original: Face) -> Face | None:
        """The face of ``rgb`` that is ``original`` found again, or None (a re-detection miss)."""
        return same_face(original, self.detect(rgb))

    @torch.no_grad()
    def embed(self, rgb: np.ndarray, face: Face) -> dict[str, np.ndarray]:
        """Embeddings of one face by every model, each from its own template's crop."""
        return {m.name: self.embed_crop(m, crop_for_template(rgb, face, m.template)) for m in self.models}

    @torch.no_grad()
    def embed_crop(self, model: FaceEmbedder, crop: np.ndarray) -> np.ndarray:
        """One model's embedding of one aligned uint8 crop."""
        tensor = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float().div(255.0)
        return model(tensor.to(self.device))[0].cpu().numpy()

    def verdicts(
        self,
        original: Mapping[str, np.ndarray],
        reference: Mapping[str, np.ndarray],
        after: Mapping[str, np.ndarray] | None,
        thresholds: Mapping[str, Threshold],
        mode: Mode = "dodge",
    ) -> dict[str, Verdict]:
        """Per model: the protected face (``after``; None when not found) against ``reference``, at its threshold."""
        out = {}
        for model in self.models:
            name = model.name
            metric = cast(Metric, model.entry.metric)
            threshold = thresholds[name]
            before = float(compare_rows(original[name], reference[name], metric)[0, 0])
            value = margin = cosine = None
            outcome: Outcome = "no_face_found"
            if after is not None:
                value = float(compare_rows(after[name], reference[name], metric)[0, 0])
                cosine = float(compare_rows(after[name], reference[name], "cosine")[0, 0])
                outcome, margin = decide(value, threshold.value, metric, mode)
            out[name] = Verdict(
                name,
                self.roles[name],
                outcome,
                metric,
                threshold.value,
                threshold.source,
                before,
                value,
                margin,
                cosine,
            )
        return out

    def judge_face(
        self,
        original_rgb: np.ndarray,
        protected_rgb: np.ndarray,
        face: Face,
        thresholds: Mapping[str, Threshold],
        mode: Mode = "dodge",
        target: Mapping[str, np.ndarray] | None = None,
        found: Sequence[Face] | None = None,
    ) -> dict[str, Verdict]:
        """The verdicts of one face: embed it on both photos (re-detected on the protected one) and compare.

        ``found`` passes the faces already detected on the protected photo (one detection for all its faces).
        """
        faces_after = self.detect(protected_rgb) if found is None else found
        match = same_face(face, faces_after)
        original = self.embed(original_rgb, face)
        after = None if match is None else self.embed(protected_rgb, match)
        reference = target if mode == "impersonate" and target is not None else original
        return self.verdicts(original, reference, after, thresholds, mode)


def count_outcomes(verdicts: Iterable[str]) -> dict[str, int]:
    """How many of each outcome, every outcome listed (zero included) so reports show all three."""
    listed = list(verdicts)
    return {outcome: listed.count(outcome) for outcome in OUTCOMES}


def face_outcome(verdicts: Iterable[Mapping[str, Any]]) -> Outcome:
    """One face across several models: protected only if every model says so; a miss outranks recognised."""
    outcomes = [v["verdict"] for v in verdicts]
    if "no_face_found" in outcomes:
        return "no_face_found"
    return "recognised" if "recognised" in outcomes else "protected"
