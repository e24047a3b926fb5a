"""``preset=paper`` end to end at ``scale=smoke``: impersonation of a real target, raw render written.

The paper's weights are not shipped, so the fixture writes files in their official layouts (rosinality
``{"g_ema", "latent_avg"}``, AMT-GAN plain state dicts) holding deterministic weights from the golden recipe
(``$FACECLOAK_SHARED/golden/detweights.py``) into a weights cache; the job loads them through the registry like the
real ones. CLIP's official file is a hash-checked TorchScript archive, so only its loader is pointed at open_clip's
ViT-B/32 with the same recipe's weights; the InfoNCE loss, the search and everything else run as users run them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facecloak.cli.main import main
from facecloak.models.fr import zoo
from facecloak.models.stylegan2 import Generator, GeneratorConfig, save_stylegan2_checkpoint
from facecloak.paths import golden_dir
from golden_utils import detweights

pytestmark = pytest.mark.slow

FR_FILES = {"ir152": "fr_ir152", "irse50": "fr_irse50", "mobile_face": "fr_mobileface", "facenet": "fr_facenet"}


def _recipe(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    keys = {
        k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
        for k, v in module.state_dict().items()
    }
    return detweights().deterministic_state_dict(keys, 0)


@pytest.fixture(scope="module")
def paper_weights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not (golden_dir() / "fr_ir152" / "keys.json").exists():
        pytest.skip(f"golden layouts not found under {golden_dir()}")
    cache = tmp_path_factory.mktemp("weights")
    generator = Generator(GeneratorConfig(64, 64, 2, channel_base=2048, channel_max=32))
    generator.load_state_dict(_recipe(generator), strict=True)
    (cache / "stylegan2").mkdir()
    save_stylegan2_checkpoint(cache / "stylegan2" / "stylegan2-ffhq-config-f.pt", generator, torch.zeros(64))
    det = detweights()
    (cache / "amtgan").mkdir()
    for name, folder in FR_FILES.items():
        state = det.deterministic_state_dict(det.load_keys(golden_dir() / folder / "keys.json"), 0)
        torch.save(state, cache / "amtgan" / f"{name}.pth")
    yield cache
    for key in [k for k in zoo._LOADED if k[0] in FR_FILES]:
        del zoo._LOADED[key]  # these are not the real networks: never reuse them in other tests


@pytest.fixture
def deterministic_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip

    from facecloak.losses import clip_loss

    def load(device: str | torch.device = "cpu") -> tuple[torch.nn.Module, object]:
        model = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True)
        model.load_state_dict(_recipe(model), strict=True)
        return model.to(device).eval().requires_grad_(False), open_clip.get_tokenizer("ViT-B-32")

    monkeypatch.setattr(clip_loss, "load_clip_model", load)


def test_paper_preset_without_a_target_says_what_to_do(capsys: pytest.CaptureFixture) -> None:
    assert main(["protect", "x.jpg", "--out", "/tmp/nowhere", "--preset", "paper", "scale=smoke"]) == 2
    assert "--target" in capsys.readouterr().err


def test_paper_preset_impersonates_and_writes_the_raw_render(
    faces_dir: Path, tmp_path: Path, paper_weights: Path, deterministic_clip: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACECLOAK_CHECKPOINTS", str(paper_weights))
    photo, target = faces_dir / "jack_dorsey" / "img16.jpg", faces_dir / "katy_perry"
    target_photo = sorted(target.glob("*.jpg"))[0]
    out = tmp_path / "out"
    args = ["protect", str(photo), "--out", str(out), "--preset", "paper", "--target", str(target_photo)]
    assert main([*args, "scale=smoke", "trainer.progress_bar=false"]) == 0
    [record_path] = list(out.glob("img16-*.json"))
    record = json.loads(record_path.read_text())
    render = np.asarray(Image.open(record["outputs"]["render_face0"]))
    assert render.shape == (64, 64, 3)  # the generator's own output, not pasted into the photo
    face = record["faces"][0]
    assert set(face["search"]["similarities_after"]["target"]) == {"ir152", "irse50", "mobile_face"}
    assert face["search"]["stopped_at"] == -1  # no early stop in the paper's code
