"""Per-image stage-1 artifacts: store, reload bit-identically, refuse the wrong base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from facecloak.errors import CorruptWeightsError, MissingWeightsError, WeightsError
from facecloak.inversion import project
from facecloak.losses import resize_for_loss
from facecloak.stages.artifacts import (
    artifact_paths,
    base_fingerprint,
    list_artifacts,
    load_artifact,
    save_artifact,
)
from facecloak.stages.pivot_tuning import psnr, tune_images
from facecloak.stages.tuned_generator import apply_deltas
from test_pivot_tuning import CONFIG, TRAINER
from test_projector import FAST, TINY, load_real_faces, tiny_generator

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tuned(faces_dir: Path):
    """Two real photos, projected then pivot-tuned with a tiny generator."""
    ids, images = load_real_faces(faces_dir, TINY.size, ("katy_perry", "matt_damon"))
    generator = tiny_generator()
    projected = project(generator, images, FAST)
    results = tune_images(generator, images, projected.wplus, ids, CONFIG, TRAINER, projected.noise)
    return generator, images, results


def test_store_and_reload_gives_bit_identical_stage_two_inputs(tuned, tmp_path: Path) -> None:
    base, images, results = tuned
    for result in results:
        save_artifact(tmp_path, result, base)
    assert list_artifacts(tmp_path) == sorted(r.image_id for r in results)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"

    # load in the opposite order: pairing is by id, never by position
    for result in reversed(results):
        loaded = load_artifact(tmp_path, result.image_id, base)
        expected = apply_deltas(base, result.deltas)
        assert torch.equal(loaded.pivot, result.pivot)
        assert all(torch.equal(a, b) for a, b in zip(loaded.noise, result.noise, strict=True))
        state, reference = loaded.generator.state_dict(), expected.state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in state)
        with torch.no_grad():
            image = loaded.generator.synthesis(loaded.pivot[None], loaded.noise)
            assert torch.equal(image, expected.synthesis(result.pivot[None], result.noise))
        assert loaded.metrics == result.metrics

    # the reloaded generator is the one whose reconstruction stage 1 reported
    first = load_artifact(tmp_path, results[0].image_id, base)
    with torch.no_grad():
        image = first.generator.synthesis(first.pivot[None], first.noise)
    rendered, target = resize_for_loss(image, CONFIG.loss_size), resize_for_loss(images[:1], CONFIG.loss_size)
    measured = float(psnr((rendered - target).pow(2).mean()))
    assert measured == pytest.approx(results[0].metrics["psnr_after"], abs=1e-3)


def test_a_different_base_generator_is_refused(tuned, tmp_path: Path) -> None:
    base, _, results = tuned
    save_artifact(tmp_path, results[0], base)
    other = tiny_generator()
    with torch.no_grad():
        other.convs[0].conv.weight[0, 0, 0, 0, 0] += 1e-3
    with pytest.raises(WeightsError, match="different base generator"):
        load_artifact(tmp_path, results[0].image_id, other)
    assert base_fingerprint(tiny_generator()) == base_fingerprint(base)
    assert base_fingerprint(other) != base_fingerprint(base)


def test_missing_mismatched_and_unsafe_artifacts_are_refused(tuned, tmp_path: Path) -> None:
    base, _, results = tuned
    a, b = results
    with pytest.raises(MissingWeightsError, match="run stage 1"):
        load_artifact(tmp_path, a.image_id, base)
    with pytest.raises(ValueError, match="cannot name an artifact file"):
        save_artifact(tmp_path, type(a)("../escape", a.pivot, a.noise, a.deltas), base)

    save_artifact(tmp_path, a, base)
    save_artifact(tmp_path, b, base)
    # the tensors of b under a's name: the files disagree, so nothing is loaded
    shutil.copy(artifact_paths(tmp_path, b.image_id)[0], artifact_paths(tmp_path, a.image_id)[0])
    with pytest.raises(CorruptWeightsError, match="describe different runs"):
        load_artifact(tmp_path, a.image_id, base)

    meta_path = artifact_paths(tmp_path, b.image_id)[1]
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CorruptWeightsError, match="artifact format 99"):
        load_artifact(tmp_path, b.image_id, base)


def test_artifact_size_is_fp16_offsets_plus_fp32_codes_and_noise(tuned, tmp_path: Path) -> None:
    base, _, results = tuned
    meta = json.loads(save_artifact(tmp_path, results[0], base).read_text())
    tuned_values = sum(p.numel() for name, p in base.named_parameters() if not name.startswith("style."))
    noise_values = sum(n.numel() for n in results[0].noise)
    payload = 2 * tuned_values + 4 * (noise_values + TINY.n_latent * TINY.style_dim)
    assert payload < meta["tensor_bytes"] < payload + 16_384  # plus the safetensors header
