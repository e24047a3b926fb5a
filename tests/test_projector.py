"""Optimisation projector and perceptual distances, on a tiny generator and real photos."""

from __future__ import annotations

import csv
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from facecloak.errors import ConfigError, CorruptWeightsError, MissingWeightsError
from facecloak.inversion import ProjectorConfig, project
from facecloak.inversion.projector import learning_rate, noise_regularization, normalize_noise_, per_image_mse
from facecloak.losses import LPIPSDistance, MSSSIMDistance, build_perceptual, resize_for_loss
from facecloak.models.stylegan2 import Generator, GeneratorConfig

pytestmark = pytest.mark.usefixtures("single_thread")

PEOPLE = ("angelina_jolie", "elon_musk", "jeff_bezos")
"""Three different people from the shared photos; the first listed photo of each is used."""

FACE_BOX = (0.55, 0.32)
"""Crude face crop (no alignment module yet): a square of 55% of the short side, centred horizontally at 32% of
the height; the shared photos are upper-body portraits with the face in the upper middle."""

TINY = GeneratorConfig(size=32, style_dim=32, n_mlp=2, channel_base=1024, channel_max=32)


def load_real_faces(faces_dir: Path, size: int, people: tuple[str, ...] = PEOPLE) -> tuple[list[str], torch.Tensor]:
    """Ids and crudely cropped face photos ``[N, 3, size, size]`` in [-1, 1]."""
    with open(faces_dir / "labels.csv") as f:
        first = {}
        for row in csv.DictReader(f):
            first.setdefault(row["identity"], row["path"])
    ids, images = [], []
    for person in people:
        photo = Image.open(faces_dir / first[person]).convert("RGB")
        w, h = photo.size
        side = FACE_BOX[0] * min(w, h)
        cy = min(max(FACE_BOX[1] * h, side / 2), h - side / 2)
        box = (w / 2 - side / 2, cy - side / 2, w / 2 + side / 2, cy + side / 2)
        crop = photo.resize((size, size), Image.Resampling.LANCZOS, box=box)
        images.append(torch.from_numpy(np.asarray(crop, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
        ids.append(Path(first[person]).with_suffix("").as_posix().replace("/", "_"))
    return ids, torch.stack(images)


def tiny_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(TINY).eval()


FAST = ProjectorConfig(steps=25, lr=0.1, loss_size=64, n_mean_latent=500, perceptual="msssim", seed=3)


@pytest.fixture(scope="module")
def faces(faces_dir: Path) -> tuple[list[str], torch.Tensor]:
    return load_real_faces(faces_dir, TINY.size)


# --- perceptual distances --------------------------------------------------------------------------------------------


def test_msssim_distance_is_per_image_zero_for_identical_and_differentiable() -> None:
    torch.manual_seed(0)
    x = (torch.rand(3, 3, 64, 64) * 2 - 1).requires_grad_(True)
    y = torch.rand(3, 3, 64, 64) * 2 - 1
    d = MSSSIMDistance()
    assert torch.allclose(d(y, y), torch.zeros(3), atol=1e-6)
    value = d(x, y)
    assert value.shape == (3,) and bool((value > 0.1).all())
    value.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # one image's distance does not depend on its batch mates
    assert torch.allclose(d(x[:1], y[:1]), value[:1], atol=1e-6)


def test_auto_logs_the_fallback_and_explicit_lpips_without_weights_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FACECLOAK_CHECKPOINTS", str(tmp_path))
    monkeypatch.setenv("FACECLOAK_WEIGHTS_PATH", "")
    with caplog.at_level(logging.INFO, logger="facecloak.losses.perceptual"):
        chosen = build_perceptual("auto")
    assert isinstance(chosen, MSSSIMDistance)
    assert "MS-SSIM" in caplog.text and "facecloak weights fetch lpips_vgg" in caplog.text
    with pytest.raises(MissingWeightsError, match="facecloak weights fetch lpips_vgg"):
        build_perceptual("lpips_vgg")
    with pytest.raises(ConfigError, match="perceptual must be one of"):
        build_perceptual("lpips_alex")


def test_lpips_vgg_loads_a_torchvision_vgg16_file_strictly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with torch.device("meta"):  # shapes only: initialising VGG-16 for real takes seconds
        shapes = {k: v.shape for k, v in torchvision.models.vgg16(weights=None).features.state_dict().items()}
    features = {f"features.{k}": torch.randn(shape) * 0.05 for k, shape in shapes.items()}
    path = tmp_path / "vgg16.pth"
    torch.save(features, path)
    distance = LPIPSDistance(path)
    loaded = distance.net.net.state_dict()
    assert torch.equal(loaded["slice1.0.weight"], features["features.0.weight"])
    assert torch.equal(loaded["slice5.28.bias"], features["features.28.bias"])
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    assert distance(x, y).shape == (2,)
    assert torch.allclose(distance(x, x), torch.zeros(2), atol=1e-6)
    distance.train()
    assert not distance.training

    torch.save({"classifier.0.weight": torch.zeros(1)}, path)
    with pytest.raises(CorruptWeightsError, match="VGG-16"):
        LPIPSDistance(path)


def test_resize_for_loss_averages_when_shrinking() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(resize_for_loss(x, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    assert resize_for_loss(x, 8).shape[-1] == 8


# --- pieces of the recipe --------------------------------------------------------------------------------------------


def test_learning_rate_ramps_up_and_down() -> None:
    assert learning_rate(0.0, 0.1, 0.05, 0.25) == 0.0
    assert learning_rate(0.5, 0.1, 0.05, 0.25) == pytest.approx(0.1)
    assert learning_rate(0.025, 0.1, 0.05, 0.25) == pytest.approx(0.05)
    assert learning_rate(0.875, 0.1, 0.05, 0.25) == pytest.approx(0.05)


def test_noise_regularization_and_normalization_are_per_image() -> None:
    torch.manual_seed(0)
    smooth = torch.ones(1, 1, 16, 16) + 0.01 * torch.randn(1, 1, 16, 16)
    white = torch.randn(1, 1, 16, 16)
    reg = noise_regularization([torch.cat([smooth, white])])
    assert reg.shape == (2,) and reg[0] > 100 * reg[1]
    maps = [torch.cat([smooth * 5 + 3, white])]
    normalize_noise_(maps)
    assert torch.allclose(maps[0].mean((1, 2, 3)), torch.zeros(2), atol=1e-4)
    assert torch.allclose(maps[0].std((1, 2, 3)), torch.ones(2), atol=1e-5)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="steps"):
        ProjectorConfig(steps=0)
    with pytest.raises(ConfigError, match="lr_rampdown"):
        ProjectorConfig(lr_rampdown=0)
    with pytest.raises(ConfigError, match="perceptual"):
        ProjectorConfig(perceptual="vgg")


# --- projection on real photos ---------------------------------------------------------------------------------------


def test_projection_reduces_the_loss_on_real_photos_and_is_deterministic(faces) -> None:
    _, images = faces
    generator = tiny_generator()
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    # one step at t = 0 has learning rate 0: the loss of the mean-latent start
    start = project(generator, images, replace(FAST, steps=1))
    result = project(generator, images, FAST)
    again = project(generator, images, FAST)

    assert result.wplus.shape == (3, TINY.n_latent, TINY.style_dim)
    assert [tuple(n.shape) for n in result.noise] == [(3, *s[1:]) for s in generator.noise_shapes]
    loss_start = start.perceptual + FAST.mse_weight * start.mse
    loss_end = result.perceptual + FAST.mse_weight * result.mse
    assert bool((loss_end < 0.9 * loss_start).all()), (loss_start, loss_end)
    assert torch.equal(result.wplus, again.wplus)
    assert all(torch.equal(a, b) for a, b in zip(result.noise, again.noise))
    # projected noise maps stay normalised, and the generator is untouched (no grads, same weights)
    assert torch.allclose(result.noise[-1].std((1, 2, 3)), torch.ones(3), atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in generator.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in generator.parameters())


def test_refinement_from_given_codes_improves_on_them(faces) -> None:
    _, images = faces
    generator = tiny_generator()
    coarse = project(generator, images[:2], FAST)
    refine = replace(FAST, lr=0.01, latent_noise=0.0, optimize_noise=False)
    refined = project(generator, images[:2], refine, init_wplus=coarse.wplus)
    with torch.no_grad():
        target = resize_for_loss(images[:2], FAST.loss_size)
        first = resize_for_loss(generator.synthesis(coarse.wplus, refined.noise), FAST.loss_size)
        first_loss = MSSSIMDistance()(first, target) + FAST.mse_weight * per_image_mse(first, target)
    assert bool((refined.perceptual + FAST.mse_weight * refined.mse < first_loss).all())
