"""Benchmark the L∞ pixel baselines (PGD, MI-FGSM, TI-DIM) on full photos, judged by a held-out native dlib.

For one photo of each of ``--n-photos`` people in a labelled folder (``labels.csv``: ``identity,path``), every
attack dodges the attacked ensemble (default ``mobilefacenet_casia`` + ``faceres``) at every budget, on the face
region of the full photo (:func:`facecloak.attacks.pixel.protect_photo_pixels`, uint8 output). Then:

* **dlib success**: the face is re-detected on the protected uint8 photo and embedded by native dlib (never
  attacked) through facecloak's judge (:mod:`facecloak.verify.judge`), and protection succeeds when it matches *no*
  other photo of the same person (Euclidean distance of dlib's descriptor at or above dlib's threshold at ``--far``,
  read from ``--calibration``). A face the detector no longer finds is measured at its original box and counted in
  ``redetect_misses``;
* the same after a JPEG q75 round trip of the protected photo (what an upload does);
* **white-box success**: every attacked model's similarity to the clean face at or below its own threshold;
* face-region PSNR / SSIM / HaarPSI of the protected photo against the original, and of JPEG75(protected) against
  JPEG75(original) (how much of the perturbation survives compression);
* seconds of attack per photo.

The clean photos are judged the same way (row ``none``) so the baseline match rate is visible.

Usage::

    OMP_NUM_THREADS=1 python scripts/bench_pixel_baselines.py --steps 20 --out outputs/bench_pixel_baselines.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facecloak.attacks.pixel import PIXEL_ATTACKS, PixelAttackConfig, build_pixel_attack, protect_photo_pixels
from facecloak.config.compose import compose
from facecloak.errors import ConfigError
from facecloak.evaluation.robustness import apply_transform
from facecloak.faces.config import FacesConfig
from facecloak.faces.crops import detect_with_config, detector_from_config
from facecloak.faces.detect import Face, FaceDetector
from facecloak.io.images import load_photo
from facecloak.losses.identity import AdversarialIdentityLoss
from facecloak.models.fr.zoo import load_fr_model
from facecloak.paths import shared_faces_dir
from facecloak.verify.judge import FaceJudge
from facecloak.verify.labelled import LabelledPhoto, read_labels
from facecloak.verify.metrics import alikeness, compare_rows, matches
from facecloak.verify.quality import measure_quality
from facecloak.verify.thresholds import Threshold, ThresholdTable

REPO_ROOT = Path(__file__).resolve().parents[1]
JUDGE = "dlib_native"
QUALITY_METRICS = ("psnr", "ssim", "haarpsi")
MIN_PHOTOS = 2


@dataclass(frozen=True)
class Probe:
    """A photo to protect: its id, identity, pixels and the detected face (refined landmarks for the attack)."""

    image_id: str
    identity: str
    rgb: np.ndarray
    face: Face


class DlibJudge:
    """Held-out native dlib behind facecloak's judge: gallery embeddings of every labelled photo and its threshold."""

    def __init__(self, detector: FaceDetector, faces_config: FacesConfig, threshold: Threshold) -> None:
        model = load_fr_model(JUDGE)
        self.metric = model.entry.metric
        # dlib cuts its chip from the box alone, so the 68-point landmark refinement is not needed to judge.
        self.faces_config = replace(faces_config, refine_landmarks=False)
        self.judge = FaceJudge([model], detector, self.faces_config, roles={JUDGE: "held_out"})
        self.threshold = threshold
        self.gallery: dict[str, tuple[str, np.ndarray]] = {}

    def embed(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """dlib descriptor of one face."""
        return self.judge.embed(rgb, face)[JUDGE]

    def add_gallery(self, photo: LabelledPhoto, rgb: np.ndarray, face: Face) -> None:
        """Remember a clean photo's descriptor under its id and identity."""
        self.gallery[photo.image_id] = (photo.identity, self.embed(rgb, face))

    def best_match(self, rgb: np.ndarray, probe: Probe) -> tuple[float, bool]:
        """dlib's value (distance) to the closest other photo of the same person, and whether the face was missed."""
        found = self.judge.locate(rgb, probe.face)
        descriptor = self.embed(rgb, found or probe.face)
        others = [
            emb
            for image_id, (identity, emb) in self.gallery.items()
            if identity == probe.identity and image_id != probe.image_id
        ]
        values = compare_rows(descriptor, np.stack(others), self.metric)[0]  # type: ignore[arg-type]
        return float(values[np.argmax(alikeness(values, self.metric))]), found is None  # type: ignore[arg-type]

    def protects(self, value: float) -> bool:
        """Whether the closest value is on the protected side of dlib's threshold (no match)."""
        return not bool(matches(value, self.threshold.value, self.metric))  # type: ignore[arg-type]


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255


def _face_quality(original: np.ndarray, protected: np.ndarray, face: Face) -> dict[str, float]:
    box = tuple(round(v) for v in face.box)
    report = measure_quality(_tensor(original), _tensor(protected), box=box, metrics=QUALITY_METRICS)  # type: ignore[arg-type]
    return {name: float(report["face"][name]["value"]) for name in QUALITY_METRICS}


@torch.no_grad()
def _white_box_similarities(
    loss: AdversarialIdentityLoss, original: np.ndarray, protected: np.ndarray, face: Face
) -> dict[str, float]:
    landmarks = torch.as_tensor(face.landmarks5, dtype=torch.float32)[None]
    clean = loss.embed(_tensor(original), landmarks)
    after = loss.embed(_tensor(protected), landmarks)
    return {name: float((clean[name] * after[name]).sum()) for name in loss.names}


def load_probes_and_gallery(
    faces_dir: Path,
    n_photos: int,
    judge: DlibJudge,
    detector: FaceDetector,
    faces_config: FacesConfig,
    probe_index: int = 0,
) -> list[Probe]:
    """Embed every labelled photo with dlib; pick photo ``probe_index`` (by id, 0: the first) of the first
    ``n_photos`` people who have it and at least one more: another index gives fresh probes for checking settings
    that were chosen on the default ones."""
    photos = sorted(read_labels(faces_dir), key=lambda p: p.image_id)
    counts: dict[str, int] = {}
    for photo in photos:
        counts[photo.identity] = counts.get(photo.identity, 0) + 1
    seen: dict[str, int] = {}
    probes: list[Probe] = []
    for photo in photos:
        rgb = load_photo(photo.path, max_pixels=faces_config.max_pixels).rgb
        position = seen.get(photo.identity, 0)
        seen[photo.identity] = position + 1
        wanted = counts[photo.identity] >= MIN_PHOTOS and position == probe_index and len(probes) < n_photos
        faces = detect_with_config(rgb, detector, faces_config if wanted else judge.faces_config)
        if not faces:
            print(f"skipping {photo.image_id}: no face detected")
            continue
        judge.add_gallery(photo, rgb, faces[0])
        if wanted:
            probes.append(Probe(photo.image_id, photo.identity, rgb, faces[0]))
    if len(probes) < n_photos:
        raise ConfigError(f"only {len(probes)} people with >= {MIN_PHOTOS} usable photos in {faces_dir}")
    return probes


def _summary(rows: list[dict]) -> dict:
    def mean(key: str, sub: str | None = None) -> float:
        values = [row[key][sub] if sub else row[key] for row in rows]
        return float(statistics.fmean(values))

    summary: dict[str, Any] = {
        "n": len(rows),
        "dlib_success": mean("dlib_success"),
        "dlib_success_jpeg75": mean("dlib_success_jpeg75"),
        "dlib_closest_distance": mean("dlib_closest_distance"),
        "redetect_misses": int(sum(row["redetect_miss"] for row in rows)),
        "seconds_per_photo": mean("seconds"),
    }
    if rows and "white_box_success" in rows[0]:
        summary["white_box_success"] = mean("white_box_success")
        summary["quality"] = {m: mean("quality", m) for m in QUALITY_METRICS}
        summary["quality_jpeg75"] = {m: mean("quality_jpeg75", m) for m in QUALITY_METRICS}
    return summary


def run(args: argparse.Namespace) -> dict:
    """Protect every probe with every attack and budget, judge each result, return the per-photo and mean results."""
    torch.set_num_threads(args.threads)
    table = ThresholdTable.from_calibration(args.calibration)
    far = args.far
    threshold = table.get(JUDGE, far, "euclidean")
    judge_threshold = threshold.value
    attacked_thresholds = {name: table.get(name, far, "cosine").value for name in args.models}
    faces_config = compose().faces
    detector = detector_from_config(faces_config)
    judge = DlibJudge(detector, faces_config, threshold)
    probes = load_probes_and_gallery(Path(args.faces_dir), args.n_photos, judge, detector, faces_config)
    loss = AdversarialIdentityLoss([load_fr_model(name) for name in args.models], "dodge")

    def judged(protected: np.ndarray, probe: Probe, seconds: float) -> dict:
        best, missed = judge.best_match(protected, probe)
        best_jpeg, missed_jpeg = judge.best_match(apply_transform(args.jpeg, protected), probe)
        return {
            "image_id": probe.image_id,
            "seconds": seconds,
            "dlib_closest_distance": best,
            "dlib_success": judge.protects(best),
            "dlib_closest_distance_jpeg75": best_jpeg,
            "dlib_success_jpeg75": judge.protects(best_jpeg),
            "redetect_miss": missed or missed_jpeg,
        }

    results: dict[str, dict] = {"none": {"rows": [judged(p.rgb, p, 0.0) for p in probes]}}
    for name in args.attacks:
        for eps in args.eps:
            config = PixelAttackConfig(eps_255=eps, steps=args.steps, seed=args.seed)
            attack = build_pixel_attack(name, config, loss)
            rows = []
            for probe in probes:
                start = time.perf_counter()  # the attack returns a host array: its kernels are all done
                protected = protect_photo_pixels(
                    probe.rgb, [probe.face], attack, region_scale=args.region_scale, mask_scale=args.mask_scale
                )
                row = judged(protected, probe, time.perf_counter() - start)
                sims = _white_box_similarities(loss, probe.rgb, protected, probe.face)
                row["white_box_similarity"] = sims
                row["white_box_success"] = all(sims[m] <= attacked_thresholds[m] for m in sims)
                row["max_abs_change_255"] = int(np.abs(protected.astype(np.int16) - probe.rgb).max())
                row["quality"] = _face_quality(probe.rgb, protected, probe.face)
                row["quality_jpeg75"] = _face_quality(
                    apply_transform(args.jpeg, probe.rgb), apply_transform(args.jpeg, protected), probe.face
                )
                rows.append(row)
                print(
                    f"{name} eps {eps:g}/255 {probe.image_id}: dlib {row['dlib_closest_distance']:.3f} "
                    f"({'ok' if row['dlib_success'] else 'match'}), {row['seconds']:.1f} s",
                    flush=True,
                )
            results[f"{name}@{eps:g}"] = {"attack": name, "eps_255": eps, "config": vars(config), "rows": rows}
    for entry in results.values():
        entry["summary"] = _summary(entry["rows"])
    return {
        "settings": {
            **{k: v for k, v in vars(args).items() if k != "out"},
            "judge": JUDGE,
            "judge_threshold": judge_threshold,
            "attacked_thresholds": attacked_thresholds,
            "probes": [p.image_id for p in probes],
        },
        "results": results,
    }


def markdown_table(report: dict) -> str:
    """One row per attack and budget: success rates, face quality, time."""
    settings = report["settings"]
    head = (
        f"Dodging {', '.join(settings['models'])} ({settings['steps']} steps) on {len(settings['probes'])} photos; "
        f"judge: native dlib at FAR {settings['far']} (distance threshold {settings['judge_threshold']:.4f}).\n\n"
        "| attack | eps | dlib success | after JPEG75 | white-box success | mean closest dlib distance | PSNR | SSIM "
        "| HaarPSI "
        "| PSNR / SSIM / HaarPSI after JPEG75 | s / photo |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for key, entry in report["results"].items():
        s = entry["summary"]
        eps = f"{entry['eps_255']:g}/255" if "eps_255" in entry else "0"
        if "quality" in s:
            q, qj = s["quality"], s["quality_jpeg75"]
            quality = f"{q['psnr']:.2f} | {q['ssim']:.4f} | {q['haarpsi']:.4f}"
            quality_jpeg = f"{qj['psnr']:.2f} / {qj['ssim']:.4f} / {qj['haarpsi']:.4f}"
            white = f"{s['white_box_success']:.0%}"
        else:
            quality, quality_jpeg, white = "– | – | –", "–", "–"
        lines.append(
            f"| {entry.get('attack', key)} | {eps} | {s['dlib_success']:.0%} | {s['dlib_success_jpeg75']:.0%} "
            f"| {white} | {s['dlib_closest_distance']:.3f} | {quality} | {quality_jpeg} "
            f"| {s['seconds_per_photo']:.1f} |"
        )
    notes = (
        "\n\nQuality is on the face box; after JPEG75 it compares JPEG75(protected) with JPEG75(original). "
        "Re-detection misses (judged at the original box): "
        + ", ".join(f"{k} {v['summary']['redetect_misses']}" for k, v in report["results"].items())
    )
    return head + "\n".join(lines) + notes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (budgets in 8-bit levels)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces-dir", default=str(shared_faces_dir()))
    parser.add_argument("--calibration", default=str(REPO_ROOT / "docs" / "calibration_shared_faces.json"))
    parser.add_argument("--out", default=str(REPO_ROOT / "outputs" / "bench_pixel_baselines.json"))
    parser.add_argument("--n-photos", type=int, default=10, help="people to protect (one photo each)")
    parser.add_argument("--attacks", nargs="+", default=sorted(PIXEL_ATTACKS), choices=sorted(PIXEL_ATTACKS))
    parser.add_argument("--models", nargs="+", default=["mobilefacenet_casia", "faceres"])
    parser.add_argument("--eps", nargs="+", type=float, default=[8.0, 16.0], help="L∞ budgets in levels of 255")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--far", default="0.01", help="false-accept rate key of the calibration thresholds")
    parser.add_argument("--jpeg", default="jpeg75", help="robustness transform applied before re-judging")
    parser.add_argument("--region-scale", type=float, default=1.5)
    parser.add_argument("--mask-scale", type=float, default=1.0, help="perturb only the face box scaled by this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark, print the markdown table, write the JSON report."""
    args = parse_args(argv)
    report = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float))
    print(markdown_table(report))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
