"""``facecloak invert`` and ``facecloak tune``: CLIP2Protect's stage 1 on its own, for full photos or aligned faces."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from facecloak.config.compose import compose
from facecloak.errors import FacecloakError, NoFaceError
from facecloak.faces.align import AlignedFace
from facecloak.io.images import load_photo, save_png


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by invert and tune."""
    parser.add_argument("photos", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--aligned",
        action="store_true",
        help="the inputs are already FFHQ-aligned crops (no detection; resized to the generator)",
    )


def _works(inverter, path: Path, aligned: bool) -> list[tuple[str, object]]:
    """(face id, AlignedWork) for every face of a photo, or the aligned crop itself."""
    import cv2

    from facecloak.protect.clip2protect import AlignedWork
    from facecloak.protect.pipeline import image_id_for, to_tensor01

    photo = load_photo(path)
    image_id = image_id_for(path)
    if aligned:
        size = inverter.generator.config.size
        crop = cv2.resize(photo.rgb, (size, size), interpolation=cv2.INTER_AREA)
        face = AlignedFace(crop=crop, matrix=np.eye(3)[:2], template=f"ffhq_{size}")
        return [(image_id, AlignedWork(None, face, to_tensor01(crop, inverter.device), torch.zeros(1, 5, 2)))]  # type: ignore[arg-type]
    faces = inverter.faces_of(photo)
    if not faces:
        raise NoFaceError(f"no face detected in {path}")
    return [(f"{image_id}_face{i}", inverter.align(photo, face)) for i, face in enumerate(faces)]


def _render(generator, pivot: torch.Tensor, noise: list[torch.Tensor] | None) -> np.ndarray:
    from facecloak.protect.pipeline import to_uint8

    with torch.no_grad():
        image = generator.synthesis(pivot.reshape(1, *pivot.shape[-2:]), noise)
    return to_uint8(((image[0] + 1) / 2).clamp(0, 1))


def run_invert(args: argparse.Namespace, overrides: list[str]) -> int:
    """Write each face's pivot W+ (and projector noise) as safetensors plus the reconstruction."""
    from facecloak.protect.clip2protect import FaceInverter

    inverter = FaceInverter(compose(overrides))
    args.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in args.photos:
        try:
            works = _works(inverter, path, args.aligned)
            pivots, noises = inverter.invert([work for _, work in works])  # type: ignore[misc]
            for k, (face_id, work) in enumerate(works):  # the faces of a photo are inverted together
                pivot, noise = pivots[k : k + 1], None if noises is None else [n[k : k + 1] for n in noises]
                tensors = {"wplus": pivot[0].contiguous().cpu()}
                tensors.update({f"noise_{i}": n[0].contiguous().cpu() for i, n in enumerate(noise or [])})
                save_file(tensors, str(args.out / f"{face_id}.safetensors"))
                save_png(args.out / f"{face_id}_crop.png", work.aligned.crop)  # type: ignore[attr-defined]
                save_png(args.out / f"{face_id}_inversion.png", _render(inverter.generator, pivot, noise))
                print(f"{path}: {face_id}")
        except FacecloakError as err:
            failures += 1
            print(f"{path}: skipped: {err}")
    return 1 if failures == len(args.photos) else 0


def run_tune(args: argparse.Namespace, overrides: list[str]) -> int:
    """Invert and pivot-tune each face; writes stage-2 artifacts (keyed by face and settings) and reconstructions."""
    from facecloak.protect.clip2protect import FaceInverter

    inverter = FaceInverter(compose(overrides), stage_dir=args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in args.photos:
        try:
            works = _works(inverter, path, args.aligned)
            tuned = inverter.invert_and_tune([w for _, w in works], [i for i, _ in works])  # type: ignore[misc]
            for (face_id, work), stage1 in zip(works, tuned):
                save_png(args.out / f"{face_id}_crop.png", work.aligned.crop)  # type: ignore[attr-defined]
                save_png(args.out / f"{face_id}_tuned.png", _render(stage1.generator, stage1.pivot, stage1.noise))
                print(f"{path}: {face_id} {json.dumps({k: round(v, 3) for k, v in stage1.metrics.items()})}")
        except FacecloakError as err:
            failures += 1
            print(f"{path}: skipped: {err}")
    return 1 if failures == len(args.photos) else 0


INVERT = (add_arguments, run_invert)
TUNE = (add_arguments, run_tune)
