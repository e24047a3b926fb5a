"""`facecloak protect`: detect → protect each face → paste back → save → judge the saved file → record.

The per-photo flow is shared by every protection method (:class:`PhotoProtector`): each detected face goes through
the method's :meth:`~PhotoProtector.protect_face` hook, which returns a protected crop and how it was cut; the crop is
pasted back into the original full photo, which is then saved without metadata and judged again *from the saved
file* by every attacked and held-out face-recognition model, so the numbers in the record describe exactly what the
user shares.

CLIP2Protect (:class:`Protector`) is one such method: align → invert → pivot-tune → adversarial latent search, with a
fresh generator state and optimizer per face. MAP lives in :mod:`facecloak.protect.map_method`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch
import torch.nn.functional as F

from facecloak.config.compose import resolve_data_path, to_plain
from facecloak.config.schema import AppConfig, GeneratorSettings
from facecloak.errors import FacecloakError, NoFaceError
from facecloak.faces.align import AlignedFace, align_ffhq, transform_points
from facecloak.faces.crops import detect_with_config, detector_from_config
from facecloak.faces.detect import Face
from facecloak.faces.landmarks68 import landmarks68
from facecloak.faces.pasteback import paste_back
from facecloak.faces.regions import face_region_mask
from facecloak.io.images import Photo, load_photo, save_image, save_png
from facecloak.losses.identity import AdversarialIdentityLoss, IdentityReference, Mode
from facecloak.models.fr.zoo import FaceEmbedder, load_fr_model
from facecloak.models.stylegan2 import Generator, GeneratorConfig, load_stylegan2_checkpoint
from facecloak.registry.store import is_available, resolve_one
from facecloak.verify.judge import FaceJudge, Role
from facecloak.verify.thresholds import Threshold, build_threshold_table

log = logging.getLogger(__name__)
T = TypeVar("T")

NO_FACE_PRIOR_NOTE = (
    "generator without pretrained weights: it has no face prior, so naturalness comes only from pivot tuning "
    "and paste-back; use the FFHQ checkpoint (facecloak weights fetch stylegan2_ffhq_1024) for the paper's method"
)
SIDE_BY_SIDE_HEIGHT = 512
STAGE1 = "stage1_invert_tune"
STAGE2 = "stage2_search"
"""CLIP2Protect's two stages per face, as :attr:`PhotoJob.measure_stage` names them to whoever measures them."""
SMOKE_NOTE = "scale=smoke: a tiny run that checks the code path; these verdicts are not results"


def image_id_for(path: Path) -> str:
    """A stable, file-name-safe id for a photo: its stem plus a short hash of its resolved path."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)[:48]
    return f"{stem}-{digest}"


def build_generator(settings: GeneratorSettings) -> tuple[Generator, torch.Tensor | None]:
    """The base StyleGAN2: the registry checkpoint, or a seeded random init of the configured shape."""
    if settings.weights is not None:
        generator, latent_avg = load_stylegan2_checkpoint(resolve_one(settings.weights))
        return generator.eval().requires_grad_(False), latent_avg
    config = GeneratorConfig(
        settings.size, settings.style_dim, settings.n_mlp, settings.channel_base, settings.channel_max
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.init_seed)
        generator = Generator(config)
        with torch.no_grad():
            for name, parameter in generator.named_parameters():
                if name.endswith("noise.weight"):
                    parameter.fill_(settings.init_noise_strength)
    return generator.eval().requires_grad_(False), None


def to_tensor01(rgb: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 HWC → float [1, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div(255.0).to(device)


def to_uint8(image01: torch.Tensor) -> np.ndarray:
    """Float [3, H, W] in [0, 1] → uint8 HWC (the only quantisation, right before saving)."""
    return (image01.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


@dataclass
class AlignedWork:
    """One face prepared for the generator: its FFHQ crop and landmarks in generator pixels."""

    face: Face
    aligned: AlignedFace
    crop01: torch.Tensor
    landmarks5: torch.Tensor
    face_region: np.ndarray | None = None
    """Face area in crop pixels (hull of the 68 landmarks plus forehead): the only part paste-back changes."""


@dataclass
class FaceProtection:
    """What a method returns for one face: the protected crop, how it was cut from the photo, and its record."""

    crop: np.ndarray
    """Protected crop, uint8 H×W×3 RGB."""
    matrix: np.ndarray
    """Photo → crop affine matrix (2×3) the crop was cut with."""
    reference_crop: np.ndarray
    """The crop as cut before protection (uint8): delta paste-back adds ``crop − reference_crop`` to the photo."""
    face_region: np.ndarray | None
    """Face area in crop pixels (0/1): the only part paste-back changes; None: the whole crop."""
    record: dict[str, Any]
    """Method-specific entries of the face's record (stage metrics, similarities on the render, …)."""
    render: np.ndarray | None = None
    """The raw protected render (uint8), written when ``protect.save_render`` (CLIP2Protect's own result)."""


class PhotoJob:
    """What every per-photo job loads once: its config, the face detector, and how its stages build Trainers."""

    def __init__(
        self,
        config: AppConfig,
        stage_dir: Path | None = None,
        logger: Any = None,
        callbacks: list[Any] | None = None,
    ) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.stage_dir = stage_dir
        self.logger = logger
        self.callbacks = list(callbacks or [])
        self.detector = detector_from_config(config.faces, config.device)
        self.notes: list[str] = []  # caveats every record of the job carries (e.g. networks without weights)
        # Wraps each stage a method runs (STAGE1, STAGE2); evaluate's cost meter replaces it to time them.
        self.measure_stage: Callable[[str], AbstractContextManager[Any]] = _unmeasured
        self._networks: dict[str, Any] = {}
        self.load_networks()

    def load_networks(self) -> None:
        """Load what the job's stages need, once per job; methods extend it (their networks, then the judges)."""

    def shared_network(self, key: str, build: Callable[[], T]) -> T:
        """A frozen network built once per job (VGG/LPIPS, CLIP and its encoded prompts), reused by every face."""
        if key not in self._networks:
            self._networks[key] = build()
        return cast(T, self._networks[key])

    def perceptual(self, kind: str) -> torch.nn.Module:
        """The job's perceptual distance of one kind, shared by the projector and pivot tuning."""
        from facecloak.losses.perceptual import build_perceptual

        return self.shared_network(f"perceptual:{kind}", lambda: build_perceptual(kind).to(self.device))

    def faces_of(self, photo: Photo) -> list[Face]:
        """Every face of a photo (up to ``protect.max_faces``), largest first."""
        return detect_with_config(photo.rgb, self.detector, self.config.faces)[: self.config.protect.max_faces]

    def _trainer_kwargs(self) -> dict[str, Any]:
        """The user's ``trainer`` settings for this job's stages, one device per photo (:mod:`facecloak.stages.fit`)."""
        from facecloak.stages.fit import job_trainer_kwargs

        return job_trainer_kwargs(self.config.trainer, self.device, self.logger, self.callbacks)


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

    def invert(self, work: AlignedWork) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """The pivot W+ of one aligned face (e4e, else the projector) and, from the projector, its noise maps."""
        from facecloak.inversion.projector import project

        image = work.crop01 * 2 - 1
        if self.encoder is not None:
            with torch.no_grad():
                resized = F.interpolate(image, size=(256, 256), mode="area")
                return self.encoder.encode(resized), None  # type: ignore[operator]
        settings = self.config.generator.projector
        perceptual = self.perceptual(settings.perceptual)
        projection = project(self.generator, image, settings, latent_avg=self.latent_avg, perceptual=perceptual)
        return projection.wplus.detach(), [n.detach() for n in projection.noise]

    def invert_and_tune(self, work: AlignedWork, face_id: str) -> Any:
        """Stage 1 for one face: pivot (e4e or projector) and pivot tuning; resumes from a stored artifact."""
        from facecloak.stages.artifacts import StageTwoInputs, load_artifact, save_artifact
        from facecloak.stages.pivot_tuning import tune_images
        from facecloak.stages.tuned_generator import apply_deltas

        artifact_id = f"{face_id}-{self.stage_one_key}"  # another pivot/generator/alignment setting: another file
        if self.stage_dir is not None:
            try:
                resumed = load_artifact(self.stage_dir, artifact_id, self.generator, self.fingerprint)
            except FacecloakError:
                pass  # no complete artifact for these settings yet: run the stage
            else:
                log.info("%s: resuming from its stage-1 checkpoint (inversion and pivot tuning done)", face_id)
                return resumed
        pivot, noise = self.invert(work)
        [result] = tune_images(
            self.generator,
            work.crop01 * 2 - 1,
            pivot,
            [face_id],
            self.config.pivot,
            self._trainer_kwargs(),
            noise=noise,
            perceptual=self.perceptual(self.config.pivot.perceptual),
        )
        if self.stage_dir is not None and self.config.protect.keep_stage_checkpoints:
            save_artifact(self.stage_dir, replace(result, image_id=artifact_id), self.generator, self.fingerprint)
            return load_artifact(self.stage_dir, artifact_id, self.generator, self.fingerprint)
        return StageTwoInputs(
            face_id, result.pivot, result.noise, apply_deltas(self.generator, result.deltas), result.metrics
        )


class PhotoProtector(PhotoJob, ABC):
    """The per-photo flow every protection method shares; a method implements :meth:`protect_face`.

    A method loads its own networks first, then calls :meth:`_load_judges` (FR models, thresholds and, when
    impersonating, the target, whose embedding for the attack goes through the method's :meth:`embed_target`).
    """

    attacked: list[FaceEmbedder]
    held_out: list[FaceEmbedder]
    identity: AdversarialIdentityLoss
    thresholds: dict[str, Threshold]
    judge: FaceJudge
    target: dict[str, torch.Tensor] | None

    def _load_judges(self) -> None:
        """FR models (attacked and held out), their thresholds, the identity loss, and the target if any."""
        config = self.config
        self.attacked = [load_fr_model(n, config.device) for n in config.fr.attacked]
        self.held_out = [load_fr_model(n, config.device) for n in config.fr.held_out]
        self.identity = AdversarialIdentityLoss(
            self.attacked,
            cast(Mode, config.protect.mode),
            reduce=config.search.ensemble_reduce,
            dodge_objective=config.search.dodge_objective,
            preprocess=config.fr.preprocess,
        )
        roles: dict[str, Role] = {m.name: "attacked" for m in self.attacked}
        roles.update({m.name: "held_out" for m in self.held_out})
        self.judge = FaceJudge(self.all_models, self.detector, config.faces, config.device, roles)
        table = build_threshold_table(
            [m.name for m in self.all_models],
            resolve_data_path(config.fr.calibration),
            prefer=cast(Any, config.fr.threshold_source),
        )
        self.thresholds = {m.name: table.get(m.name, config.protect.far, m.entry.metric) for m in self.all_models}
        needs_target = config.protect.mode == "impersonate" or self.identity.dodge_toward_target
        self.target = self._target_embeddings() if needs_target else None

    def _target_embeddings(self) -> dict[str, torch.Tensor]:
        assert self.config.protect.target is not None
        photo = load_photo(self.config.protect.target, max_pixels=self.config.faces.max_pixels)
        faces = detect_with_config(photo.rgb, self.detector, self.config.faces)
        if not faces:
            raise NoFaceError(f"no face found in the target photo {self.config.protect.target}")
        embedded = self.embed_target(photo, faces[0])
        self.target_judged = self.judge.embed(photo.rgb, faces[0])  # the target as the judge sees it
        return embedded

    @property
    def all_models(self) -> list[FaceEmbedder]:
        """Attacked then held-out models."""
        return self.attacked + self.held_out

    # --- the method's hooks ---

    @abstractmethod
    def embed_target(self, photo: Photo, face: Face) -> dict[str, torch.Tensor]:
        """The target's embeddings under the attacked models, from the kind of crop this method protects."""

    @abstractmethod
    def protect_face(self, photo: Photo, face: Face, face_id: str) -> FaceProtection:
        """Protect one detected face of ``photo``; ``face_id`` names its resumable stage state."""

    def judge_face(self, original: Photo, saved_rgb: np.ndarray, face: Face, record: dict[str, Any]) -> None:
        """Method-specific measurements of one face on the saved photo, added to its record (default: none)."""

    # --- per photo ---

    def protect_photo(self, path: Path, image_id: str, out_dir: Path) -> dict[str, Any]:
        """Protect every face of one photo and write the protected photo, a before/after image and a record."""
        from facecloak.protect.fullsize import keep_grey, paste_change_full, scale_face, working_copy

        started = time.perf_counter()
        full = load_photo(path, max_side=None, max_pixels=self.config.faces.max_pixels)
        photo = working_copy(full)  # networks see at most DEFAULT_MAX_SIDE; the output keeps the full size
        found = detect_with_config(photo.rgb, self.detector, self.config.faces)
        faces = found[: self.config.protect.max_faces]
        if not faces:
            raise NoFaceError(f"no face detected in {path}{_small_photo_hint(photo, self.config.faces.min_face_size)}")
        protected = photo.rgb
        face_records = []
        renders: dict[str, np.ndarray] = {}
        for index, face in enumerate(faces):
            result = self.protect_face(photo, face, f"{image_id}_face{index}")
            if self.config.protect.save_render and result.render is not None:
                renders[f"render_face{index}"] = result.render
            protected = paste_back(
                protected,
                result.crop,
                result.matrix,
                self.config.protect.feather,
                reference_crop=result.reference_crop,
                mask=result.face_region,
                mode=self.config.protect.paste,
            )
            face_records.append({"face": index, **result.record})
        protected = keep_grey(full.rgb, paste_change_full(full.rgb, photo.rgb, protected))
        faces = [scale_face(f, full.size[1] / photo.size[1]) for f in faces] if photo is not full else faces
        for face, face_record in zip(faces, face_records):
            face_record["box"] = [round(float(v), 1) for v in face.box]
        notes = list(photo.notes)  # the working copy's: says when the photo was protected at a smaller size
        photo = full
        outputs = self._write_outputs(photo, protected, image_id, out_dir)
        for key, render in renders.items():
            outputs[key] = save_png(out_dir / f"{image_id}_{key.removeprefix('render_')}_render.png", render)
        # judge exactly what was written
        judged = load_photo(outputs["photo"], max_side=None, max_pixels=self.config.faces.max_pixels)
        self._judge(photo, judged.rgb, faces, face_records)
        for face, face_record in zip(faces, face_records):
            self.judge_face(photo, judged.rgb, face, face_record)
        record = {
            "image_id": image_id,
            "source": str(path),
            "notes": notes + face_notes(faces, len(found), self.config.protect.max_faces) + self.notes,
            "faces_found": len(found),
            "faces": face_records,
            "outputs": {k: str(v) for k, v in outputs.items()},
            "seconds": round(time.perf_counter() - started, 2),
            "thresholds": {
                m: {"far": self.config.protect.far, "value": t.value, "source": t.source, "metric": t.metric}
                for m, t in self.thresholds.items()
            },
        }
        if self.config.smoke:
            record["smoke"] = SMOKE_NOTE
        from facecloak.protect.job import write_json_atomic

        write_json_atomic(out_dir / f"{image_id}.json", record)
        return record

    def _write_outputs(self, photo: Photo, protected: np.ndarray, image_id: str, out_dir: Path) -> dict[str, Path]:
        settings = self.config.protect
        suffix = ".png" if settings.output_format == "png" else ".jpg"
        photo_path = save_image(out_dir / f"{image_id}{suffix}", protected, jpeg_quality=settings.jpeg_quality)
        side = save_png(out_dir / f"{image_id}_before_after.png", side_by_side(photo.rgb, protected))
        return {"photo": photo_path, "before_after": side}

    def _judge(self, photo: Photo, protected: np.ndarray, faces: list[Face], records: list[dict]) -> None:
        """Every model's verdict per face, measured on the saved photo, against the user (or the target)."""
        found = self.judge.detect(protected)
        mode = cast(Mode, self.config.protect.mode)
        target = getattr(self, "target_judged", None)
        for face, record in zip(faces, records):
            verdicts = self.judge.judge_face(photo.rgb, protected, face, self.thresholds, mode, target, found)
            record["fr"] = {name: verdict.to_record() for name, verdict in verdicts.items()}


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

    # --- per face ---

    def protect_face(self, photo: Photo, face: Face, face_id: str) -> FaceProtection:
        """Align, invert and pivot-tune (stage 1), then the adversarial latent search (stage 2)."""
        work = self.align(photo, face)
        with self.measure_stage(STAGE1):
            stage1 = self.invert_and_tune(work, face_id)
        with self.measure_stage(STAGE2):
            result = self.search(work, stage1, face_id)
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

    def search(self, work: AlignedWork, stage1: Any, face_id: str) -> Any:
        """Stage 2 for one face: the adversarial latent search on its tuned generator."""
        from facecloak.stages.latent_search import search_latents

        tuned = stage1.generator.to(self.device)
        pivot = stage1.pivot[None].to(self.device)
        noise = [n.to(self.device) for n in stage1.noise]
        boxes = self.fr_boxes(work)
        with torch.no_grad():
            source = self.identity.embed(work.crop01, work.landmarks5, boxes)
        reference = IdentityReference(source=source, target=self.target, boxes=boxes)
        thresholds = {m.name: self.thresholds[m.name].value for m in self.attacked}
        search_config = replace(self.config.search, identity_mode=self.config.protect.mode)
        # Delta paste-back: the search judges the real crop plus the render's change, i.e. the shared pixels.
        anchor = work.crop01 if self.config.protect.paste == "delta" else None
        change_mask = None
        if anchor is not None and work.face_region is not None:
            from facecloak.faces.pasteback import feather_mask

            weights = feather_mask(work.face_region.shape, self.config.protect.feather, work.face_region)
            change_mask = torch.from_numpy(weights)[None, None].to(self.device)
        [result] = search_latents(
            tuned,
            pivot,
            noise,
            work.landmarks5,
            [face_id],
            self.identity,
            reference,
            thresholds,
            search_config,
            self._trainer_kwargs(),
            anchor=anchor,
            change_mask=change_mask,
            clip_factory=self._clip,
        )
        return result

    def _clip(self, config: Any) -> Any:
        """The job's CLIP loss (model and encoded prompts), built for the first face and reused by the others."""
        from facecloak.stages.latent_search_io import load_clip_for

        return self.shared_network(f"clip:{config!r}", lambda: load_clip_for(config))


JUDGEABLE_FACE_SIDE = 32
"""Face-recognition models look at 112-160 px crops; a face under this many pixels a side is mostly upsampling
blur to them, so similarities measured on it say little about how it would fare at a readable size."""


def face_notes(faces: list[Face], found: int, max_faces: int) -> list[str]:
    """Notes about the faces: ones left unprotected by ``protect.max_faces``, ones too small to judge."""
    notes = []
    if found > len(faces):
        notes.append(f"{found} faces found, only the {max_faces} largest protected (raise protect.max_faces)")
    for index, face in enumerate(faces):
        side = min(face.width, face.box[3] - face.box[1])
        if side < JUDGEABLE_FACE_SIDE:
            notes.append(
                f"face {index} is {side:.0f} px, below the {JUDGEABLE_FACE_SIDE} px where protection can be judged: "
                "its verdicts are unreliable"
            )
    return notes


def _small_photo_hint(photo: Photo, min_face_size: int) -> str:
    """Why a small photo may show no face: the detector skips faces under ``faces.min_face_size`` pixels."""
    if min(photo.size) >= 4 * min_face_size:
        return ""
    return (
        f" (a {photo.size[1]}×{photo.size[0]} photo: faces under faces.min_face_size={min_face_size} px are not "
        "searched; protection cannot be judged on faces that small)"
    )


def _embed(model: FaceEmbedder, crop: np.ndarray, device: torch.device) -> torch.Tensor:
    with torch.no_grad():
        return model(to_tensor01(crop, device))[0]


def _unmeasured(stage: str) -> AbstractContextManager[Any]:
    return nullcontext()


def side_by_side(before: np.ndarray, after: np.ndarray, height: int = SIDE_BY_SIDE_HEIGHT) -> np.ndarray:
    """Original and protected photo next to each other, scaled to a common height."""
    import cv2

    scale = min(1.0, height / before.shape[0])
    size = (max(1, round(before.shape[1] * scale)), max(1, round(before.shape[0] * scale)))
    left = cv2.resize(before, size, interpolation=cv2.INTER_AREA)
    right = cv2.resize(after, size, interpolation=cv2.INTER_AREA)
    gap = np.full((size[1], 8, 3), 255, np.uint8)
    return np.concatenate([left, gap, right], axis=1)
