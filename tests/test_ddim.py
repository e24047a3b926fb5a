"""The noise schedule, DDIM inversion/generation and the UNet's config/serialisation, on a tiny real UNet."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from facecloak.diffusion import (
    NoiseSchedule,
    ScheduleConfig,
    ddim_generate,
    ddim_invert,
    ddim_timesteps,
    iter_ddim_generation,
)
from facecloak.errors import ConfigError
from facecloak.models.ddpm import DDPMConfig, DDPMUNet

TINY = DDPMConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16)


@pytest.fixture(scope="module")
def unet() -> DDPMUNet:
    torch.manual_seed(0)
    return DDPMUNet(TINY).eval()


@pytest.fixture(scope="module")
def x0() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 16, 16, generator=g) * 2 - 1


# --- schedule ---------------------------------------------------------------------------------------------------------


def test_schedule_matches_closed_forms() -> None:
    schedule = NoiseSchedule()
    T, start, end = 1000, 1e-4, 0.02
    beta = [start + (end - start) * s / (T - 1) for s in range(T)]
    for t in (0, 1, 250, 500, 999):
        expected = math.prod(1 - b for b in beta[: t + 1])
        assert schedule.alphas_cumprod[t].item() == pytest.approx(expected, rel=1e-12)
    assert schedule.alphas_cumprod[0].item() == pytest.approx(0.9999, abs=1e-12)
    assert schedule.alphas_cumprod[-1].item() == pytest.approx(4.036e-5, rel=1e-3)  # ᾱ_T of Ho et al.'s schedule
    # Fixed-small variance β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t): zero at t = 0, below β_t after.
    t = 500
    a, a_prev = schedule.alphas_cumprod[t], schedule.alphas_cumprod[t - 1]
    assert schedule.posterior_variance[t].item() == pytest.approx((beta[t] * (1 - a_prev) / (1 - a)).item())
    assert schedule.posterior_variance[0].item() == 0.0
    assert bool((schedule.posterior_variance[1:] < schedule.betas[1:]).all())


def test_schedule_from_reference_config_section() -> None:
    section = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "num_diffusion_timesteps": 1000}
    assert NoiseSchedule.from_config(section).config == ScheduleConfig()
    with pytest.raises(ConfigError, match="beta_schedule"):
        NoiseSchedule.from_config({**section, "beta_schedule": "cosine"})
    with pytest.raises(ConfigError, match="unknown"):
        NoiseSchedule.from_config({**section, "betas": 3})


def test_add_noise_statistics() -> None:
    schedule = NoiseSchedule()
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((4, 1, 128, 128), 0.7)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 100, 500, 999])
    xt = schedule.add_noise(x0, noise, t)
    for i, step in enumerate(t.tolist()):
        a = schedule.alphas_cumprod[step].item()
        assert xt[i].mean().item() == pytest.approx(math.sqrt(a) * 0.7, abs=0.01)
        assert xt[i].std().item() == pytest.approx(math.sqrt(1 - a), rel=0.02, abs=1e-3)
    # Float timesteps (as DiffAM passes them) and the clean index -1.
    assert torch.equal(schedule.add_noise(x0, noise, t.float()), xt)
    assert torch.equal(schedule.add_noise(x0, noise, torch.tensor(-1)), x0)
    with pytest.raises(ValueError, match="timesteps"):
        schedule.add_noise(x0, noise, torch.tensor(1000))


def test_ddim_timesteps_follow_reference() -> None:
    schedule = NoiseSchedule()
    seq = ddim_timesteps(schedule, 500, 40)
    assert seq[0] == 0 and seq[-1] == 500 and len(seq) == 40
    assert seq[1] == int(500 / 39)
    with pytest.raises(ValueError, match="t0"):
        ddim_timesteps(schedule, 1000, 40)


# --- DDIM -------------------------------------------------------------------------------------------------------------


def test_ddim_inversion_then_generation_reconstructs(unet: DDPMUNet, x0: torch.Tensor) -> None:
    schedule = NoiseSchedule()
    errors = {}
    with torch.no_grad():
        # The reference takes x0 as the sample at t = 0 on the way up but ends at ᾱ = 1 on the way down, so the
        # exact round-trip target is the clean estimate made from x0 at t = 0 (an O(sqrt(β_0)·ε) offset).
        target = schedule.predict_x0(x0, unet(x0, torch.zeros(2)), 0)
        for steps in (5, 50):
            latent = ddim_invert(unet, schedule, x0, t0=100, num_steps=steps)
            assert (latent - x0).abs().max() > 0.3  # the latent really is noisy
            recon = ddim_generate(unet, schedule, latent, t0=100, num_steps=steps)
            errors[steps] = (recon - target).abs().max().item()
    assert (recon - x0).abs().max() < 0.03
    assert errors[50] < 0.01
    assert errors[50] < 0.2 * errors[5]  # first-order convergence in the step size


def test_ddim_is_batched(unet: DDPMUNet, x0: torch.Tensor) -> None:
    schedule = NoiseSchedule()
    with torch.no_grad():
        both = ddim_invert(unet, schedule, x0, t0=50, num_steps=4)
        second = ddim_invert(unet, schedule, x0[1:], t0=50, num_steps=4)
    torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=0)


def test_gradient_flows_from_ddim_output_to_unet(unet: DDPMUNet, x0: torch.Tensor) -> None:
    schedule = NoiseSchedule()
    latent = ddim_invert(unet, schedule, x0, t0=60, num_steps=4)
    assert not latent.requires_grad
    grads = {}
    for mode in ("full", "checkpoint", "detach"):
        unet.zero_grad(set_to_none=True)
        out = ddim_generate(unet, schedule, latent, t0=60, num_steps=4, grad_mode=mode)
        out.square().mean().backward()
        grads[mode] = {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}
        assert len(grads[mode]) == len(list(unet.parameters())), f"{mode}: some parameters got no gradient"
        assert all(bool(g.isfinite().all()) for g in grads[mode].values())
        assert sum(g.abs().sum().item() for g in grads[mode].values()) > 0
    unet.zero_grad(set_to_none=True)
    for name, g in grads["full"].items():
        torch.testing.assert_close(grads["checkpoint"][name], g, atol=1e-6, rtol=1e-4)
    # Detaching between steps drops the paths through earlier steps, so its gradient differs.
    assert any(not torch.allclose(grads["detach"][n], g) for n, g in grads["full"].items())


def test_per_step_generation_yields_each_step(unet: DDPMUNet, x0: torch.Tensor) -> None:
    schedule = NoiseSchedule()
    steps = list(iter_ddim_generation(unet, schedule, x0, t0=30, num_steps=3, grad_mode="none"))
    assert [(s.t, s.t_next) for s in steps] == [(30, 15), (15, 0), (0, -1)]
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
    torch.testing.assert_close(steps[-1].x, steps[-1].x0_pred)  # the last step lands on the clean estimate


# --- UNet config and serialisation ------------------------------------------------------------------------------------


def test_wrong_spatial_size_is_a_clear_error(unet: DDPMUNet) -> None:
    with pytest.raises(ValueError, match=r"\[B, 3, 16, 16\].*resize"):
        unet(torch.zeros(1, 3, 32, 32), torch.tensor([10]))
    with pytest.raises(ValueError, match="timesteps"):
        unet(torch.zeros(2, 3, 16, 16), torch.tensor([1, 2, 3]))


def test_scalar_timestep_broadcasts(unet: DDPMUNet, x0: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(unet(x0, 7), unet(x0, torch.tensor([7.0, 7.0])), atol=0, rtol=0)


def test_bad_config_values_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"ddpm\.ch="):
        DDPMConfig(ch=48)
    with pytest.raises(ConfigError, match="resolution"):
        DDPMConfig(resolution=100)
    with pytest.raises(ConfigError, match="attn_resolutions"):
        DDPMConfig(attn_resolutions=(17,))
    with pytest.raises(ConfigError, match="unknown"):
        DDPMConfig.from_dict({"ch": 32, "channels": 3})


def test_save_pretrained_round_trip_is_bit_identical(unet: DDPMUNet, x0: torch.Tensor, tmp_path: Path) -> None:
    unet.save_pretrained(tmp_path / "ddpm")
    assert json.loads((tmp_path / "ddpm" / "config.json").read_text()) == TINY.to_dict()
    loaded = DDPMUNet.from_pretrained(tmp_path / "ddpm")
    assert loaded.config == TINY and DDPMConfig.from_dict(TINY.to_dict()) == TINY
    ours, theirs = unet.state_dict(), loaded.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    with torch.no_grad():
        assert torch.equal(unet(x0, torch.tensor([3, 700])), loaded(x0, torch.tensor([3, 700])))
