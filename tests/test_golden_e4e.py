"""Parity of our e4e encoder with encoder4editing, loaded through the official checkpoint layout; loader errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from facecloak.errors import CorruptWeightsError, MissingWeightsError
from facecloak.models.e4e import Encoder4Editing, load_e4e_checkpoint
from golden_utils import GoldenCase, assert_close, assert_keys_match, golden_params, load_case, parse_tolerance

DEFAULT_PREFIX = "encoder."


@pytest.fixture(scope="module", params=golden_params("e4e"))
def case(request: pytest.FixtureRequest) -> GoldenCase:
    return load_case(request.param)


def stylegan_size(case: GoldenCase) -> int:
    found = re.search(r"stylegan_size\s*=\s*(\d+)", case.meta["constructor"])
    assert found, f"meta.json constructor does not state stylegan_size: {case.meta['constructor']!r}"
    return int(found.group(1))


def key_prefix(case: GoldenCase) -> str:
    found = re.search(r"prefix '([\w.]+)'", case.meta.get("weights", {}).get("note", ""))
    return found.group(1) if found else DEFAULT_PREFIX


@pytest.fixture(scope="module")
def official_checkpoint(case: GoldenCase, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The golden weights written in ``e4e_ffhq_encode.pt``'s layout (with a stand-in decoder entry)."""
    state = case.state_dict()
    state["decoder.style.1.weight"] = torch.zeros(1)  # the real file also holds the generator; the loader skips it
    opts = {"encoder_type": "Encoder4Editing", "stylegan_size": stylegan_size(case), "start_from_latent_avg": True}
    path = tmp_path_factory.mktemp("e4e") / "e4e_ffhq_encode.pt"
    torch.save({"state_dict": state, "latent_avg": case.inputs()["latent_avg"], "opts": opts}, path)
    return path


@pytest.mark.golden
def test_golden_e4e_state_dict_layout(case: GoldenCase) -> None:
    with torch.device("meta"):  # layout only: no need to initialise 267 M parameters
        encoder = Encoder4Editing(stylegan_size=stylegan_size(case))
    prefix = key_prefix(case)
    assert all(k.startswith(prefix) for k in case.keys)
    assert_keys_match(encoder.state_dict(), {k.removeprefix(prefix): v for k, v in case.keys.items()})


@pytest.mark.golden
def test_golden_e4e_outputs(case: GoldenCase, official_checkpoint: Path) -> None:
    encoder, latent_avg = load_e4e_checkpoint(official_checkpoint)
    assert not encoder.training
    inputs, expected = case.inputs(), case.expected()
    assert torch.equal(latent_avg, inputs["latent_avg"])
    atol, rtol = parse_tolerance(case.meta)
    outputs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        outputs["codes"] = encoder(inputs["x"])
        outputs["codes_plus_latent_avg"] = encoder.encode(inputs["x"])
    assert set(case.meta["calls"]) <= set(outputs), f"unsupported calls {set(case.meta['calls']) - set(outputs)}"
    for name in case.meta["calls"]:
        diff = float((outputs[name] - expected[name]).abs().max())
        print(f"{name}: max abs diff {diff:.3g} (atol {atol})")
        assert_close(name, outputs[name], expected[name], atol=atol, rtol=rtol)


def test_e4e_loader_rejects_wrong_layouts(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError):
        load_e4e_checkpoint(tmp_path / "absent.pt")
    generator_only = tmp_path / "stylegan.pt"
    torch.save({"g_ema": {"input.input": torch.zeros(1)}, "latent_avg": torch.zeros(512)}, generator_only)
    with pytest.raises(CorruptWeightsError, match="not a pSp/e4e checkpoint"):
        load_e4e_checkpoint(generator_only)
    psp = tmp_path / "psp.pt"
    opts = {"encoder_type": "GradualStyleEncoder"}
    torch.save({"state_dict": {"encoder.x": torch.zeros(1)}, "latent_avg": torch.zeros(18, 512), "opts": opts}, psp)
    with pytest.raises(CorruptWeightsError, match="GradualStyleEncoder"):
        load_e4e_checkpoint(psp)
    truncated = tmp_path / "truncated.pt"
    state = {"encoder.input_layer.0.weight": torch.zeros(64, 3, 3, 3)}
    torch.save({"state_dict": state, "latent_avg": torch.zeros(18, 512), "opts": {}}, truncated)
    with pytest.raises(CorruptWeightsError, match="do not match"):
        load_e4e_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptWeightsError):
        load_e4e_checkpoint(garbage)


def test_e4e_rejects_wrong_input_size() -> None:
    with torch.device("meta"):
        encoder = Encoder4Editing()
    with pytest.raises(ValueError, match="256"):
        encoder(torch.zeros(1, 3, 128, 128, device="meta"))
