"""CLIP2Protect for full photos: align → invert → pivot-tune → adversarial latent search, on batches of faces.

:class:`FaceInverter` is stage 1 (the base generator and encoder, loaded once per job); :class:`Protector` adds the
judges and stage 2. Faces go through the stages in batches of up to ``protect.batch_faces`` faces, gathered across
photos by the runner. Every face keeps its own state inside a batch: its own W+ code, noise maps and Adam moments in
the projector, its own generator offsets in pivot tuning (``vmap`` over a stack of per-face offsets), its own latents,
noise and generator in the search, its own random streams and its own early stop. Losses are summed over faces and
Adam is element-wise, so a batch gives what batch-1 runs give, up to float round-off; one Trainer runs each stage per
batch. A face that cannot be aligned fails alone, before the batch is formed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from facecloak.config.compose import to_plain
from facecloak.config.schema import AppConfig
from facecloak.errors import FacecloakError, NoFaceError
from facecloak.faces.align import AlignedFace, align_ffhq, transform_points
from facecloak.faces.detect import Face
from facecloak.faces.landmarks68 import landmarks68
from facecloak.faces.regions import face_region_mask
from facecloak.io.images import Photo
from facecloak.losses.identity import IdentityReference
from facecloak.protect.pipeline import (
    NO_FACE_PRIOR_NOTE,
    STAGE1,
    STAGE2,
    FaceProtection,
    FaceTask,
    PhotoJob,
    PhotoProtector,
    build_generator,
    to_tensor01,
    to_uint8,
)
from facecloak.registry.store import is_available, resolve_one

log = logging.getLogger(__name__)


@dataclass
class AlignedWork:
    """One face prepared for the generator: its FFHQ crop and landmarks in generator pixels."""

    face: Face
    aligned: AlignedFace
    crop01: torch.Tensor
    landmarks5: torch.Tensor
    face_region: np.ndarray | None = None
    """Face area in crop pixels (hull of the 68 landmarks plus forehead): the only part paste-back changes."""


def stage_one_settings(config: AppConfig, base_fingerprint: str, encoder: bool) -> dict[str, Any]:
    """Every setting a face's stage-1 result (pivot and tuned generator) depends on, for its artifact's key."""
    plain = to_plain(config)
    return {
        "pivot": plain["pivot"],
        "generator": plain["generator"],  # weights, shape, inversion choice and the projector's settings
        "faces": plain["faces"],  # detection and alignment decide the crop that is inverted
        "precision": plain["trainer"]["precision"],
        "deterministic": plain["trainer"]["deterministic"],
        "seed": plain["seed"],
        "encoder": encoder,  # "auto" inverts with e4e only when its checkpoint is present
        "base": base_fingerprint,
    }


class FaceInverter(PhotoJob):
    """Stage 1 for full photos: detector, base generator and encoder, loaded once per job."""

    def load_networks(self) -> None:
        """The base generator and the encoder, and the key of every stage-1 setting."""
        from facecloak.stages.artifacts import base_fingerprint, settings_key

        super().load_networks()
        config = self.config
        self.generator, self.latent_avg = build_generator(config.generator)
        self.generator.to(self.device)
        if not config.generator.weights:
            self.notes.append(NO_FACE_PRIOR_NOTE)
        self.encoder = self._encoder()
        self.fingerprint = base_fingerprint(self.generator)
        self.stage_one_key = settings_key(stage_one_settings(config, self.fingerprint, self.encoder is not None))

    def _encoder(self) -> torch.nn.Module | None:
        """e4e when asked for or available for the FFHQ generator; otherwise the optimisation projector."""
        choice = self.config.generator.inversion
        usable = self.config.generator.weights == "stylegan2_ffhq_1024" and is_available("e4e_ffhq_encode")
        if choice == "projector" or (choice == "auto" and not usable):
            return None
        from facecloak.models.e4e import load_e4e_checkpoint

        encoder, _ = load_e4e_checkpoint(resolve_one("e4e_ffhq_encode"))
        return encoder.eval().requires_grad_(False).to(self.device)

    def align(self, photo: Photo, face: Face) -> AlignedWork:
        """FFHQ-align a face at the generator's resolution (68 points), with its 5 landmarks in crop pixels."""
        size = self.generator.config.size
        points68 = landmarks68(photo.rgb, face, self.config.faces.landmarks68)
        aligned = align_ffhq(photo.rgb, points68, size=size)
        landmarks = transform_points(aligned.matrix, face.landmarks5)
        return AlignedWork(
            face,
            aligned,
            to_tensor01(aligned.crop, self.device),
            torch.as_tensor(landmarks, dtype=torch.float32, device=self.device)[None],
            face_region_mask(transform_points(aligned.matrix, points68), (size, size)),
        )

    def invert(self, works: Sequence[AlignedWork]) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Pivots ``[N, n_latent, style_dim]`` of aligned faces (e4e, else one projector run) and its noise maps."""
        from facecloak.inversion.projector import project

        images = torch.cat([work.crop01 for work in works]) * 2 - 1
        if self.encoder is not None:
            with torch.no_grad():
                resized = F.interpolate(images, size=(256, 256), mode="area")
                return self.encoder.encode(resized), None  # type: ignore[operator]
        settings = self.config.generator.projector
        perceptual = self.perceptual(settings.perceptual)
        projection = project(self.generator, images, settings, latent_avg=self.latent_avg, perceptual=perceptual)
        return projection.wplus.detach(), [n.detach() for n in projection.noise]

    def invert_and_tune(self, works: Sequence[AlignedWork], face_ids: Sequence[str]) -> list[Any]:
        """Stage 1 for a batch of faces: resumed from stored artifacts when every face has one, else run together.

        The faces are inverted in one projector run and pivot-tuned in one run (one Trainer), each face with its own
        generator offsets; ``pivot.batch_size`` is the library's chunk size and does not split a job's batch.
        """
        from facecloak.stages.artifacts import StageTwoInputs, load_artifact, save_artifact
        from facecloak.stages.pivot_tuning import tune_images
        from facecloak.stages.tuned_generator import apply_deltas

        artifact_ids = [f"{i}-{self.stage_one_key}" for i in face_ids]  # other settings: other files
        if self.stage_dir is not None:
            try:
                resumed = [load_artifact(self.stage_dir, i, self.generator, self.fingerprint) for i in artifact_ids]
            except FacecloakError:
                pass  # not every face has a complete artifact for these settings: run the stage for all of them
            else:
                log.info("%s: resuming from stage-1 checkpoints (inversion and pivot tuning done)", ", ".join(face_ids))
                return resumed
        # The whole batch reruns, even faces whose artifact exists: the same faces batched the same way give the
        # same bits, so a job killed while writing a batch's artifacts resumes to the uninterrupted run's outputs.
        pivots, noise = self.invert(works)
        results = tune_images(
            self.generator,
            torch.cat([work.crop01 for work in works]) * 2 - 1,
            pivots,
            list(face_ids),
            replace(self.config.pivot, batch_size=len(works)),
            self._trainer_kwargs(),
            noise=noise,
            perceptual=self.perceptual(self.config.pivot.perceptual),
        )
        if self.stage_dir is None or not self.config.protect.keep_stage_checkpoints:
            return [
                StageTwoInputs(r.image_id, r.pivot, r.noise, apply_deltas(self.generator, r.deltas), r.metrics)
                for r in results
            ]
        for result, artifact_id in zip(results, artifact_ids):
            save_artifact(self.stage_dir, replace(result, image_id=artifact_id), self.generator, self.fingerprint)
        return [load_artifact(self.stage_dir, i, self.generator, self.fingerprint) for i in artifact_ids]


class Protector(FaceInverter, PhotoProtector):
    """CLIP2Protect: stage 1's networks (generator, encoder) plus the shared judges, loaded once per job."""

    def load_networks(self) -> None:
        """Stage 1's networks, then the judges (their target embedding uses the aligner)."""
        super().load_networks()
        self._load_judges()

    def embed_target(self, photo: Photo, face: Face) -> dict[str, torch.Tensor]:
        """The target's embeddings on its FFHQ-aligned crop, as the search sees faces."""
        work = self.align(photo, face)
        with torch.no_grad():
            return self.identity.embed(work.crop01, work.landmarks5, self.fr_boxes(work))

    def fr_boxes(self, work: AlignedWork) -> torch.Tensor | None:
        """``fr.preprocess=box``: the detector's box on the aligned crop, as the reference runs MTCNN on it."""
        if self.config.fr.preprocess != "box":
            return None
        from facecloak.faces.box_crop import boxes_tensor, detector_box

        try:
            box = detector_box(work.aligned.crop, self.detector, self.config.faces)
        except NoFaceError:
            # A crop too small for the detector (smoke sizes): the photo's box mapped into the crop, bounded.
            corners = np.array([[face_x, face_y] for face_x in work.face.box[::2] for face_y in work.face.box[1::2]])
            mapped = transform_points(work.aligned.matrix, corners)
            side = float(work.crop01.shape[-1])
            low, high = mapped.min(axis=0).clip(0, side), mapped.max(axis=0).clip(0, side)
            box = (float(low[0]), float(low[1]), float(high[0]), float(high[1]))
        return boxes_tensor([box], self.device)

    # --- per batch of faces ---

    def protect_faces(self, tasks: Sequence[FaceTask]) -> list[FaceProtection | FacecloakError]:
        """Align each face on its own (a face that fails, fails alone), then both stages on batches of faces."""
        outcomes: list[FaceProtection | FacecloakError | None] = [None] * len(tasks)
        ready: list[tuple[int, AlignedWork]] = []
        for index, task in enumerate(tasks):
            try:
                ready.append((index, self.align(task.photo, task.face)))
            except FacecloakError as err:
                outcomes[index] = err
        size = self.config.protect.batch_faces
        for start in range(0, len(ready), size):
            chunk = ready[start : start + size]
            works = [work for _, work in chunk]
            face_ids = [tasks[index].face_id for index, _ in chunk]
            with self.measure_stage(STAGE1):
                stage1 = self.invert_and_tune(works, face_ids)
            with self.measure_stage(STAGE2):
                results = self.search(works, stage1, face_ids)
            for (index, work), tuned, result in zip(chunk, stage1, results):
                outcomes[index] = _protection(work, tuned, result)
        return [outcome for outcome in outcomes if outcome is not None]  # every face has one by now

    def protect_face(self, photo: Photo, face: Face, face_id: str) -> FaceProtection:
        """One face on its own: a batch of one."""
        [outcome] = self.protect_faces([FaceTask(photo, face, face_id)])
        if isinstance(outcome, FacecloakError):
            raise outcome
        return outcome

    def search(self, works: Sequence[AlignedWork], stage1: Sequence[Any], face_ids: Sequence[str]) -> list[Any]:
        """Stage 2 for a batch of faces: one search run, each face on its own tuned generator."""
        from facecloak.stages.latent_search import search_latents

        device = self.device
        boxes = [self.fr_boxes(work) for work in works]
        with torch.no_grad():  # one face at a time, exactly as a batch of one embeds it
            sources = [self.identity.embed(w.crop01, w.landmarks5, b) for w, b in zip(works, boxes)]
        source = {name: torch.cat([s[name] for s in sources]) for name in sources[0]}
        box_batch = None if boxes[0] is None else torch.cat([b for b in boxes if b is not None])
        reference = IdentityReference(source=source, target=self.target, boxes=box_batch)
        thresholds = {m.name: self.thresholds[m.name].value for m in self.attacked}
        search_config = replace(self.config.search, identity_mode=self.config.protect.mode)
        # Delta paste-back: the search judges the real crop plus the render's change, i.e. the shared pixels.
        delta = self.config.protect.paste == "delta"
        anchor = torch.cat([work.crop01 for work in works]) if delta else None
        change_mask = None
        if delta and all(work.face_region is not None for work in works):
            from facecloak.faces.pasteback import feather_mask

            feather = self.config.protect.feather
            weights = [feather_mask(w.face_region.shape, feather, w.face_region) for w in works]  # type: ignore[union-attr]
            change_mask = torch.from_numpy(np.stack(weights))[:, None].to(device)
        return search_latents(
            [s.generator.to(device) for s in stage1],
            torch.stack([s.pivot for s in stage1]).to(device),
            [torch.cat(maps).to(device) for maps in zip(*(s.noise for s in stage1))],
            torch.cat([work.landmarks5 for work in works]),
            list(face_ids),
            self.identity,
            reference,
            thresholds,
            search_config,
            self._trainer_kwargs(),
            anchor=anchor,
            change_mask=change_mask,
            clip_factory=self._clip,
        )

    def _clip(self, config: Any) -> Any:
        """The job's CLIP loss (model and encoded prompts), built for the first face and reused by the others."""
        from facecloak.stages.latent_search_io import load_clip_for

        return self.shared_network(f"clip:{config!r}", lambda: load_clip_for(config))


def _protection(work: AlignedWork, stage1: Any, result: Any) -> FaceProtection:
    """One face's protected crop and its record: stage 1's reconstruction metrics and the search's outcome."""
    return FaceProtection(
        crop=to_uint8(result.image),
        matrix=work.aligned.matrix,
        reference_crop=work.aligned.crop,
        face_region=work.face_region,
        render=to_uint8(result.image),
        record={
            "stage1": stage1.metrics,
            "search": {
                "success_on_render": result.success,
                "stopped_at": result.stopped_at,
                "similarities_before": result.similarities_before,
                "similarities_after": result.similarities_after,
            },
        },
    )
