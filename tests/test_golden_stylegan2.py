"""Parity of our StyleGAN2 generator with rosinality's (CLIP2Protect copy): layout of the full models, outputs."""

from __future__ import annotations

import fnmatch
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from facecloak.models.stylegan2 import Generator, GeneratorConfig, infer_generator_config, make_fir_kernel
from golden_utils import GoldenCase, assert_close, assert_keys_match, golden_params, load_case, parse_tolerance

FULL_BUILD_BUDGET_S = 30.0  # generous for 2 shared cores; a 1024 px build takes about a second
UP_GAIN = 4  # kernels of upsampling FIR filters carry the 2×2 upsampling gain (meta "canonical" note)


@pytest.fixture(scope="module", params=golden_params("stylegan2"))
def case(request: pytest.FixtureRequest) -> GoldenCase:
    return load_case(request.param)


@pytest.fixture(scope="module")
def generator(case: GoldenCase) -> Generator:
    g = Generator(GeneratorConfig(**case.meta["constructor_args"]))
    g.load_state_dict(case.state_dict(), strict=True)
    return g.eval()


def tolerance_for(name: str, meta: dict[str, Any]) -> tuple[float, float]:
    """(atol, rtol) of meta's suggested tolerance whose pattern matches ``name`` (e.g. ``image_*``)."""
    suggested = meta["suggested_tolerance"]
    if isinstance(suggested, dict):
        matches = [v for pattern, v in suggested.items() if fnmatch.fnmatch(name, pattern)]
        assert matches, f"meta.json suggests no tolerance for {name!r}"
        return parse_tolerance({"suggested_tolerance": matches[0]}, default_atol=0.0)
    return parse_tolerance(meta)


def assert_output_close(name: str, ours: torch.Tensor, ref: torch.Tensor, meta: dict[str, Any]) -> None:
    """A tolerance given only as rtol is relative to the output's scale (``w`` is ~1e-3 by construction)."""
    atol, rtol = tolerance_for(name, meta)
    if atol == 0.0:
        atol, rtol = rtol * float(ref.abs().max()), 0.0
    diff = float((ours.double() - ref.double()).abs().max())
    print(f"{name}: max abs diff {diff:.3g} (atol {atol:.3g})")
    assert_close(name, ours, ref, atol=atol, rtol=rtol)


def run_call(g: Generator, call: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Execute one of meta's ``calls`` strings, e.g. ``G([wplus], input_is_latent=True, noise=[...])[0]``."""
    mapping = re.match(r"\s*G\.style\((\w+)\)", call)
    if mapping:
        return g.style(inputs[mapping.group(1)])
    generate = re.match(r"\s*G\(\[(\w+)\]", call)
    assert generate, f"unsupported call {call!r}"
    flags = {k: v == "True" for k, v in re.findall(r"(input_is_latent|randomize_noise)=(True|False)", call)}
    if re.search(r"noise=None", call):
        noise = None
    else:
        assert re.search(r"noise=\[noise_0", call), f"unsupported noise argument in {call!r}"
        noise = [inputs[f"noise_{i}"] for i in range(g.num_layers)]
    image, _ = g([inputs[generate.group(1)]], noise=noise, **flags)
    return image


@pytest.mark.golden
def test_golden_stylegan2_state_dict_layout(case: GoldenCase, generator: Generator) -> None:
    assert_keys_match(generator.state_dict(), case.keys)
    assert generator.n_latent == case.meta["n_latent"]
    assert generator.num_layers == case.meta["num_layers"]
    config = generator.config
    assert {str(r): config.channels(int(r)) for r in case.meta["channels_per_resolution"]} == {
        r: int(c) for r, c in case.meta["channels_per_resolution"].items()
    }


@pytest.mark.golden
def test_golden_stylegan2_outputs(case: GoldenCase, generator: Generator) -> None:
    inputs, expected = case.inputs(), case.expected()
    calls = case.meta["calls"]
    assert calls and set(calls) <= set(expected), "meta.json calls name outputs missing from expected.pt"
    for name, call in calls.items():
        with torch.no_grad():
            ours = run_call(generator, call, inputs)
        assert_output_close(name, ours, expected[name], case.meta)


@pytest.mark.golden
def test_golden_stylegan2_canonical_kernels(case: GoldenCase) -> None:
    """Optional debugging output: the same image with the FIR kernels reset to their constructed values."""
    extra = [n for n in case.expected() if n not in case.meta["calls"] and n.endswith("_canonical_kernels")]
    if not extra or "canonical_kernel_keys" not in case.meta:
        pytest.skip("this golden folder has no canonical-kernel output")
    config = GeneratorConfig(**case.meta["constructor_args"])
    state = case.state_dict()
    for key in case.meta["canonical_kernel_keys"]:
        state[key] = make_fir_kernel(config.blur_kernel, gain=UP_GAIN)
    g = Generator(config)
    g.load_state_dict(state, strict=True)
    g.eval()
    inputs, expected = case.inputs(), case.expected()
    for name in extra:
        with torch.no_grad():
            ours = run_call(g, case.meta["calls"][name.removesuffix("_canonical_kernels")], inputs)
        assert_output_close(name, ours, expected[name], case.meta)


def full_layouts(case: GoldenCase) -> list[tuple[Path, GeneratorConfig]]:
    """Every ``keys_full_*.json`` companion with the reference constructor its description names."""
    layouts = []
    for filename, description in case.meta.get("companion_files", {}).items():
        ctor = re.search(r"Generator\((\d+),\s*(\d+),\s*(\d+)", description)
        if filename.startswith("keys_full_") and ctor:
            size, style_dim, n_mlp = map(int, ctor.groups())
            layouts.append((case.folder / filename, GeneratorConfig(size, style_dim, n_mlp)))
    return layouts


@pytest.mark.golden
def test_golden_stylegan2_full_size_layouts(case: GoldenCase) -> None:
    """Default-config generators (config-f) have exactly the official names, shapes, dtypes and order."""
    layouts = full_layouts(case)
    if not layouts:
        pytest.skip("no full-size key layouts in this golden folder")
    for path, config in layouts:
        keys = json.loads(path.read_text())
        start = time.perf_counter()
        g = Generator(config)
        seconds = time.perf_counter() - start
        print(f"{path.name}: built {config.size} px generator in {seconds:.2f} s")
        assert_keys_match(g.state_dict(), keys)
        assert seconds < FULL_BUILD_BUDGET_S, f"building {config} took {seconds:.1f} s"
        # The loader recovers the same configuration from the keys alone.
        shapes = {k: torch.empty(v["shape"], device="meta") for k, v in keys.items()}
        assert infer_generator_config(shapes) == config
