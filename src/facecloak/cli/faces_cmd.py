"""``facecloak align`` and ``facecloak embed``: every face of full photos, aligned and embedded."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from facecloak.config.compose import compose
from facecloak.errors import FacecloakError
from facecloak.faces.align import align_ffhq
from facecloak.faces.crops import crop_for_template, detect_with_config, detector_from_config
from facecloak.faces.landmarks68 import landmarks68
from facecloak.io.images import load_photo, save_png

log = logging.getLogger(__name__)


def add_align_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the align command."""
    parser.add_argument("photos", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder for the crops and align.json")
    parser.add_argument(
        "--template",
        default="arcface_112",
        help="arcface_<size>, sphereface_112x96, dlib_chip_150 or ffhq (generator crops)",
    )


def run_align(args: argparse.Namespace, overrides: list[str]) -> int:
    """Write one crop per face plus the photo→crop matrices, so results can be pasted back later."""
    config = compose(overrides)
    detector = detector_from_config(config.faces, config.device)
    args.out.mkdir(parents=True, exist_ok=True)
    records, failed = [], 0
    for path in args.photos:
        try:
            photo = load_photo(path, max_pixels=config.faces.max_pixels)
            faces = detect_with_config(photo.rgb, detector, config.faces)
            if not faces:
                raise FacecloakError("no face detected")
            for index, face in enumerate(faces):
                crop_path = args.out / f"{path.stem}_face{index}.png"
                matrix = None
                if args.template == "ffhq":
                    points68 = landmarks68(photo.rgb, face, config.faces.landmarks68)
                    aligned = align_ffhq(photo.rgb, points68, size=config.faces.ffhq_size)
                    crop, matrix = aligned.crop, aligned.matrix.tolist()
                else:
                    crop = crop_for_template(photo.rgb, face, args.template)
                save_png(crop_path, crop)
                records.append(
                    {
                        "photo": str(path),
                        "face": index,
                        "crop": str(crop_path),
                        "box": list(face.box),
                        "score": face.score,
                        "landmarks5": face.landmarks5.tolist(),
                        "matrix": matrix,
                        "notes": list(photo.notes),
                    }
                )
            print(f"{path}: {len(faces)} face(s)")
        except FacecloakError as err:
            failed += 1
            print(f"{path}: skipped: {err}")
            records.append({"photo": str(path), "error": str(err)})
    (args.out / "align.json").write_text(json.dumps(records, indent=2))
    return 1 if failed == len(args.photos) else 0


def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the embed command."""
    parser.add_argument("photos", nargs="+", type=Path)
    parser.add_argument("--models", nargs="+", default=["faceres", "dlib_native"])
    parser.add_argument("--out", type=Path, help="write embeddings and similarities as JSON")


def run_embed(args: argparse.Namespace, overrides: list[str]) -> int:
    """Embed every face and print, per model, how alike all faces found are, in the model's own metric."""
    from facecloak.models.fr.zoo import load_fr_model
    from facecloak.verify.judge import FaceJudge
    from facecloak.verify.metrics import compare_rows

    config = compose(overrides)
    models = [load_fr_model(name, config.device) for name in args.models]
    judge = FaceJudge(models, detector_from_config(config.faces, config.device), config.faces, config.device)
    names: list[str] = []
    embeddings: dict[str, list[np.ndarray]] = {m.name: [] for m in models}
    for path in args.photos:
        try:
            photo = load_photo(path, max_pixels=config.faces.max_pixels)
        except FacecloakError as err:
            print(f"{path}: skipped: {err}")
            continue
        faces = judge.detect(photo.rgb)
        if not faces:
            print(f"{path}: skipped: no face detected")
        for index, face in enumerate(faces):
            names.append(f"{path.name}#{index}")
            for name, vector in judge.embed(photo.rgb, face).items():
                embeddings[name].append(vector)
    if not names:
        raise FacecloakError("no face found in any of the photos")
    result: dict = {"faces": names, "models": {}}
    for model in models:
        matrix = np.stack(embeddings[model.name])
        metric = model.entry.metric
        values = compare_rows(matrix, matrix, metric)  # type: ignore[arg-type]
        result["models"][model.name] = {
            "metric": metric,
            "values": values.round(4).tolist(),
            "similarity": compare_rows(matrix, matrix, "cosine").round(4).tolist(),
        }
        print(f"\n{model.name}: {'Euclidean distance' if metric == 'euclidean' else 'cosine similarity'}")
        print("".ljust(24) + "".join(n[:12].rjust(13) for n in names))
        for name, row in zip(names, values):
            print(name[:24].ljust(24) + "".join(f"{v:13.3f}" for v in row))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


ALIGN = (add_align_arguments, run_align)
EMBED = (add_embed_arguments, run_embed)
