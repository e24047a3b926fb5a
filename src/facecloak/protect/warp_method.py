"""The landmark-warp protection in the pipeline (``protect.method: warp``): no generative prior needed.

Per face (:meth:`WarpProtector.protect_face`): dlib's 68 landmarks, a ring of fixed anchors around them, and a
square crop holding the ring at the photo's own resolution (shrunk only past ``MAX_CROP_SIDE``). The attack
(:class:`~facecloak.stages.warp_attack.WarpAttack`) optimises the landmark displacements (and make-up) on a
``warp.work_size`` copy of the crop; the field it found, defined in crop-normalised coordinates, is then applied to
the full-resolution crop, which paste-back adds to the photo as a change (zero outside the anchor ring).

The record says how large the geometric change is (largest and mean displacement over the inter-ocular distance)
and how much texture changed beyond the geometry: HaarPSI between the protected face and the original face warped by
the same field, which isolates make-up (and any resampling) from the change of shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from facecloak.faces.align import transform_points, warp_image
from facecloak.faces.detect import Face
from facecloak.faces.landmarks68 import landmarks68
from facecloak.faces.regions import face_region_mask
from facecloak.faces.warp_field import anchor_ring, apply_field, displacement_stats, inter_ocular, normalise_points
from facecloak.io.images import Photo
from facecloak.losses.expression import ExpressionObjective
from facecloak.losses.identity import IdentityReference
from facecloak.protect.pipeline import FaceProtection, PhotoProtector, to_tensor01, to_uint8
from facecloak.verify.quality import haarpsi

if TYPE_CHECKING:  # the stage (Lightning) is imported where it runs
    from facecloak.stages.warp_attack import WarpAttack, WarpFace

MAX_CROP_SIDE = 1536
"""Largest side of the full-resolution face crop; larger faces are cut at this size (the field is smooth anyway)."""


class FaceCut:
    """A square crop around one face's anchor ring, and the face's points in it."""

    def __init__(self, rgb: np.ndarray, face: Face, margin_iod: float, crop_margin: float, source: str) -> None:
        landmarks = landmarks68(rgb, face, source)
        ring = anchor_ring(landmarks, margin_iod * inter_ocular(landmarks))
        low, high = ring.min(axis=0), ring.max(axis=0)
        side = float((high - low).max()) * (1.0 + 2.0 * crop_margin)
        self.size = int(min(MAX_CROP_SIDE, np.ceil(side)))
        zoom = self.size / side
        centre = (low + high) / 2.0
        # A pure scale and shift (no resampling at all when zoom is 1 and the shift is whole pixels).
        shift = (
            np.round((self.size - 1) / 2.0 - zoom * centre) if zoom == 1.0 else (self.size - 1) / 2.0 - zoom * centre
        )
        self.matrix = np.array([[zoom, 0.0, shift[0]], [0.0, zoom, shift[1]]])
        self.crop = warp_image(rgb, self.matrix, (self.size, self.size), interpolation="bilinear", border="reflect")
        self.landmarks68 = transform_points(self.matrix, landmarks)
        self.landmarks5 = transform_points(self.matrix, face.landmarks5)
        self.anchors = normalise_points(transform_points(self.matrix, ring), (self.size, self.size))
        box = transform_points(self.matrix, np.array(face.box, np.float64).reshape(2, 2))
        self.face_box = tuple(int(v) for v in np.clip(np.round(box.reshape(-1)), 0, self.size))


class WarpProtector(PhotoProtector):
    """Landmark warp (and make-up): the expression model when asked for, plus the shared judges, loaded once."""

    def load_networks(self) -> None:
        """The expression model when asked for, then the judges."""
        super().load_networks()
        self.settings = self.config.warp
        self.expression = ExpressionObjective(self.settings.expression) if self.settings.expression else None
        self._load_judges()

    def _cut(self, photo: Photo, face: Face) -> tuple[FaceCut, WarpFace, torch.Tensor]:
        from facecloak.stages.warp_attack import prepare_face

        cut = FaceCut(
            photo.rgb, face, self.settings.anchor_margin, self.settings.crop_margin, self.config.faces.landmarks68
        )
        crop01 = to_tensor01(cut.crop)
        return cut, prepare_face(crop01, cut.landmarks68, cut.landmarks5, cut.anchors, self.settings), crop01

    def embed_target(self, photo: Photo, face: Face) -> dict[str, torch.Tensor]:
        """The target's embeddings on the same kind of working crop as the user's faces."""
        _, prepared, _ = self._cut(photo, face)
        with torch.no_grad():
            return self.identity.embed(prepared.work.image01.to(self.device), prepared.landmarks5.to(self.device))

    def protect_face(self, photo: Photo, face: Face, face_id: str) -> FaceProtection:
        """Optimise the face's warp on the working crop, then apply it at full resolution."""
        from facecloak.stages.warp_attack import WarpAttack, face_geometry, fit_warp_attack

        cut, prepared, crop01 = self._cut(photo, face)
        with torch.no_grad():
            source = self.identity.embed(prepared.work.image01.to(self.device), prepared.landmarks5.to(self.device))
        module = WarpAttack(
            prepared,
            face_id,
            self.identity,
            IdentityReference(source=source, target=self.target),
            {m.name: self.thresholds[m.name].value for m in self.attacked},
            self.settings,
            self.expression,
        )
        fit_warp_attack(module, self._trainer_kwargs())
        module.to("cpu").eval()  # Lightning hands the module back on the CPU after fitting on a GPU
        full = face_geometry(crop01, prepared.landmarks.numpy()[0], cut.anchors, prepared.iod, self.settings)
        with torch.no_grad():
            protected, field = module.edit(full)
        return FaceProtection(
            crop=to_uint8(protected[0]),
            matrix=cut.matrix,
            reference_crop=cut.crop,
            face_region=None,  # the field and make-up are exactly zero beyond the anchor ring
            record={"warp": self._record(module, cut, crop01, protected, field, full.support)},
        )

    @torch.no_grad()
    def _record(
        self,
        module: WarpAttack,
        cut: FaceCut,
        original: torch.Tensor,
        protected: torch.Tensor,
        field: torch.Tensor,
        support: torch.Tensor,
    ) -> dict[str, Any]:
        """Size of the geometric change, texture change beyond it, the make-up chosen, and the attack's outcome."""
        size = (cut.size, cut.size)
        region = torch.from_numpy(face_region_mask(cut.landmarks68, size)).float()
        left, top, right, bottom = cut.face_box
        face = (slice(None), slice(None), slice(top, bottom), slice(left, right))
        warped_original = apply_field(original, field, support)
        record: dict[str, Any] = {
            "steps": module.config.steps,
            "stopped_at": module.stopped_at,
            "success_on_crop": module.success,
            "crop_size": cut.size,
            "displacement": displacement_stats(field, size, inter_ocular(cut.landmarks68), region),
            "landmark_max_over_iod": round(float(module.displacement().norm(dim=-1).max()) / module.face.iod, 4),
            "texture_haarpsi": round(float(haarpsi(warped_original[face], protected[face])), 4),
            "face_haarpsi": round(float(haarpsi(original[face], protected[face])), 4),
            "similarities_before": module.similarities_before,
            "similarities_after": module.similarities_after,
        }
        if module.config.regions:
            colours, opacity = module.makeup()
            record["makeup"] = {
                region: {"lab": [round(float(v), 1) for v in colours[0, i]], "opacity": round(float(opacity[0, i]), 3)}
                for i, region in enumerate(module.config.regions)
            }
        return record
