"""One judge for protect, evaluate and sweep: one saved photo gets one answer, "no face found" is its own verdict,
dlib is compared by the Euclidean distance of its raw descriptor, and every protect job ends with the verdicts."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facecloak.cli.main import main
from facecloak.config.compose import compose, resolve_data_path
from facecloak.evaluation.harness import EvaluationSettings, judge_method, judged_models, load_probes_and_gallery
from facecloak.evaluation.probes import Protected
from facecloak.evaluation.protocol import ProtocolItem, load_labelled_folder
from facecloak.faces.crops import crop_for_template, detector_from_config
from facecloak.faces.detect import Face
from facecloak.io.images import load_photo
from facecloak.models import dlib_native
from facecloak.models.fr.zoo import load_fr_model
from facecloak.protect.methods import build_protector
from facecloak.protect.verdict_table import format_verdict_table, verdict_summary
from facecloak.sweep.metrics import job_metrics
from facecloak.verify.calibrate import embed_labelled_set
from facecloak.verify.judge import OUTCOME_WORDS, SAME_FACE_MIN_IOU, FaceJudge, decide, face_outcome, same_face
from facecloak.verify.labelled import read_labels
from facecloak.verify.thresholds import build_threshold_table

TINY = ["preset=offline", "scale=smoke", "trainer.progress_bar=false"]
PERSON, PROBE, OTHER = "jack_dorsey", "img16.jpg", "img1.jpg"


@pytest.fixture(scope="module")
def job(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One smoke protect run on one shared photo, its console output, record and summary."""
    inputs = tmp_path_factory.mktemp("judge_inputs")
    photo = inputs / "dorsey.jpg"
    shutil.copy(faces_dir / PERSON / PROBE, photo)
    out = tmp_path_factory.mktemp("judge_out")
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        code = main(["protect", str(photo), "--out", str(out), *TINY])
    [record_path] = out.glob("dorsey-*.json")
    return {
        "code": code,
        "console": console.getvalue(),
        "photo": photo,
        "record": json.loads(record_path.read_text()),
        "summary": json.loads((out / "summary.json").read_text()),
        "config": compose(TINY),
    }


def _evaluate_photo(job: dict[str, Any], faces_dir: Path, protected_rgb: np.ndarray) -> dict[str, Any]:
    """evaluate's judging of one protected version of the job's photo (its gallery: another photo of the person)."""
    config = job["config"]
    items = [
        ProtocolItem(f"{PERSON}/probe", job["photo"], PERSON, "test"),
        ProtocolItem(f"{PERSON}/other", faces_dir / PERSON / OTHER, PERSON, "test"),
    ]
    models = judged_models(config)
    roles = {**{m: "attacked" for m in config.fr.attacked}, **{m: "held_out" for m in config.fr.held_out}}
    judge = FaceJudge(
        [load_fr_model(m) for m in models], detector_from_config(config.faces), config.faces, "cpu", roles
    )
    probes, gallery = load_probes_and_gallery(items, 1, judge, config)
    thresholds = build_threshold_table(
        models, resolve_data_path(config.fr.calibration), prefer=config.fr.threshold_source
    )
    settings = EvaluationSettings(methods=("clean",), n_photos=1, transforms=())
    protected = {probes[0].image_id: Protected(protected_rgb, 0.0)}
    far = config.protect.far
    return judge_method(probes, protected, gallery, judge, thresholds, settings, [far], far)


def test_protect_evaluate_and_sweep_give_one_answer_on_one_saved_photo(job: dict, faces_dir: Path) -> None:
    record = job["record"]
    saved = load_photo(record["outputs"]["photo"], max_side=None).rgb
    by_protect = record["faces"][0]["fr"]
    evaluated = _evaluate_photo(job, faces_dir, saved)
    by_evaluate = evaluated["photos"][0]["verdicts"]
    assert set(by_evaluate) == set(by_protect) == {"mobilefacenet_casia", "faceres", "dlib_native"}
    for model, verdict in by_protect.items():
        assert by_evaluate[model]["verdict"] == verdict["verdict"], model
        assert by_evaluate[model]["after"] == pytest.approx(verdict["after"], abs=2e-3), model
        assert by_evaluate[model]["threshold"] == verdict["threshold"], model
    outcome = face_outcome(by_protect.values())
    assert evaluated["verdicts"][outcome] == 1 and sum(evaluated["verdicts"].values()) == 1
    metrics = job_metrics([record], job["config"])
    for role, key in (("held_out", "held_out_success"), ("attacked", "attacked_success")):
        protected = all(v["verdict"] == "protected" for v in by_protect.values() if v["role"] == role)
        assert metrics[key] == float(protected), role


def test_a_face_painted_flat_is_no_face_found_in_every_command(job: dict, faces_dir: Path) -> None:
    """A protected photo whose face was removed is never a silent pass: protect, evaluate and sweep say so."""
    record = job["record"]
    painted = load_photo(record["outputs"]["photo"], max_side=None).rgb.copy()
    x0, y0, x1, y1 = record["faces"][0]["box"]
    w, h = x1 - x0, y1 - y0
    painted[max(0, int(y0 - h / 2)) : int(y1 + h / 2), max(0, int(x0 - w / 2)) : int(x1 + w / 2)] = painted.mean(
        axis=(0, 1)
    ).astype(np.uint8)

    config = job["config"]
    protector = build_protector(config)
    photo = load_photo(job["photo"], max_pixels=config.faces.max_pixels)
    assert not protector.judge.detect(painted), "the painted photo must really have no detectable face"
    judged: list[dict[str, Any]] = [{"face": 0}]
    protector._judge(photo, painted, protector.faces_of(photo), judged)  # protect's own judging step
    assert {v["verdict"] for v in judged[0]["fr"].values()} == {"no_face_found"}
    assert all(v["after"] is None and v["margin"] is None for v in judged[0]["fr"].values())

    evaluated = _evaluate_photo(job, faces_dir, painted)
    assert {v["verdict"] for v in evaluated["photos"][0]["verdicts"].values()} == {"no_face_found"}
    assert evaluated["verdicts"] == {"protected": 0, "recognised": 0, "no_face_found": 1}
    assert evaluated["no_face_found"] == {"none": 1}

    missed = {**record, "faces": [{**record["faces"][0], "fr": judged[0]["fr"]}]}
    metrics = job_metrics([missed], config)
    assert metrics["held_out_success"] == 0.0 and metrics["attacked_success"] == 0.0
    summary = verdict_summary([missed], smoke=False)
    assert summary["faces"] == {"protected": 0, "recognised": 0, "no_face_found": 1}
    assert "no face found" in format_verdict_table(summary)


def test_dlib_is_judged_by_the_euclidean_distance_of_its_raw_descriptor(job: dict) -> None:
    record, config = job["record"], job["config"]
    verdict = record["faces"][0]["fr"]["dlib_native"]
    assert verdict["metric"] == "euclidean" and verdict["before"] == 0.0
    original = load_photo(job["photo"], max_pixels=config.faces.max_pixels).rgb
    saved = load_photo(record["outputs"]["photo"], max_side=None).rgb
    judge = FaceJudge([load_fr_model("dlib_native")], detector_from_config(config.faces), config.faces)
    [face] = judge.detect(original)[:1]
    again = judge.locate(saved, face)
    assert again is not None
    before = dlib_native.chip_descriptor(crop_for_template(original, face, "dlib_chip_150"))
    after = dlib_native.chip_descriptor(crop_for_template(saved, again, "dlib_chip_150"))
    assert np.linalg.norm(before) > 1.2  # the raw descriptor, as face_recognition compares it (not unit norm)
    assert verdict["after"] == pytest.approx(float(np.linalg.norm(before - after)), abs=1e-3)
    calibration = json.loads(resolve_data_path(config.fr.calibration).read_text())
    assert verdict["threshold"] == pytest.approx(calibration["dlib_native"]["thresholds"]["0.01"], abs=1e-4)
    assert verdict["face_recognition_tolerance"] == 0.6
    assert verdict["recognised_at_tolerance"] == (verdict["after"] < 0.6)
    assert (verdict["verdict"] == "protected") == (verdict["after"] >= verdict["threshold"])


def test_decide_by_each_metric_and_mode() -> None:
    assert decide(0.70, 0.644, "euclidean", "dodge") == ("protected", pytest.approx(0.056))
    assert decide(0.50, 0.644, "euclidean", "dodge") == ("recognised", pytest.approx(-0.144))
    assert decide(0.30, 0.27, "cosine", "dodge") == ("recognised", pytest.approx(-0.03))
    assert decide(0.27, 0.27, "cosine", "dodge")[0] == "protected"  # a match is strictly above the threshold
    assert decide(0.40, 0.27, "cosine", "impersonate") == ("protected", pytest.approx(0.13))
    assert decide(0.50, 0.644, "euclidean", "impersonate") == ("protected", pytest.approx(0.144))


def test_same_face_rule() -> None:
    def face(x0: float) -> Face:
        return Face((x0, 0.0, x0 + 100.0, 100.0), 0.9, np.zeros((5, 2)))

    original = face(0.0)
    found = same_face(original, [face(300.0), face(10.0)])
    assert found is not None and found.box == (10.0, 0.0, 110.0, 100.0)
    # IoU of boxes shifted by s on a 100 px side: (100 - s) / (100 + s); just below the rule's minimum is a miss.
    shift = 100 * (1 - SAME_FACE_MIN_IOU) / (1 + SAME_FACE_MIN_IOU) + 1
    assert same_face(original, [face(shift)]) is None
    assert same_face(original, []) is None


def test_one_labels_reader_gives_calibrate_and_evaluate_the_same_ids(faces_dir: Path, tmp_path: Path) -> None:
    rows = ["identity,path"]
    for person in ("katy_perry", PERSON):
        for photo in sorted((faces_dir / person).glob("*.jpg"))[:2]:
            (tmp_path / person).mkdir(exist_ok=True)
            shutil.copy(photo, tmp_path / person / photo.name)
            rows.append(f"{person},{person}/{photo.name}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    photos = read_labels(tmp_path)
    assert [p.image_id for p in photos] == [r.split(",")[1].rsplit(".", 1)[0] for r in rows[1:]]
    embedded = embed_labelled_set(photos, [load_fr_model("mobilefacenet_casia")], compose().faces)
    evaluated = load_labelled_folder(tmp_path)
    assert [p.image_id for p in embedded.photos] == [item.image_id for item in evaluated]


def test_console_table_and_summary_say_whether_the_photo_is_protected(job: dict) -> None:
    assert job["code"] == 0
    record, summary, console = job["record"], job["summary"], job["console"]
    verdicts = summary["verdicts"]
    lines = console.splitlines()
    header = next(line for line in lines if line.startswith("photo"))
    assert all(word in header for word in ("face", "model", "before → after", "threshold", "verdict"))
    for model, verdict in record["faces"][0]["fr"].items():
        role = "held out" if verdict["role"] == "held_out" else "attacked"
        [row] = [line for line in lines if f"{model} ({role})" in line]
        assert row.startswith("dorsey.jpg") and OUTCOME_WORDS[verdict["verdict"]] in row
        assert f"{verdict['threshold']:.3f}" in row
    outcome = face_outcome(record["faces"][0]["fr"].values())
    assert verdicts["faces"] == {o: int(o == outcome) for o in ("protected", "recognised", "no_face_found")}
    counts_line = next(line for line in lines if line.startswith("faces: 1;"))
    assert f"1 {OUTCOME_WORDS[outcome]}" in counts_line
    for model, verdict in record["faces"][0]["fr"].items():
        assert verdicts["by_model"][model][verdict["verdict"]] == 1
    assert len(verdicts["rows"]) == 3
    # A smoke run is flagged as not results, on the console, in summary.json and in the photo's record.
    assert "NOT results" in console and "NOT results" in verdicts["not_results"] and "smoke" in record
    assert summary["all_photos_processed"] and "complete" not in summary


def test_one_config_key_orders_the_threshold_sources() -> None:
    from facecloak.errors import ConfigError

    assert compose([]).fr.threshold_source == "calibrated"
    assert compose(["fr.threshold_source=published"]).fr.threshold_source == "published"
    with pytest.raises(ConfigError, match=r"fr\.threshold_source"):
        compose(["fr.threshold_source=newest"])
