"""The face-recognition zoo: one interface, registry-driven preprocessing, gradients where the model is PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facecloak.errors import ConfigError
from facecloak.losses.identity import AdversarialIdentityLoss
from facecloak.models.fr.zoo import fr_model_names, load_fr_model

OFFLINE_DIFFERENTIABLE = ["mobilefacenet_casia", "faceres", "faceres_deep", "mobileface_human", "faceapi_dlib"]


def test_offline_models_are_available(weights_dir: Path) -> None:
    assert set(OFFLINE_DIFFERENTIABLE) | {"dlib_native"} <= set(fr_model_names(available_only=True))


@pytest.mark.parametrize("name", OFFLINE_DIFFERENTIABLE)
def test_embeddings_are_unit_norm_and_differentiable(name: str, weights_dir: Path) -> None:
    model = load_fr_model(name)
    height, width = model.entry.preprocessing.input_size or (112, 112)
    faces = torch.rand(2, 3, height, width, requires_grad=True)
    emb = model(faces)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    (emb[0] @ emb[1]).backward()
    assert faces.grad is not None and torch.isfinite(faces.grad).all() and faces.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in model.parameters())


def test_flip_concatenation_comes_from_the_registry(weights_dir: Path) -> None:
    model = load_fr_model("mobilefacenet_casia")
    assert model.entry.preprocessing.flip_concat
    assert model(torch.rand(1, 3, 112, 96)).shape == (1, 256)


def test_frozen_models_stay_in_eval_mode_and_are_cached(weights_dir: Path) -> None:
    model = load_fr_model("mobilefacenet_casia")
    model.train()
    assert not model.training and not any(m.training for m in model.modules())
    assert load_fr_model("mobilefacenet_casia") is model


def test_black_box_models_cannot_be_attacked(weights_dir: Path) -> None:
    native = load_fr_model("dlib_native")
    assert not native.differentiable
    with pytest.raises(ConfigError, match="black-box"):
        AdversarialIdentityLoss([native], "dodge")


def test_input_resized_to_the_model_size(weights_dir: Path) -> None:
    model = load_fr_model("faceres")
    torch.manual_seed(0)
    big = torch.rand(1, 3, 448, 448)
    small = torch.nn.functional.interpolate(big, size=(224, 224), mode="bilinear", align_corners=False)
    assert torch.allclose(model(big), model(small), atol=1e-5)


@pytest.mark.parametrize("name", OFFLINE_DIFFERENTIABLE)
def test_box_crop_order_serves_every_colour_and_layout(name: str, weights_dir: Path) -> None:
    """fr.preprocess=box maps the range before the resize; BGR, grey and NHWC models take it too (was refused)."""
    model = load_fr_model(name)
    torch.manual_seed(0)
    crop = torch.rand(1, 3, 150, 130)
    assert torch.allclose(model(crop, range_first=True), model(crop), atol=1e-4)


def test_insightface_onnx_pack_as_black_box(tmp_path: Path, monkeypatch) -> None:
    """An ArcFace-style ONNX in the pack layout runs through insightface and matches the torch network."""
    from facecloak.models.fr import zoo
    from facecloak.models.fr.paper_models import build_paper_network

    torch.manual_seed(0)
    network = build_paper_network("mobile_face").eval()
    onnx_path = tmp_path / "insightface" / "buffalo_l" / "w600k_r50.onnx"
    onnx_path.parent.mkdir(parents=True)
    torch.onnx.export(
        network,
        (torch.rand(1, 3, 112, 112),),
        str(onnx_path),
        opset_version=11,
        dynamo=False,
        input_names=["input.1"],
        output_names=["embedding"],
        dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}},
    )
    monkeypatch.setenv("FACECLOAK_CHECKPOINTS", str(tmp_path))
    monkeypatch.setattr(zoo, "_LOADED", {})
    model = load_fr_model("insightface_buffalo_l")
    assert not model.differentiable
    faces = torch.rand(2, 3, 112, 112)
    quantised = (faces * 255).round() / 255
    with torch.no_grad():
        expected = torch.nn.functional.normalize(network(quantised * 2 - 1), dim=1)
    got = model(faces)
    assert torch.allclose(got, expected, atol=1e-4), float((got - expected).abs().max())
    assert np.isfinite(got.numpy()).all()
