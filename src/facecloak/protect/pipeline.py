"""`facecloak protect`: detect → protect each face → paste back → save → judge the saved file → record.

The per-photo flow is shared by every protection method (:class:`PhotoProtector`): each detected face goes through
the method's :meth:`~PhotoProtector.protect_face` hook, which returns a protected crop and how it was cut; the crop is
pasted back into the original full photo, which is then saved without metadata and judged again *from the saved
file* by every attacked and held-out face-recognition model, so the numbers in the record describe exactly what the
user shares.

Photos go through in batches (:meth:`PhotoProtector.protect_photos`): each is read and searched for faces on its
own, the faces of the whole batch go to the method's :meth:`~PhotoProtector.protect_faces` together (CLIP2Protect
runs them through its stages as batches, ``protect.batch_faces``), and each photo is then pasted back, written,
judged and recorded on its own, so one photo's failure never costs its batch-mates theirs.

CLIP2Protect (:class:`facecloak.protect.clip2protect.Protector`) is one such method: align → invert → pivot-tune →
adversarial latent search, with a fresh generator state and optimizer per face. MAP lives in
:mod:`facecloak.protect.map_method`, the landmark warp in :mod:`facecloak.protect.warp_method`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch

from facecloak.config.compose import resolve_data_path
from facecloak.config.schema import AppConfig, GeneratorSettings
from facecloak.errors import FacecloakError, NoFaceError
from facecloak.faces.crops import detect_with_config, detector_from_config
from facecloak.faces.detect import Face
from facecloak.faces.pasteback import paste_back
from facecloak.io.images import Photo, load_photo, save_image, save_png
from facecloak.losses.identity import AdversarialIdentityLoss, Mode
from facecloak.models.fr.zoo import FaceEmbedder, load_fr_model
from facecloak.models.stylegan2 import Generator, GeneratorConfig, load_stylegan2_checkpoint
from facecloak.protect.report import face_notes, side_by_side, small_photo_hint
from facecloak.registry.store import resolve_one
from facecloak.verify.judge import FaceJudge, Role
from facecloak.verify.thresholds import Threshold, build_threshold_table

log = logging.getLogger(__name__)
T = TypeVar("T")

NO_FACE_PRIOR_NOTE = (
    "generator without pretrained weights: it has no face prior, so naturalness comes only from pivot tuning "
    "and paste-back; use the FFHQ checkpoint (facecloak weights fetch stylegan2_ffhq_1024) for the paper's method"
)
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
class FaceTask:
    """One detected face to protect: the photo it is in (its working copy) and the id of its resumable state."""

    photo: Photo
    face: Face
    face_id: str


@dataclass
class PreparedPhoto:
    """A photo read and searched for faces, waiting for its faces' protections to be pasted back."""

    path: Path
    image_id: str
    full: Photo
    photo: Photo
    """The working copy the networks see (``full`` itself unless the photo is huge)."""
    faces: list[Face]
    found: int
    """Faces detected, before ``protect.max_faces``."""
    seconds: float
    """Time spent on this photo so far (its share of a batch's stage runs included once they ran)."""


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

    # --- per batch of faces ---

    def protect_faces(self, tasks: Sequence[FaceTask]) -> list[FaceProtection | FacecloakError]:
        """Every face of a batch of photos, in order; a face's own error is its outcome (default: one at a time)."""
        outcomes: list[FaceProtection | FacecloakError] = []
        for task in tasks:
            try:
                outcomes.append(self.protect_face(task.photo, task.face, task.face_id))
            except FacecloakError as err:
                outcomes.append(err)
        return outcomes

    # --- per photo ---

    def protect_photo(self, path: Path, image_id: str, out_dir: Path) -> dict[str, Any]:
        """Protect every face of one photo and write the protected photo, a before/after image and a record."""
        [outcome] = self.protect_photos([(path, image_id)], out_dir)
        if isinstance(outcome, FacecloakError):
            raise outcome
        return outcome

    def protect_photos(
        self, photos: Sequence[tuple[Path, str]], out_dir: Path
    ) -> list[dict[str, Any] | FacecloakError]:
        """Protect several photos, their faces batched through the method's stages; each photo succeeds or fails alone.

        A photo that cannot be read or shows no face, or whose face cannot be prepared, fails without its batch-mates;
        an error of a batched stage run is every photo's of that batch. Returns each photo's record or error.
        """
        outcomes: dict[str, dict[str, Any] | FacecloakError] = {}
        prepared: list[PreparedPhoto] = []
        for path, image_id in photos:
            try:
                prepared.append(self._prepare(path, image_id))
            except FacecloakError as err:
                outcomes[image_id] = err
        tasks = [FaceTask(p.photo, f, f"{p.image_id}_face{i}") for p in prepared for i, f in enumerate(p.faces)]
        started = time.perf_counter()
        try:
            protections = self.protect_faces(tasks)
        except FacecloakError as err:
            protections = [err] * len(tasks)
        per_face = (time.perf_counter() - started) / max(1, len(tasks))  # the batch's stage time, shared by its faces
        for item in prepared:
            results, protections = protections[: len(item.faces)], protections[len(item.faces) :]
            item.seconds += per_face * len(item.faces)
            try:
                outcomes[item.image_id] = self._finish(item, results, out_dir)
            except FacecloakError as err:
                outcomes[item.image_id] = err
        return [outcomes[image_id] for _, image_id in photos]

    def _prepare(self, path: Path, image_id: str) -> PreparedPhoto:
        """Load a photo (a working copy of a huge one) and find its faces, before any face is protected."""
        from facecloak.protect.fullsize import working_copy

        started = time.perf_counter()
        full = load_photo(path, max_side=None, max_pixels=self.config.faces.max_pixels)
        photo = working_copy(full)  # networks see at most DEFAULT_MAX_SIDE; the output keeps the full size
        found = detect_with_config(photo.rgb, self.detector, self.config.faces)
        faces = found[: self.config.protect.max_faces]
        if not faces:
            raise NoFaceError(f"no face detected in {path}{small_photo_hint(photo, self.config.faces.min_face_size)}")
        return PreparedPhoto(path, image_id, full, photo, faces, len(found), time.perf_counter() - started)

    def _finish(
        self, item: PreparedPhoto, results: Sequence[FaceProtection | FacecloakError], out_dir: Path
    ) -> dict[str, Any]:
        """Paste every face's change back, write the outputs, judge the saved file and write the photo's record."""
        from facecloak.protect.fullsize import keep_grey, paste_change_full, scale_face

        for result in results:
            if isinstance(result, FacecloakError):
                raise result
        started = time.perf_counter()
        full, photo, faces = item.full, item.photo, item.faces
        protected = photo.rgb
        face_records = []
        renders: dict[str, np.ndarray] = {}
        for index, result in enumerate(cast(Sequence[FaceProtection], results)):
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
        image_id = item.image_id
        outputs = self._write_outputs(full, protected, image_id, out_dir)
        for key, render in renders.items():
            outputs[key] = save_png(out_dir / f"{image_id}_{key.removeprefix('render_')}_render.png", render)
        # judge exactly what was written
        judged = load_photo(outputs["photo"], max_side=None, max_pixels=self.config.faces.max_pixels)
        self._judge(full, judged.rgb, faces, face_records)
        for face, face_record in zip(faces, face_records):
            self.judge_face(full, judged.rgb, face, face_record)
        record = {
            "image_id": image_id,
            "source": str(item.path),
            "notes": notes + face_notes(faces, item.found, self.config.protect.max_faces) + self.notes,
            "faces_found": item.found,
            "faces": face_records,
            "outputs": {k: str(v) for k, v in outputs.items()},
            "seconds": round(item.seconds + time.perf_counter() - started, 2),
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


def _unmeasured(stage: str) -> AbstractContextManager[Any]:
    return nullcontext()
