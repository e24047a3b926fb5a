"""Mixed precision through the Trainer: both CLIP2Protect stages run under autocast (on CPU, Lightning runs 16-mixed
as bf16-mixed; fp16 autocast with a gradient scaler needs a GPU)."""

from __future__ import annotations

import math

import pytest
import torch

from facecloak.errors import ConfigError
from facecloak.faces.templates import get_template
from facecloak.losses.identity import AdversarialIdentityLoss, IdentityReference
from facecloak.models.fr.zoo import load_fr_model
from facecloak.models.stylegan2 import Generator, GeneratorConfig
from facecloak.runtime.trainer import TrainerConfig
from facecloak.stages.latent_search import search_latents
from facecloak.stages.latent_search_config import LatentSearchConfig
from facecloak.stages.pivot_tuning import tune_images
from facecloak.stages.pivot_tuning_config import PivotTuningConfig

pytestmark = pytest.mark.usefixtures("single_thread")
TINY = GeneratorConfig(size=64, style_dim=64, n_mlp=2, channel_base=512, channel_max=32)
MIXED = ("bf16-mixed", "16-mixed")


@pytest.fixture(scope="module")
def setup() -> dict:
    torch.manual_seed(0)
    generator = Generator(TINY).eval().requires_grad_(False)
    with torch.no_grad():
        w = generator.mapping(torch.randn(1, TINY.style_dim))
        pivots = w[:, None].repeat(1, generator.n_latent, 1)
        noise = generator.make_noise(1, generator=torch.Generator().manual_seed(1))
        target = generator.synthesis(pivots + 0.2, noise).clamp(-1, 1)
    landmarks = torch.as_tensor(get_template("arcface_112").scaled(TINY.size).points_array()).float()[None]
    return {"generator": generator, "pivots": pivots, "noise": noise, "target": target, "landmarks5": landmarks}


@pytest.mark.parametrize("precision", MIXED)
def test_pivot_tuning_runs_under_mixed_precision(setup: dict, precision: str) -> None:
    trainer = {"accelerator": "cpu", "precision": precision, "enable_progress_bar": False}
    config = PivotTuningConfig(steps=3, perceptual="msssim", loss_size=64)
    [result] = tune_images(setup["generator"], setup["target"], setup["pivots"], ["a"], config, trainer, setup["noise"])
    assert math.isfinite(result.metrics["psnr_after"])
    assert all(torch.isfinite(d).all() for d in result.deltas.values())
    assert any(d.abs().max() > 0 for d in result.deltas.values())  # the weights moved under autocast


@pytest.mark.parametrize("precision", MIXED)
def test_latent_search_runs_under_mixed_precision(setup: dict, precision: str) -> None:
    model = load_fr_model("mobilefacenet_casia")
    identity = AdversarialIdentityLoss([model], "dodge")
    with torch.no_grad():
        render01 = (setup["generator"].synthesis(setup["pivots"], setup["noise"]) + 1) / 2
        source = identity.embed(render01, setup["landmarks5"])
    config = LatentSearchConfig(identity_mode="dodge", lambda_clip=0.0, steps=3, early_stop=False, lr=0.05)
    trainer = {"accelerator": "cpu", "precision": precision}
    [result] = search_latents(
        setup["generator"], setup["pivots"], setup["noise"], setup["landmarks5"], ["a"], identity,
        IdentityReference(source), {model.name: -1.0}, config, trainer,
    )  # fmt: skip
    assert torch.isfinite(result.image).all() and result.image.dtype == torch.float32
    before, after = result.similarities_before["source"], result.similarities_after["source"]
    assert after[model.name] < before[model.name]


def test_unsupported_precision_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"trainer\.precision"):
        TrainerConfig(precision="bf16-true")
