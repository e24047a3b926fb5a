"""A tiny StyleGAN2 generator built by the same code as the full one: forward/backward, API, checkpoint I/O."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from facecloak.errors import ConfigError, CorruptWeightsError, MissingWeightsError
from facecloak.models.stylegan2 import (
    Generator,
    GeneratorConfig,
    load_stylegan2_checkpoint,
    save_stylegan2_checkpoint,
)

TINY = GeneratorConfig(size=32, style_dim=16, n_mlp=2, channel_max=16)


@pytest.fixture
def tiny() -> Generator:
    torch.manual_seed(0)
    g = Generator(TINY)
    with torch.no_grad():  # non-zero noise strengths so noise handling is visible in the output
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.5)
    return g.eval()


def test_shapes_and_counts(tiny: Generator) -> None:
    assert (tiny.n_latent, tiny.num_layers) == (8, 7)
    assert [s[-1] for s in tiny.noise_shapes] == [4, 8, 8, 16, 16, 32, 32]
    noise = tiny.make_noise(batch=3)
    assert [tuple(n.shape) for n in noise] == [(3, *s[1:]) for s in tiny.noise_shapes]
    assert [tuple(n.shape) for n in tiny.buffer_noise()] == tiny.noise_shapes


def test_forward_backward(tiny: Generator) -> None:
    wplus = torch.randn(2, tiny.n_latent, TINY.style_dim, requires_grad=True)
    image = tiny.synthesis(wplus, tiny.make_noise(batch=2))
    assert image.shape == (2, 3, 32, 32)
    image.square().mean().backward()
    assert wplus.grad is not None and torch.isfinite(wplus.grad).all() and wplus.grad.abs().sum() > 0
    for name, p in tiny.named_parameters():
        if name.startswith("style."):  # the mapping network is not on the W+ path
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_z_path_and_noise_semantics(tiny: Generator) -> None:
    z = torch.randn(2, TINY.style_dim)
    w = tiny.mapping(z)
    wplus = w.unsqueeze(1).repeat(1, tiny.n_latent, 1)
    noise = tiny.make_noise(batch=2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        via_z, latents = tiny([z], noise=noise, return_latents=True)
        via_w, none = tiny([w], input_is_latent=True, noise=noise)
        explicit = tiny.synthesis(wplus, noise)
        buffers_a = tiny([wplus], input_is_latent=True, randomize_noise=False)[0]
        buffers_b = tiny.synthesis(wplus)
        random_a = tiny([wplus], input_is_latent=True)[0]
        random_b = tiny([wplus], input_is_latent=True)[0]
    assert none is None and torch.equal(latents, wplus)
    assert torch.equal(via_z, explicit) and torch.equal(via_w, explicit)
    assert torch.equal(buffers_a, buffers_b)
    assert not torch.equal(random_a, random_b) and not torch.equal(buffers_a, explicit)


def test_truncation_pulls_towards_the_mean(tiny: Generator) -> None:
    w = torch.randn(1, TINY.style_dim)
    mean = torch.randn(1, TINY.style_dim)
    with torch.no_grad():
        truncated, latents = tiny(
            [w],
            input_is_latent=True,
            truncation=0.0,
            truncation_latent=mean,
            randomize_noise=False,
            return_latents=True,
        )
        at_mean = tiny.synthesis(mean.unsqueeze(1).repeat(1, tiny.n_latent, 1))
    assert torch.allclose(latents, mean.unsqueeze(1).expand_as(latents))
    assert torch.allclose(truncated, at_mean)
    with pytest.raises(ValueError, match="truncation_latent"):
        tiny([w], input_is_latent=True, truncation=0.5)


def test_per_sample_weight_delta_equals_a_modified_copy(tiny: Generator) -> None:
    """The batched pivot-tuning hook: sample b rendered with weight + delta_b equals a generator holding that weight."""
    wplus = torch.randn(2, tiny.n_latent, TINY.style_dim)
    name = "convs.2.conv.weight"
    weight = dict(tiny.named_parameters())[name]
    delta = torch.zeros(2, *weight.shape[1:])
    delta[1] = 0.3 * torch.randn(weight.shape[1:])
    with torch.no_grad():
        plain = tiny.synthesis(wplus)
        shifted = tiny.synthesis(wplus, weight_deltas={name: delta})
        weight += delta[1]
        reference = tiny.synthesis(wplus[1:])
    assert torch.equal(shifted[0], plain[0])
    assert (shifted[1] - plain[1]).abs().max() > 1e-3
    assert torch.allclose(shifted[1:], reference, atol=1e-5)
    with pytest.raises(ValueError, match="weight_deltas"):
        tiny.synthesis(wplus, weight_deltas={"convs.2.conv.modulation.weight": delta})


def test_bad_inputs_and_config() -> None:
    with pytest.raises(ConfigError, match="power of two"):
        GeneratorConfig(size=48, style_dim=16, n_mlp=2)
    with pytest.raises(ConfigError, match="style_dim"):
        GeneratorConfig(size=32, style_dim=0, n_mlp=2)
    g = Generator(TINY)
    with pytest.raises(ValueError, match="wplus"):
        g.synthesis(torch.zeros(1, 3, TINY.style_dim))
    with pytest.raises(ValueError, match="noise"):
        g.synthesis(torch.zeros(1, g.n_latent, TINY.style_dim), noise=g.make_noise()[:-1])


def test_checkpoint_round_trip(tiny: Generator, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    latent_avg = torch.randn(TINY.style_dim)
    save_stylegan2_checkpoint(path, tiny, latent_avg)
    loaded, loaded_avg = load_stylegan2_checkpoint(path)  # configuration inferred from the keys
    assert loaded.config == TINY and not loaded.training
    assert torch.equal(loaded_avg, latent_avg)
    assert all(torch.equal(a, b) for a, b in zip(tiny.state_dict().values(), loaded.state_dict().values()))
    assert list(tiny.state_dict()) == list(loaded.state_dict())
    assert all(p.requires_grad for p in loaded.parameters())
    wplus = torch.randn(2, tiny.n_latent, TINY.style_dim)
    with torch.no_grad():
        assert torch.equal(loaded.synthesis(wplus), tiny.synthesis(wplus))
    explicit, _ = load_stylegan2_checkpoint(path, config=TINY)
    assert explicit.config == TINY


def test_checkpoint_wrong_layouts(tiny: Generator, tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError):
        load_stylegan2_checkpoint(tmp_path / "absent.pt")

    no_g_ema = tmp_path / "no_g_ema.pt"
    torch.save({"g": tiny.state_dict(), "latent_avg": torch.zeros(TINY.style_dim)}, no_g_ema)
    with pytest.raises(CorruptWeightsError, match="g_ema"):
        load_stylegan2_checkpoint(no_g_ema)

    bare = tmp_path / "bare.pt"
    torch.save(tiny.state_dict(), bare)
    with pytest.raises(CorruptWeightsError, match="bare generator state dict"):
        load_stylegan2_checkpoint(bare)

    other_size = tmp_path / "other_size.pt"
    save_stylegan2_checkpoint(other_size, tiny)
    with pytest.raises(CorruptWeightsError, match="32 px"):
        load_stylegan2_checkpoint(other_size, config=GeneratorConfig(size=64, style_dim=16, n_mlp=2, channel_max=16))

    other_width = GeneratorConfig(size=32, style_dim=16, n_mlp=2, channel_max=8)
    with pytest.raises(CorruptWeightsError, match="do not match"):
        load_stylegan2_checkpoint(other_size, config=other_width)

    truncated = tmp_path / "truncated.pt"
    state = tiny.state_dict()
    del state["to_rgbs.1.conv.weight"]
    torch.save({"g_ema": state}, truncated)
    with pytest.raises(CorruptWeightsError, match=re.escape("to_rgbs.1.conv.weight")):
        load_stylegan2_checkpoint(truncated)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a torch file")
    with pytest.raises(CorruptWeightsError):
        load_stylegan2_checkpoint(garbage)
