"""Parity of our DDPM UNet with the reference ``DDPM(config)`` on every ``ddpm_*`` golden folder.

Configuration, inputs, calls and tolerances all come from each folder's ``meta.json``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from facecloak.errors import CorruptWeightsError, MissingWeightsError
from facecloak.models.ddpm import CELEBA_HQ_256, DDPMConfig, DDPMUNet, load_celebahq_checkpoint
from golden_utils import GoldenCase, assert_close, assert_keys_match, golden_params, load_case, parse_tolerance

# The network part of configs/celeba.yml in SDEdit / DiffusionCLIP / DiffAM (provenance of CELEBA_HQ_256).
CELEBA_YML = """
data: {image_size: 256}
model:
  type: simple
  in_channels: 3
  out_ch: 3
  ch: 128
  ch_mult: [1, 1, 2, 2, 4, 4]
  num_res_blocks: 2
  attn_resolutions: [16]
  dropout: 0.0
  var_type: fixedsmall
  ema_rate: 0.999
  ema: true
  resamp_with_conv: true
"""


def config_of(case: GoldenCase) -> DDPMConfig:
    used = case.meta["config_used"]
    return DDPMConfig.from_reference(used["model"], used["data.image_size"])


@pytest.mark.golden
@pytest.mark.parametrize("folder", golden_params("ddpm_"))
def test_golden_ddpm_state_dict_layout(folder: Path) -> None:
    case = load_case(folder)
    with torch.device("meta"):
        model = DDPMUNet(config_of(case))
    assert_keys_match(model.state_dict(), case.keys)
    assert len(case.keys) == case.meta["weights"]["n_keys"]


@pytest.mark.golden
@pytest.mark.parametrize("folder", golden_params("ddpm_"))
def test_golden_ddpm_checkpoint_loads_strictly_and_matches_reference(folder: Path, tmp_path: Path) -> None:
    case = load_case(folder)
    # Through the real loader: a plain state_dict file, as the official celeba_hq.ckpt is.
    ckpt = tmp_path / "celeba_hq.ckpt"
    torch.save(case.state_dict(), ckpt)
    model = load_celebahq_checkpoint(ckpt, config_of(case))
    assert not model.training
    inputs, expected = case.inputs(), case.expected()
    args = [inputs[name] for name in case.meta["inputs"]]  # meta lists the call's inputs in call order
    atol, rtol = parse_tolerance(case.meta)
    # The tolerance must be far below what a network ignoring its input (x or t) would be off by.
    assert atol < 0.1 * min(case.meta["input_sensitivity"].values())
    with torch.no_grad():
        for name in case.meta["calls"]:
            assert_close(name, model(*args), expected[name], atol=atol, rtol=rtol)


def test_celeba_hq_preset_is_the_official_config() -> None:
    official = yaml.safe_load(CELEBA_YML)
    assert DDPMConfig.from_reference(official["model"], official["data"]["image_size"]) == CELEBA_HQ_256
    assert DDPMConfig() == CELEBA_HQ_256


TINY = DDPMConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16)


def test_checkpoint_with_wrong_layout_names_file_and_counts(tmp_path: Path) -> None:
    state = DDPMUNet(TINY).state_dict()
    state["module.conv_in.weight"] = state.pop("conv_in.weight")
    state["conv_out.bias"] = torch.zeros(5)
    ckpt = tmp_path / "broken.ckpt"
    torch.save(state, ckpt)
    with pytest.raises(CorruptWeightsError, match=r"broken\.ckpt.*1 missing keys.*1 unexpected keys.*1 shape mismatch"):
        load_celebahq_checkpoint(ckpt, TINY)


def test_checkpoint_wrapped_or_garbled_or_missing(tmp_path: Path) -> None:
    wrapped = tmp_path / "wrapped.ckpt"
    torch.save({"state_dict": DDPMUNet(TINY).state_dict(), "step": 3}, wrapped)
    with pytest.raises(CorruptWeightsError, match="2 non-tensor entries"):
        load_celebahq_checkpoint(wrapped, TINY)
    garbled = tmp_path / "garbled.ckpt"
    garbled.write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptWeightsError, match=r"garbled\.ckpt"):
        load_celebahq_checkpoint(garbled, TINY)
    with pytest.raises(MissingWeightsError, match=r"absent\.ckpt"):
        load_celebahq_checkpoint(tmp_path / "absent.ckpt", TINY)
