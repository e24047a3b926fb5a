"""`fr calibrate` on real labelled photos: the offline models verify identities as well as their sources report."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facecloak.cli.main import main
from facecloak.config.compose import compose
from facecloak.models.fr.zoo import fr_model_names, load_fr_model
from facecloak.registry.entries import load_registry
from facecloak.verify.calibrate import embed_labelled_set
from facecloak.verify.labelled import read_labels

AUC_TOLERANCE = 0.01  # the bar: within 0.01 of what MANIFEST.md reports
DLIB_PORT_MIN_COSINE = 0.999


def manifest_aucs(weights_dir: Path) -> dict[str, float]:
    """Registry model name -> the 'AUC seen' column of MANIFEST.md (rows matched by their file paths)."""
    by_file = {f.path: e.name for e in load_registry().values() for f in e.files}
    aucs = {}
    for line in (weights_dir / "MANIFEST.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 7 or not cells[0].startswith("`"):
            continue
        match = re.fullmatch(r"[\d.]+", cells[-1])
        if not match:
            continue
        stem = cells[0].strip("`").split("{")[0].rstrip("*").rstrip(".")
        names = {name for path, name in by_file.items() if path.startswith(stem)}
        for name in names:
            if load_registry()[name].kind == "face_recognition" and load_registry()[name].architecture != "dlib":
                aucs[name] = float(cells[-1])
    return aucs


@pytest.fixture(scope="module")
def shared_calibration(faces_dir: Path) -> dict:
    config = compose()
    models = fr_model_names(available_only=True)
    embedded = embed_labelled_set(read_labels(faces_dir), [load_fr_model(m) for m in models], config.faces)
    return {"embedded": embedded, "models": models}


def test_offline_models_reach_manifest_auc(shared_calibration: dict, weights_dir: Path) -> None:
    from facecloak.verify.metrics import pair_scores, roc_auc

    embedded = shared_calibration["embedded"]
    expected = manifest_aucs(weights_dir)
    assert {"mobilefacenet_casia", "faceres", "faceres_deep", "mobileface_human", "faceapi_dlib"} <= set(expected)
    assert not embedded.failures, embedded.failures
    measured = {}
    for name in expected:
        scores = pair_scores(embedded.embeddings[name], embedded.labels)
        measured[name] = roc_auc(scores.genuine, scores.impostor)
    print("ROC-AUC measured vs MANIFEST:", {n: (round(measured[n], 4), expected[n]) for n in expected})
    for name, reported in expected.items():
        assert measured[name] >= reported - AUC_TOLERANCE, f"{name}: AUC {measured[name]:.4f} vs {reported}"


def test_face_api_port_agrees_with_native_dlib_on_every_face(shared_calibration: dict) -> None:
    embedded = shared_calibration["embedded"]
    port, native = embedded.embeddings["faceapi_dlib"], embedded.embeddings["dlib_native"]
    native = native / np.linalg.norm(native, axis=1, keepdims=True)  # dlib's raw descriptor (compared by distance)
    cosines = (port * native).sum(axis=1)
    assert len(cosines) == len(embedded.photos) >= 40
    assert cosines.min() >= DLIB_PORT_MIN_COSINE, f"min cosine {cosines.min():.5f}"


def _small_labelled_folder(src: Path, dest: Path) -> Path:
    rows = ["identity,path"]
    for identity in ("angelina_jolie", "jack_dorsey", "katy_perry"):
        for photo in sorted((src / identity).glob("*.jpg"))[:2]:
            (dest / identity).mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, dest / identity / photo.name)
            rows.append(f"{identity},{identity}/{photo.name}")
    (dest / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(dest / "wall.png")
    rows += ["nobody,broken.jpg", "nobody,wall.png"]
    (dest / "labels.csv").write_text("\n".join(rows) + "\n")
    return dest


def test_calibrate_cli_on_any_labelled_folder(faces_dir: Path, tmp_path: Path, capsys) -> None:
    folder = _small_labelled_folder(faces_dir, tmp_path / "faces")
    out = tmp_path / "cal.json"
    code = main(
        [
            "fr",
            "calibrate",
            "--faces",
            str(folder),
            "--models",
            "mobilefacenet_casia",
            "dlib_native",
            "--out",
            str(out),
            "fr.far_levels=[0.1,0.01]",
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    for model in ("mobilefacenet_casia", "dlib_native"):
        assert 0.5 < report[model]["auc"] <= 1.0
        assert set(report[model]["thresholds"]) == {"0.1", "0.01"}
        assert report[model]["n_faces"] == 6
    reasons = {f["image_id"]: f["reason"] for f in report["_meta"]["failures"]}
    assert "not an image" in reasons["broken"] or "corrupt" in reasons["broken"]  # ids: the one labels rule
    assert reasons["wall"] == "no face detected"
    assert report["dlib_native"]["metric"] == "euclidean" and report["mobilefacenet_casia"]["metric"] == "cosine"
    assert report["dlib_native"]["face_recognition_tolerance"]["distance"] == 0.6
    assert out.with_suffix(".md").read_text().startswith("| model | metric | AUC")


def test_calibrate_rejects_folder_without_labels(tmp_path: Path, capsys) -> None:
    code = main(["fr", "calibrate", "--faces", str(tmp_path), "--out", str(tmp_path / "x.json")])
    assert code == 2
    assert "labels.csv" in capsys.readouterr().err
