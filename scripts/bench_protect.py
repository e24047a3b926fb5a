"""Benchmark `facecloak protect` on the shared faces, judged like the pixel baselines.

Protects the same probes as ``bench_pixel_baselines.py`` (first photo of each of the first N people with at least
two photos) in dodging mode with the chosen preset and overrides, then judges every saved photo with held-out
native dlib through facecloak's judge: success = the protected face matches *no* other photo of the same person at
dlib's FAR threshold (Euclidean distance). White-box: protect's own verdicts of the attacked models.
Reports face-box PSNR/SSIM/HaarPSI, the same after JPEG q75, and seconds per photo.

    python scripts/bench_protect.py --out outputs/bench_protect [--n-photos 10] [override=value ...]

Screening: ``--people jeff_bezos,george_clooney`` keeps only those people's probes (the gallery stays complete), and
``--stages-from outputs/bench_a`` copies stage-1 artifacts (inversion and pivot tuning, which do not depend on the
search settings) from an earlier run so only the search is repeated; seconds per photo then omit stage 1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pixel_baselines import DlibJudge, _face_quality, load_probes_and_gallery
from facecloak.config.compose import compose, resolve_data_path
from facecloak.evaluation.robustness import apply_transform
from facecloak.faces.crops import detector_from_config
from facecloak.io.images import load_photo
from facecloak.paths import shared_faces_dir
from facecloak.protect.pipeline import image_id_for
from facecloak.protect.runner import STAGE_DIR_NAME, run_protect_job
from facecloak.verify.thresholds import ThresholdTable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-photos", type=int, default=10)
    parser.add_argument("--far", default="0.01")
    parser.add_argument("--people", default=None, help="comma-separated identities to protect (default: all probes)")
    parser.add_argument("--probe-index", type=int, default=0, help="which photo of each person is the probe (0: first)")
    parser.add_argument("--stages-from", type=Path, default=None, help="earlier --out whose stage-1 artifacts to reuse")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    config = compose(["preset=offline", "protect.mode=dodge", "trainer.progress_bar=false", *args.overrides])
    calibration = resolve_data_path(config.fr.calibration or "docs/calibration_shared_faces.json")
    threshold = ThresholdTable.from_calibration(calibration).get("dlib_native", args.far, "euclidean")
    detector = detector_from_config(config.faces)
    judge = DlibJudge(detector, config.faces, threshold)
    probes = load_probes_and_gallery(shared_faces_dir(), args.n_photos, judge, detector, config.faces, args.probe_index)
    if args.people:
        wanted = set(args.people.split(","))
        probes = [p for p in probes if p.identity in wanted]
        if {p.identity for p in probes} != wanted:
            raise SystemExit(f"--people names identities outside the first {args.n_photos} probes: {sorted(wanted)}")
    if args.stages_from is not None:
        shutil.copytree(args.stages_from / STAGE_DIR_NAME, args.out / STAGE_DIR_NAME, dirs_exist_ok=True)
    paths = {p.image_id: shared_faces_dir() / f"{p.image_id}" for p in probes}
    paths = {i: next(p.parent.glob(p.name + ".*")) if not p.exists() else p for i, p in paths.items()}
    summary = run_protect_job(list(paths.values()), args.out, config)
    rows = []
    for probe in probes:
        record_path = args.out / f"{image_id_for(paths[probe.image_id])}.json"
        if not record_path.exists():
            rows.append({"probe": probe.image_id, "error": summary["failed"]})
            continue
        record = json.loads(record_path.read_text())
        protected = load_photo(record["outputs"]["photo"], max_side=None).rgb
        best, missed = judge.best_match(protected, probe)
        jpeg = apply_transform("jpeg75", protected)
        best_jpeg, _ = judge.best_match(jpeg, probe)
        rows.append(
            {
                "probe": probe.image_id,
                "dlib_closest_distance": best,
                "dlib_success": judge.protects(best),
                "dlib_success_jpeg75": judge.protects(best_jpeg),
                "redetect_miss": missed,
                "white_box": {
                    m: v["verdict"] == "protected"
                    for m, v in record["faces"][0]["fr"].items()
                    if v["role"] == "attacked"
                },
                "quality": _face_quality(probe.rgb, protected, probe.face),
                "quality_jpeg75": _face_quality(apply_transform("jpeg75", probe.rgb), jpeg, probe.face),
                "seconds": record["seconds"],
                **_warp_measures(record["faces"][0]),
            }
        )
    ok = [r for r in rows if "error" not in r]
    mean = statistics.fmean
    report = {
        "config_overrides": args.overrides,
        "stage1_reused": args.stages_from is not None,
        "judge_threshold": threshold.value,
        "rows": rows,
        "summary": {
            "n": len(ok),
            "dlib_success": mean(r["dlib_success"] for r in ok),
            "dlib_success_jpeg75": mean(r["dlib_success_jpeg75"] for r in ok),
            "white_box_success": mean(all(r["white_box"].values()) for r in ok),
            "dlib_closest_distance": mean(r["dlib_closest_distance"] for r in ok),
            "quality": {m: mean(r["quality"][m] for r in ok) for m in ("psnr", "ssim", "haarpsi")},
            "quality_jpeg75": {m: mean(r["quality_jpeg75"][m] for r in ok) for m in ("psnr", "ssim", "haarpsi")},
            "seconds_per_photo": mean(r["seconds"] for r in ok),
            **_warp_summary(ok),
        },
    }
    (args.out / "bench_protect.json").write_text(json.dumps(report, indent=2, default=float))
    for r in ok:
        print(
            f"{r['probe']:32s} dlib {r['dlib_closest_distance']:.3f} {'ok ' if r['dlib_success'] else 'no '}"
            f"HaarPSI {r['quality']['haarpsi']:.3f} white-box {r['white_box']}"
        )
    print(json.dumps(report["summary"], indent=2, default=float))


def _warp_measures(face: dict) -> dict:
    """The landmark warp's own measures (``protect.method: warp``): field size and the texture left beyond it."""
    if "warp" not in face:
        return {}
    warp = face["warp"]
    return {
        "texture_haarpsi": warp["texture_haarpsi"],
        "displacement_max_over_iod": warp["displacement"]["max_over_iod"],
        "displacement_mean_over_iod": warp["displacement"]["mean_over_iod"],
        "stopped_at": warp["stopped_at"],
    }


def _warp_summary(rows: list[dict]) -> dict:
    if not rows or "texture_haarpsi" not in rows[0]:
        return {}
    keys = ("texture_haarpsi", "displacement_max_over_iod", "displacement_mean_over_iod")
    summary = {key: statistics.fmean(r[key] for r in rows) for key in keys}
    summary["texture_haarpsi_min"] = min(r["texture_haarpsi"] for r in rows)
    summary["displacement_max_over_iod_max"] = max(r["displacement_max_over_iod"] for r in rows)
    return summary


if __name__ == "__main__":
    main()
