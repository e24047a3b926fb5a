"""`facecloak protect` end to end on real photos with a tiny generator (same code path as full size)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facecloak.cli.main import main

TINY = ["preset=offline", "scale=smoke", "trainer.progress_bar=false"]


def _photo_with_gps(src: Path, dest: Path) -> Path:
    image = Image.open(src)
    exif = Image.Exif()
    exif[0x010F] = "SpyCam"  # Make
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0)}  # GPSInfo
    image.save(dest, exif=exif.tobytes(), quality=95)
    assert Image.open(dest).getexif()
    return dest


@pytest.fixture(scope="module")
def job(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    inputs = tmp_path_factory.mktemp("inputs")
    photo = _photo_with_gps(faces_dir / "jack_dorsey" / "img16.jpg", inputs / "dorsey.jpg")
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(inputs / "wall.png")
    out = tmp_path_factory.mktemp("protected")
    code = main(["protect", str(photo), str(inputs / "broken.jpg"), str(inputs / "wall.png"), "--out", str(out), *TINY])
    return {"code": code, "out": out, "photo": photo, "inputs": inputs}


def _record(out: Path, stem: str) -> dict:
    [path] = [p for p in out.glob(f"{stem}-*.json")]
    return json.loads(path.read_text())


def test_batch_keeps_going_and_reports_failures(job: dict) -> None:
    assert job["code"] == 0
    summary = json.loads((job["out"] / "summary.json").read_text())
    assert summary["counts"] == {"done": 1, "failed": 2}
    reasons = " ".join(summary["failed"].values())
    assert "cannot be read" in reasons and "no face detected" in reasons


def test_outputs_full_photo_without_metadata(job: dict) -> None:
    record = _record(job["out"], "dorsey")
    protected = Image.open(record["outputs"]["photo"])
    original = Image.open(job["photo"])
    assert protected.format == "PNG" and protected.size == original.size
    assert not protected.getexif() and "exif" not in protected.info and not protected.text
    assert Path(record["outputs"]["before_after"]).exists()
    assert any("no face prior" in note for note in record["notes"])


def test_change_stays_on_the_face(job: dict) -> None:
    record = _record(job["out"], "dorsey")
    before = np.asarray(Image.open(job["photo"]).convert("RGB"), dtype=np.float64)
    after = np.asarray(Image.open(record["outputs"]["photo"]), dtype=np.float64)
    x0, y0, x1, y1 = record["faces"][0]["box"]
    w, h = x1 - x0, y1 - y0
    outside = np.ones(before.shape[:2], bool)
    outside[max(0, int(y0 - h)) : int(y1 + h), max(0, int(x0 - w)) : int(x1 + w)] = False
    # The input went through JPEG once more when we added EXIF; compare with what the pipeline read.
    assert np.abs(after - before)[outside].mean() < 1.0


def test_record_judges_every_model_on_the_saved_file(job: dict) -> None:
    record = _record(job["out"], "dorsey")
    verdicts = record["faces"][0]["fr"]
    assert {"mobilefacenet_casia", "faceres", "dlib_native"} <= set(verdicts)
    assert verdicts["dlib_native"]["role"] == "held_out"
    for verdict in verdicts.values():
        protected = verdict["verdict"] == "protected"
        if verdict["metric"] == "cosine":
            assert protected == (verdict["after"] <= verdict["threshold"])
            assert verdict["margin"] == pytest.approx(verdict["threshold"] - verdict["after"], abs=2e-4)
        else:
            assert protected == (verdict["after"] >= verdict["threshold"])
            assert verdict["margin"] == pytest.approx(verdict["after"] - verdict["threshold"], abs=2e-4)
    assert verdicts["dlib_native"]["metric"] == "euclidean"
    assert record["thresholds"]["dlib_native"]["source"].startswith("calibrated")
    assert record["thresholds"]["dlib_native"]["metric"] == "euclidean"


def test_rerun_resumes_without_redoing_and_refuses_a_changed_config(job: dict, capsys) -> None:
    record_path = next(job["out"].glob("dorsey-*.json"))
    stamp = record_path.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["protect", str(job["photo"]), "--out", str(job["out"]), *TINY]) == 0
    assert record_path.stat().st_mtime_ns == stamp
    assert "1 of 1 photo(s) already protected" in capsys.readouterr().err
    assert main(["protect", str(job["photo"]), "--out", str(job["out"]), *TINY, "search.lambda_adv=0.5"]) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "search.lambda_adv: 0.7 -> 0.5" in err


def test_jpeg_on_request(faces_dir: Path, tmp_path: Path) -> None:
    photo = tmp_path / "katy.jpg"
    shutil.copy(faces_dir / "katy_perry" / "img26.jpg", photo)
    out = tmp_path / "out"
    assert (
        main(["protect", str(photo), "--out", str(out), *TINY, "protect.output_format=jpeg", "protect.jpeg_quality=90"])
        == 0
    )
    record = _record(out, "katy")
    assert record["outputs"]["photo"].endswith(".jpg")
    assert not Image.open(record["outputs"]["photo"]).getexif()


def test_impersonation_needs_a_target() -> None:
    assert main(["protect", "x.jpg", "--out", "/tmp/nowhere", *TINY, "protect.mode=impersonate"]) == 2


def test_changed_stage_one_settings_never_reuse_a_stale_artifact(faces_dir: Path, tmp_path: Path) -> None:
    """Stage-1 artifacts are keyed by their settings: a changed ``pivot.steps`` recomputes stage 1.

    Rerunning into the same ``--out`` needs ``--restart`` (a changed config is refused), which discards every stage
    state; stages copied into another job (``bench_protect --stages-from``) keep their key and are not reused.
    """
    photo = tmp_path / "dorsey.jpg"
    shutil.copy(faces_dir / "jack_dorsey" / "img17.jpg", photo)
    out, copy = tmp_path / "out", tmp_path / "copy"

    def stage_one(out_dir: Path) -> tuple[list[str], float]:
        artifacts = sorted(p.stem for p in (out_dir / ".stages").glob("*.json"))
        record = json.loads(next(out_dir.glob("dorsey-*.json")).read_text())
        return artifacts, record["faces"][0]["stage1"]["steps"]

    assert main(["protect", str(photo), "--out", str(out), *TINY]) == 0  # smoke: pivot.steps=3
    [first], steps = stage_one(out)
    assert steps == 3

    shutil.copytree(out / ".stages", copy / ".stages")
    assert main(["protect", str(photo), "--out", str(copy), *TINY, "pivot.steps=4"]) == 0
    artifacts, steps = stage_one(copy)
    assert steps == 4 and len(artifacts) == 2 and first in artifacts  # recomputed next to the stale one

    assert main(["protect", str(photo), "--out", str(out), *TINY, "pivot.steps=4", "--restart"]) == 0
    artifacts, steps = stage_one(out)
    assert steps == 4 and first not in artifacts and len(artifacts) == 1  # --restart cleared the old stage state
