"""Parity of the four paper face-recognition networks with the reference code, and checkpoint-loading errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from facecloak.errors import ConfigError, CorruptWeightsError, MissingWeightsError
from facecloak.models.fr.paper_models import (
    PAPER_NETWORKS,
    PaperNetworkInfo,
    build_paper_network,
    load_paper_network,
)
from golden_utils import GoldenCase, assert_close, assert_keys_match, golden_params, load_case, parse_tolerance

SMALL_ARCH = "mobile_face"  # 1.2 M parameters: cheap enough for the loader tests


def _callable_name(constructor: str) -> str:
    """``"irse.Backbone(50, 0.6, 'ir_se')"`` -> ``"irse.Backbone"``."""
    return constructor.split("(", 1)[0].strip()


def info_for(meta: dict[str, Any]) -> PaperNetworkInfo:
    """The registry entry built the way ``meta['constructor']`` says the reference was built."""
    wanted = _callable_name(meta["constructor"])
    matches = [info for info in PAPER_NETWORKS.values() if _callable_name(info.reference_constructor) == wanted]
    assert len(matches) == 1, f"no unique paper network for reference constructor {meta['constructor']!r}"
    return matches[0]


def assert_matches_tolerance(name: str, ours: torch.Tensor, ref: torch.Tensor, meta: dict[str, Any]) -> None:
    """Compare at meta's suggested tolerance; an rtol "relative to the embedding norm" scales with each row's norm."""
    atol, rtol = parse_tolerance(meta)
    if "norm" not in json.dumps(meta.get("suggested_tolerance", "")):
        assert_close(name, ours, ref, atol=atol, rtol=rtol)
        return
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    worst = (ours.double() - ref.double()).abs().amax(dim=1)
    norms = ref.double().norm(dim=1)
    relative = float((worst / norms).max())
    assert bool((worst <= atol + rtol * norms).all()), f"{name}: max diff / row norm {relative:.3g} exceeds {rtol}"


@pytest.fixture(scope="module", params=golden_params("fr_"))
def case(request: pytest.FixtureRequest) -> GoldenCase:
    return load_case(request.param)


@pytest.mark.golden
def test_golden_fr_state_dict_layout(case: GoldenCase) -> None:
    model = build_paper_network(info_for(case.meta).arch)
    assert_keys_match(model.state_dict(), case.keys)


@pytest.mark.golden
def test_golden_fr_outputs(case: GoldenCase) -> None:
    info = info_for(case.meta)
    model = build_paper_network(info.arch)
    model.load_state_dict(case.state_dict(), strict=True)
    model.eval()
    inputs, expected = case.inputs(), case.expected()
    assert case.meta["calls"], "meta.json lists no calls"
    for output_name, call in case.meta["calls"].items():
        assert call.replace(" ", "") == "model.eval();model(x)", f"unsupported call {call!r}"
        with torch.no_grad():
            ours = model(inputs["x"])
        assert_matches_tolerance(output_name, ours, expected[output_name], case.meta)


@pytest.mark.golden
def test_golden_fr_registry_agrees_with_reference(case: GoldenCase) -> None:
    """The registry's input size and normalisation flag are what the reference outputs show."""
    info = info_for(case.meta)
    assert list(case.meta["inputs"]["x"]["shape"][-2:]) == [info.input_size, info.input_size]
    unit_rows = all(abs(norm - 1.0) < 1e-5 for norm in case.meta["row_l2_norms"])
    assert unit_rows == info.l2_normalized


def _saved(tmp_path: Path, obj: object, name: str = "weights.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_load_paper_network_roundtrip(tmp_path: Path) -> None:
    source = build_paper_network(SMALL_ARCH).eval()
    path = _saved(tmp_path, source.state_dict())
    loaded = load_paper_network(SMALL_ARCH, path)
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(1, 3, PAPER_NETWORKS[SMALL_ARCH].input_size, PAPER_NETWORKS[SMALL_ARCH].input_size) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)


def test_load_paper_network_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match=r"mobile_face\.pth"):
        load_paper_network(SMALL_ARCH, tmp_path / "absent.pth")


def test_load_paper_network_wrong_layout(tmp_path: Path) -> None:
    state = build_paper_network(SMALL_ARCH).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["linear.weight"]
    path = _saved(tmp_path, {f"module.{k}": v for k, v in state.items()}, "wrapped.pth")
    with pytest.raises(CorruptWeightsError, match=r"wrapped\.pth.*missing keys.*unexpected keys.*AMT-GAN") as info:
        load_paper_network(SMALL_ARCH, path)
    assert f"{len(state)} unexpected keys" in str(info.value)


def test_load_paper_network_wrong_shapes(tmp_path: Path) -> None:
    state = build_paper_network(SMALL_ARCH).state_dict()
    state["linear.weight"] = torch.zeros(8, 8)
    with pytest.raises(CorruptWeightsError, match="wrong shapes"):
        load_paper_network(SMALL_ARCH, _saved(tmp_path, state))


@pytest.mark.parametrize("content", [b"not a checkpoint", None], ids=["garbage", "not-a-dict"])
def test_load_paper_network_unreadable(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "broken.pth"
    if content is None:
        torch.save([torch.zeros(1)], path)
    else:
        path.write_bytes(content)
    with pytest.raises(CorruptWeightsError, match=r"broken\.pth"):
        load_paper_network(SMALL_ARCH, path)


def test_unknown_arch_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="irse50"):
        build_paper_network("arcface")
