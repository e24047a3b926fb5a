"""`facecloak protect --method map` end to end on real photos with a tiny untrained score network (same code path)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from facecloak.cli.main import main
from facecloak.cli.protect_cmd import SCORE_NETWORK, default_preset, offline_method
from facecloak.config.compose import compose
from facecloak.errors import ConfigError
from facecloak.io.images import load_photo
from facecloak.protect.map_method import MapProtector
from facecloak.protect.methods import build_protector
from facecloak.registry.store import is_available
from facecloak.stages.fit import checkpoint_step
from test_protect import _photo_with_gps, _record

TINY_MAP = [
    "--preset",
    "map_offline",
    "map.unet.resolution=32",
    "map.steps=3",
    "map.inversion_steps=4",
    "map.generation_steps=2",
    "map.checkpoint_every=2",
    "trainer.progress_bar=false",
]
"""The preset's network and objective at 32 px and 3 steps: the mechanics, not the quality, are under test."""


@pytest.fixture(scope="module")
def job(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> dict:
    inputs = tmp_path_factory.mktemp("inputs")
    photo = _photo_with_gps(faces_dir / "jack_dorsey" / "img16.jpg", inputs / "dorsey.jpg")
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(inputs / "wall.png")
    out = tmp_path_factory.mktemp("protected")
    photos = [str(photo), str(inputs / "broken.jpg"), str(inputs / "wall.png")]
    code = main(["protect", *photos, "--out", str(out), "--method", "map", "--expression", "happy", *TINY_MAP])
    return {"code": code, "out": out, "photo": photo}


def test_batch_keeps_going_and_reports_failures(job: dict) -> None:
    assert job["code"] == 0
    summary = json.loads((job["out"] / "summary.json").read_text())
    assert summary["counts"] == {"done": 1, "failed": 2}
    reasons = " ".join(summary["failed"].values())
    assert "cannot be read" in reasons and "no face detected" in reasons


def test_outputs_full_photo_without_metadata(job: dict) -> None:
    record = _record(job["out"], "dorsey")
    protected = Image.open(record["outputs"]["photo"])
    assert protected.format == "PNG" and protected.size == Image.open(job["photo"]).size
    assert not protected.getexif() and "exif" not in protected.info and not protected.text
    assert Image.open(record["outputs"]["before_after"]).format == "PNG"
    assert any("score network without pretrained weights" in note for note in record["notes"])


def test_change_is_confined_to_the_face(job: dict) -> None:
    record = _record(job["out"], "dorsey")
    before = load_photo(job["photo"]).rgb.astype(np.int16)  # the pixels the pipeline read
    after = load_photo(Path(record["outputs"]["photo"]), max_side=None).rgb.astype(np.int16)
    change = np.abs(after - before).max(axis=2)
    x0, y0, x1, y1 = record["faces"][0]["box"]
    w, h = x1 - x0, y1 - y0
    near_face = np.zeros(change.shape, bool)
    near_face[max(0, int(y0 - h / 2)) : int(y1 + h / 2), max(0, int(x0 - w / 2)) : int(x1 + w / 2)] = True
    assert change[~near_face].max() == 0  # delta paste-back under the face-region mask: the rest is untouched
    assert change[int(y0) : int(y1), int(x0) : int(x1)].mean() > 0.5


def test_record_has_expression_and_verdicts_from_the_saved_file(job: dict) -> None:
    [face] = _record(job["out"], "dorsey")["faces"]
    expression = face["expression"]
    assert expression["name"] == "happy"
    assert 0.0 <= expression["probability_before"] <= 1.0 and 0.0 <= expression["probability_after"] <= 1.0
    assert expression["probability_after"] != expression["probability_before"]
    assert face["map"]["steps"] == 3 and face["map"]["resumed_from_step"] == 0
    assert {"loss/identity", "loss/expression", "loss/landmark", "loss/score"} <= set(face["map"]["final_losses"])
    render = face["map"]["render"]
    assert render["network_resolution"] == 32 and render["crop_size"] == 256
    assert set(render["similarities_after"]["source"]) == {
        "mobilefacenet_casia",
        "faceres",
    }
    verdicts = face["fr"]
    assert verdicts["dlib_native"]["role"] == "held_out"
    assert {verdicts[m]["role"] for m in ("mobilefacenet_casia", "faceres")} == {"attacked"}
    for verdict in verdicts.values():
        assert verdict["verdict"] in ("protected", "recognised")  # the face is found again on the saved photo
        if verdict["metric"] == "cosine":
            assert verdict["after"] < verdict["before"] == 1.0
            assert (verdict["verdict"] == "protected") == (verdict["after"] <= verdict["threshold"])
        else:  # dlib: Euclidean distance, 0 for the original against itself
            assert verdict["after"] > verdict["before"] == 0.0
            assert (verdict["verdict"] == "protected") == (verdict["after"] >= verdict["threshold"])


def test_bad_expression_is_a_config_error_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match=r"map\.expression.*smug.*surprised"):
        compose(["preset=map_offline", "map.expression=smug"])
    argv = ["protect", "x.jpg", "--out", str(tmp_path), "--method", "map", "--expression", "smug"]
    assert main([*argv, "--preset", "map_offline"]) == 2
    assert "map.expression" in capsys.readouterr().err
    assert main(["protect", "x.jpg", "--out", str(tmp_path), "--preset", "offline", "--expression", "happy"]) == 2
    assert "--method map" in capsys.readouterr().err


def test_method_map_runs_the_expression_warp_without_the_score_network(capsys: pytest.CaptureFixture) -> None:
    if is_available(SCORE_NETWORK):
        assert default_preset("map") in ("clip2protect_photo", "offline")
    else:
        assert default_preset("map") == "warp_offline"
        assert offline_method("map", None) == "warp" and offline_method("map", "map_offline") == "map"
        assert SCORE_NETWORK in capsys.readouterr().out
    assert compose(["preset=map_offline"]).protect.method == "map"


class InterruptError(RuntimeError):
    """Stands for a crash or a kill in the middle of fine-tuning."""


class InterruptAt(L.Callback):
    """Raise after the given fine-tuning step, once that step's checkpoint (if due) is written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise InterruptError(f"interrupted after step {self.step}")


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def test_interrupted_fine_tuning_resumes_where_it_stopped(faces_dir: Path, tmp_path: Path, single_thread: None) -> None:
    overrides = ["preset=map_offline", *TINY_MAP[2:], "map.steps=4", "map.checkpoint_every=2"]
    config = compose(overrides)
    photo = load_photo(faces_dir / "jack_dorsey" / "img16.jpg")
    interrupted = build_protector(config, stage_dir=tmp_path / "resumed", callbacks=[InterruptAt(3)])
    assert isinstance(interrupted, MapProtector)
    [face] = interrupted.faces_of(photo)[:1]
    with pytest.raises(InterruptError):
        interrupted.protect_face(photo, face, "dorsey_face0")
    [checkpoint] = (tmp_path / "resumed").rglob("*.ckpt")
    assert checkpoint_step(checkpoint) == 2  # the last save before the interruption

    resumer = build_protector(config, stage_dir=tmp_path / "resumed")
    resumed = resumer.protect_face(photo, face, "dorsey_face0")
    assert resumed.record["map"]["resumed_from_step"] == 2 and resumed.record["map"]["steps"] == 4
    straight = build_protector(config, stage_dir=tmp_path / "straight").protect_face(photo, face, "dorsey_face0")
    assert straight.record["map"]["resumed_from_step"] == 0
    [straight_checkpoint] = (tmp_path / "straight").rglob("*.ckpt")

    # The per-step randomness depends only on (seed, step) and Adam and the gradient EMA are restored: on one
    # device the resumed run is bit-identical to the uninterrupted one.
    reference = _weights(straight_checkpoint)
    for name, value in _weights(checkpoint).items():
        assert torch.equal(value, reference[name]), f"{name} differs after resuming"
    assert np.array_equal(resumed.crop, straight.crop)

    again = resumer.protect_face(photo, face, "dorsey_face0")  # a finished face is only loaded, not retrained
    assert again.record["map"]["resumed_from_step"] == 4 and np.array_equal(again.crop, straight.crop)
