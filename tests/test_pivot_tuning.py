"""Pivot tuning (CLIP2Protect stage 1) with a tiny generator on real photos, through a real Lightning Trainer."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from facecloak.errors import ConfigError
from facecloak.inversion import project
from facecloak.stages.pivot_tuning import PivotTuning, image_noise, tune_images
from facecloak.stages.pivot_tuning_config import PivotTuningConfig
from facecloak.stages.tuned_generator import TuningResult, apply_deltas, tuned_parameter_names
from test_projector import FAST, TINY, load_real_faces, tiny_generator

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIG = PivotTuningConfig(steps=12, lr=5e-3, loss_size=64, perceptual="msssim")
"""The recipe with fewer steps, a larger step size and a 64 px loss so the tiny runs move visibly and fast."""

TRAINER = {"accelerator": "cpu", "enable_progress_bar": False}


@pytest.fixture(scope="module")
def photos(faces_dir: Path) -> tuple[list[str], torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Ids, photos, and the projector's pivots and noise maps for three real faces."""
    ids, images = load_real_faces(faces_dir, TINY.size)
    projected = project(tiny_generator(), images, FAST)
    return ids, images, projected.wplus, projected.noise


def _tune(
    photos, which: list[int], config: PivotTuningConfig = CONFIG, dtype: torch.dtype = torch.float32
) -> list[TuningResult]:
    ids, images, pivots, noise = photos
    return tune_images(
        tiny_generator().to(dtype),
        images[which].to(dtype),
        pivots[which].to(dtype),
        [ids[i] for i in which],
        config,
        TRAINER,
        [n[which].to(dtype) for n in noise],
    )


def _same(a: TuningResult, b: TuningResult) -> bool:
    return a.deltas.keys() == b.deltas.keys() and all(torch.equal(a.deltas[k], b.deltas[k]) for k in a.deltas)


def test_tuning_from_projected_pivots_improves_real_photo_reconstructions(photos) -> None:
    results = _tune(photos, [0, 1, 2], replace(CONFIG, batch_size=3))
    for r in results:
        print(
            f"{r.image_id}: PSNR {r.metrics['psnr_before']:.2f} -> {r.metrics['psnr_after']:.2f} dB, "
            f"loss {r.metrics['loss_before']:.4f} -> {r.metrics['loss_after']:.4f}, "
            f"{r.metrics['seconds_per_step']:.3f} s/step"
        )
        assert r.metrics["loss_after"] < 0.95 * r.metrics["loss_before"]
        assert r.metrics["psnr_after"] > r.metrics["psnr_before"] + 0.1
        assert r.metrics["steps"] == CONFIG.steps
    assert [r.image_id for r in results] == photos[0]


def test_tuning_image_b_after_image_a_equals_tuning_b_alone(photos) -> None:
    """The reference reuses one generator and optimizer for every photo; here nothing carries over."""
    generator = tiny_generator()
    base_state = {k: v.clone() for k, v in generator.state_dict().items()}
    ids, images, pivots, noise = photos
    first_a = tune_images(generator, images[[0]], pivots[[0]], [ids[0]], CONFIG, TRAINER, [n[[0]] for n in noise])
    then_b = tune_images(generator, images[[1]], pivots[[1]], [ids[1]], CONFIG, TRAINER, [n[[1]] for n in noise])
    b_alone = _tune(photos, [1])
    assert _same(then_b[0], b_alone[0])
    assert then_b[0].metrics["loss_after"] == b_alone[0].metrics["loss_after"]
    assert not _same(first_a[0], b_alone[0])
    assert all(torch.equal(base_state[k], v) for k, v in generator.state_dict().items()), "base generator changed"


def _close(a: TuningResult, b: TuningResult) -> None:
    """Equal up to one fp16 rounding step (two float64 runs can straddle a rounding boundary)."""
    for name in a.deltas:
        torch.testing.assert_close(a.deltas[name].float(), b.deltas[name].float(), atol=1e-7, rtol=1e-3)


def test_a_batch_of_two_equals_two_runs_of_one(photos) -> None:
    """In float64, so float32 round-off (which Adam amplifies where gradients are tiny) cannot hide a difference."""
    batched = _tune(photos, [0, 2], replace(CONFIG, batch_size=2), torch.float64)
    single = _tune(photos, [0, 2], replace(CONFIG, batch_size=1), torch.float64)
    for b, s in zip(batched, single):
        assert b.image_id == s.image_id
        _close(b, s)
        assert b.metrics["loss_after"] == pytest.approx(s.metrics["loss_after"], rel=1e-9)


def test_early_stop_keeps_the_offsets_that_met_the_threshold(photos) -> None:
    full = _tune(photos, [0, 1], replace(CONFIG, batch_size=2), torch.float64)
    # a threshold image 1 meets mid-run (image 0 may meet it too, at its own step)
    threshold = (full[1].metrics["perceptual_before"] + full[1].metrics["perceptual_after"]) / 2
    stopped = _tune(photos, [0, 1], replace(CONFIG, batch_size=2, early_stop_perceptual=threshold), torch.float64)
    steps = [int(r.metrics["steps"]) for r in stopped]
    assert 0 < steps[1] < CONFIG.steps
    # each image holds exactly what a run of its own step count gives: batch mates do not disturb it
    for i, (result, k) in enumerate(zip(stopped, steps)):
        _close(result, _tune(photos, [i], replace(CONFIG, steps=k), torch.float64)[0])
    # a threshold every image meets at once ends the run after one step
    instant = _tune(photos, [0, 1], replace(CONFIG, batch_size=2, early_stop_perceptual=10.0))
    assert [r.metrics["steps"] for r in instant] == [0.0, 0.0]
    assert all(d.abs().max() == 0 for r in instant for d in r.deltas.values())


def test_module_trains_only_fp16_exact_offsets_and_keeps_the_base_out() -> None:
    generator = tiny_generator()
    module = PivotTuning(generator, ["x", "y"], CONFIG)
    optimizer = module.configure_optimizers()
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in module.deltas}
    assert all(not p.requires_grad for p in module.generator.parameters())
    assert "generator" not in module.hparams and module.hparams["image_ids"] == ["x", "y"]
    assert all(not name.startswith("style.") for name in tuned_parameter_names(generator))
    module.train()
    assert not module.generator.training

    # the render of offsets delta[i] is the plain generator with weights base + delta[i]
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.deltas:
            p.normal_(std=1e-2)
    pivots = torch.randn(2, TINY.n_latent, TINY.style_dim)
    noise = [torch.cat(maps) for maps in zip(image_noise(generator, "x", 0), image_noise(generator, "y", 0))]
    with torch.no_grad():
        batched = module.render(pivots, noise)
        for i in range(2):
            deltas = {n: p[i] for n, p in zip(module.tuned_names, module.deltas)}
            alone = apply_deltas(generator, deltas).synthesis(pivots[i : i + 1], [n[i : i + 1] for n in noise])
            torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=1e-4)


def test_tuned_results_are_defined_by_their_fp16_offsets(photos) -> None:
    (result,) = _tune(photos, [2])
    assert all(d.dtype == torch.float16 for d in result.deltas.values())
    assert any(d.abs().max() > 0 for d in result.deltas.values())
    assert result.pivot.shape == (TINY.n_latent, TINY.style_dim)
    assert [tuple(n.shape) for n in result.noise] == list(tiny_generator().noise_shapes)


def test_noise_maps_depend_on_the_image_id_only() -> None:
    generator = tiny_generator()
    a1, a2, b = image_noise(generator, "a", 0), image_noise(generator, "a", 0), image_noise(generator, "b", 0)
    assert all(torch.equal(x, y) for x, y in zip(a1, a2))
    assert not torch.equal(a1[-1], b[-1])


def test_bad_arguments_are_refused(photos) -> None:
    ids, images, pivots, _ = photos
    with pytest.raises(ConfigError, match=r"pivot\.steps"):
        tune_images(tiny_generator(), images, pivots, ids, CONFIG, {"max_steps": 3})
    with pytest.raises(ValueError, match="unique id"):
        tune_images(tiny_generator(), images, pivots, ["a", "a", "b"], CONFIG, TRAINER)
    with pytest.raises(ConfigError, match="early_stop_perceptual"):
        PivotTuningConfig(early_stop_perceptual=0.0)


def _dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    return {t.dtype for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()}


def test_moving_the_run_leaves_the_shared_networks_alone() -> None:
    """Lightning's teardown moves the trained module (``.cpu()``); the job's base generator must not follow.

    On a CPU the move is observable as a dtype change: a module-wide ``.double()`` converts everything the module
    owns, and must leave the shared generator and perceptual distance as they were.
    """
    generator = tiny_generator()
    module = PivotTuning(generator, ["x"], CONFIG)
    module.double()
    assert _dtypes(generator) == {torch.float32}
    assert _dtypes(module.perceptual) <= {torch.float32}
    assert all(p.dtype == torch.float64 for p in module.deltas)
    assert not any(m is generator for m in module.modules())


@pytest.mark.parametrize("every", [1, 4])
def test_tuning_reads_device_values_only_every_n_steps(photos, monkeypatch, every) -> None:
    """The early stop holds offsets on the device; only the all-stopped check reads back, every N steps."""
    from test_latent_search import HostReads

    ids, images, pivots, noise = photos
    config = replace(CONFIG, steps=8, early_stop_perceptual=1e-9)  # a threshold no image meets: never stops
    counter = HostReads(monkeypatch)
    kwargs = {**TRAINER, "callbacks": [counter], "log_every_n_steps": every}
    results = tune_images(tiny_generator(), images[[0]], pivots[[0]], [ids[0]], config, kwargs, [n[[0]] for n in noise])
    assert results[0].metrics["steps"] == config.steps
    assert results[0].metrics["seconds_per_step"] > 0
    assert len(counter.reads) <= config.steps // every, counter.reads
