"""``protect.batch_faces``: faces of several photos share each stage's run, and each still gets batch-1 results.

The stages are compared in float64 on real photos with the job's own protector (tiny generator, scale=smoke): in
float32 the last-bit differences between batched and single kernels flip the sign of near-zero gradient entries in
Adam's first steps, which would hide any real coupling between faces.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from facecloak.cli.main import main
from facecloak.config.compose import compose
from facecloak.errors import ConfigError
from facecloak.io.images import load_photo
from facecloak.protect.clip2protect import AlignedWork, Protector
from facecloak.protect.job import DONE, ENTRIES_DIR, FAILED, STAGE_DIR_NAME, JobManifest
from facecloak.protect.methods import build_protector
from facecloak.protect.runner import unfinished
from test_protect import TINY

pytestmark = pytest.mark.usefixtures("single_thread")

PEOPLE = ("jack_dorsey/img16.jpg", "katy_perry/img26.jpg")


@pytest.fixture(scope="module")
def protector64(faces_dir: Path) -> tuple[Protector, list[AlignedWork], list[str], list[Any]]:
    """The job's CLIP2Protect protector with every network in float64, two aligned faces, and their batched stage 1."""
    protector = build_protector(compose([*TINY, "generator.inversion=projector"]))
    assert isinstance(protector, Protector)
    protector.generator.double()
    protector.identity = copy.deepcopy(protector.identity).double()  # the process shares the loaded FR models
    for kind in {protector.config.generator.projector.perceptual, protector.config.pivot.perceptual}:
        protector.perceptual(kind).double()
    works, ids = [], []
    for person in PEOPLE:
        photo = load_photo(faces_dir / person)
        work = protector.align(photo, protector.faces_of(photo)[0])
        work.crop01, work.landmarks5 = work.crop01.double(), work.landmarks5.double()
        works.append(work)
        ids.append(person.replace("/", "_").removesuffix(".jpg"))
    return protector, works, ids, protector.invert_and_tune(works, ids)


def _same_generator(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_batched_stages_equal_batch_one_runs(protector64) -> None:
    """Stage 1 (one projector run, one pivot-tuning run) and the search (one run) on two faces vs one face each."""
    protector, works, ids, together = protector64
    alone = [protector.invert_and_tune([w], [i])[0] for w, i in zip(works, ids)]
    for both, single in zip(together, alone):
        torch.testing.assert_close(both.pivot, single.pivot, atol=1e-12, rtol=0)
        for a, b in zip(both.noise, single.noise):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
        assert _same_generator(both.generator, single.generator)  # each face its own tuned copy, same fp16 offsets
        assert both.metrics["loss_after"] == pytest.approx(single.metrics["loss_after"], rel=1e-9)
    assert not _same_generator(together[0].generator, together[1].generator)

    searched = protector.search(works, together, ids)
    for index, (work, stage1, face_id) in enumerate(zip(works, together, ids)):
        [single] = protector.search([work], [stage1], [face_id])
        assert float((single.wplus - stage1.pivot).abs().max()) > 1e-3  # it moved
        torch.testing.assert_close(searched[index].wplus, single.wplus, atol=1e-12, rtol=0)
        torch.testing.assert_close(searched[index].image, single.image, atol=1e-12, rtol=0)
        for model, value in single.similarities_after["source"].items():
            assert searched[index].similarities_after["source"][model] == pytest.approx(value, rel=1e-9)


def test_a_face_that_stops_early_stops_changing_while_its_batch_mate_continues(protector64) -> None:
    """Thresholds one face meets after the last step of a run: one step more, it stops there and the other goes on."""
    protector, works, ids, stage1 = protector64
    before = protector.search(works, stage1, ids)
    model = protector.attacked[0].name
    stopper = int(np.argmin([r.similarities_after["source"][model] for r in before]))
    mate = 1 - stopper
    reached = before[stopper].similarities_after["source"]
    assert any(before[mate].similarities_after["source"][name] > reached[name] for name in reached)
    config, thresholds = protector.config, dict(protector.thresholds)
    steps, margin = config.search.steps, config.search.early_stop_margin
    protector.config = replace(config, search=replace(config.search, steps=steps + 1))
    protector.thresholds = {
        name: replace(t, value=reached[name] + margin + 1e-9) if name in reached else t
        for name, t in thresholds.items()
    }
    try:
        searched = protector.search(works, stage1, ids)
        [mate_alone] = protector.search([works[mate]], [stage1[mate]], [ids[mate]])
    finally:
        protector.config, protector.thresholds = config, thresholds
    assert searched[stopper].stopped_at == steps and searched[mate].stopped_at == -1
    torch.testing.assert_close(searched[stopper].wplus, before[stopper].wplus, atol=1e-12, rtol=0)  # stopped changing
    assert float((searched[mate].wplus - before[mate].wplus).abs().max()) > 1e-4  # kept going
    torch.testing.assert_close(searched[mate].wplus, mate_alone.wplus, atol=1e-12, rtol=0)


def test_pivot_tuning_stops_each_face_of_a_batch_on_its_own(protector64) -> None:
    protector, works, ids, stage1 = protector64
    losses = [s.metrics["perceptual_before"] for s in stage1]
    stopper, mate = int(np.argmin(losses)), int(np.argmax(losses))
    config = protector.config
    protector.config = replace(config, pivot=replace(config.pivot, early_stop_perceptual=min(losses) + 1e-9))
    try:
        stopped = protector.invert_and_tune(works, ids)
        [mate_alone] = protector.invert_and_tune([works[mate]], [ids[mate]])
    finally:
        protector.config = config
    assert stopped[stopper].metrics["steps"] == 0
    assert _same_generator(stopped[stopper].generator, protector.generator)  # its offsets never left zero
    assert stopped[mate].metrics["steps"] > 0 and not _same_generator(stopped[mate].generator, protector.generator)
    assert stopped[mate].metrics["steps"] == mate_alone.metrics["steps"]
    assert _same_generator(stopped[mate].generator, mate_alone.generator)  # unaffected by its stopped batch-mate


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.png"))}


@pytest.fixture(scope="module")
def batched_job(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One batch of four photos: two people, an unreadable file and a photo without a face."""
    inputs = tmp_path_factory.mktemp("batch_inputs")
    photos = []
    for person in PEOPLE:
        photos.append(inputs / person.replace("/", "_"))
        shutil.copy(faces_dir / person, photos[-1])
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(inputs / "wall.png")
    photos[1:1] = [inputs / "broken.jpg", inputs / "wall.png"]  # the failures sit between the two faces
    out = tmp_path_factory.mktemp("batched")
    args = ["protect", *map(str, photos), "--out", str(out), *TINY, "protect.batch_faces=4"]
    return {"code": main(args), "out": out, "args": args}


def test_failing_photos_do_not_cost_their_batch_mates(batched_job) -> None:
    assert batched_job["code"] == 0
    summary = json.loads((batched_job["out"] / "summary.json").read_text())
    assert summary["counts"] == {"done": 2, "failed": 2}
    reasons = " ".join(summary["failed"].values())
    assert "cannot be read" in reasons and "no face detected" in reasons
    records = [json.loads(p.read_text()) for p in sorted(batched_job["out"].glob("*_img*.json"))]
    assert len(records) == 2 and all(r["faces"][0]["search"]["similarities_after"] for r in records)


def test_a_killed_batched_job_resumes_photo_by_photo(batched_job, tmp_path: Path) -> None:
    """Recorded photos are skipped; a batch a kill cut short is redone as it was batched, to the same bytes."""
    expected = _digests(batched_job["out"])
    assert len(expected) == 4
    resumed = tmp_path / "resumed"
    shutil.copytree(batched_job["out"], resumed)
    args = [a if a != str(batched_job["out"]) else str(resumed) for a in batched_job["args"]]
    entries = sorted((resumed / ENTRIES_DIR).glob("*_img*.json"))
    written = [p.stat().st_mtime_ns for p in entries]
    assert main(args) == 0  # a finished job: nothing to redo but the two failures
    assert [p.stat().st_mtime_ns for p in entries] == written

    # Killed after the first photo of the batch was recorded: the batch is redone with the same faces.
    first, second = entries
    second.unlink()
    assert main(args) == 0
    assert _digests(resumed) == expected and second.exists()
    assert first.stat().st_mtime_ns != written[0]  # redone with its batch-mate, not skipped

    # Killed while writing the batch's stage-1 artifacts: one face has its artifact, nothing was recorded.
    [artifact, *_] = sorted((resumed / STAGE_DIR_NAME).glob(f"{second.stem}*.json"))
    artifact.unlink()
    first.unlink()
    second.unlink()
    assert main(args) == 0
    assert _digests(resumed) == expected  # the same batch reran, bit for bit


def test_only_a_batch_cut_short_reopens_its_recorded_photos(tmp_path: Path) -> None:
    manifest = JobManifest.open(tmp_path, "fingerprint")
    manifest.record("a", DONE, batch=["a", "b", "c"])
    manifest.record("b", FAILED)  # failures are retried alone; they never reopen their batch
    manifest.record("c", DONE, batch=["a", "b", "c"])
    manifest.record("d", DONE, batch=["d", "e"])  # killed before e was recorded
    assert unfinished(manifest, ["a", "b", "c", "d", "e", "f"]) == ["b", "d", "e", "f"]  # f: added to the job


def test_batch_faces_is_validated_with_the_key_named() -> None:
    with pytest.raises(ConfigError, match=r"protect\.batch_faces"):
        compose([*TINY, "protect.batch_faces=0"])
    with pytest.raises(ConfigError, match=r"protect\.batch_faces.*one face at a time"):
        compose(["preset=map_offline", "scale=smoke", "protect.method=map", "protect.batch_faces=2"])
