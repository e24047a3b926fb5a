"""MAP score-network fine-tuning on a tiny real UNet, real photos and the real frozen judges (CPU, a few steps)."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from facecloak.diffusion import NoiseSchedule
from facecloak.errors import ConfigError
from facecloak.faces.detect import build_detector
from facecloak.faces.regions import square_face_crop
from facecloak.io.images import load_photo
from facecloak.losses.expression import ExpressionObjective, face_boxes_from_landmarks
from facecloak.losses.identity import AdversarialIdentityLoss
from facecloak.models.ddpm import DDPMConfig, DDPMUNet
from facecloak.models.faceapi import load_faceapi_model
from facecloak.models.fr.zoo import load_fr_model
from facecloak.stages.score_finetune import ScoreFinetune, save_finetuned
from facecloak.stages.score_finetune_config import LossWeights, ScoreFinetuneConfig
from facecloak.stages.score_finetune_data import FinetuneFaces, prepare_finetune_faces
from facecloak.stages.score_finetune_infer import protect_with_finetuned

RESOLUTION = 16  # the mechanics, not the quality, are under test: keep the UNet tiny so the file runs in seconds
TINY = DDPMConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=RESOLUTION)
CONFIG = ScoreFinetuneConfig(
    expression="happy",
    t0=200,
    inversion_steps=2,
    generation_steps=2,
    lr=1e-4,
    gradient_ema=0.5,
    max_grad_norm=10.0,
    seed=3,
)
ATTACKED = "mobilefacenet_casia"


@pytest.fixture(scope="module")
def crops(faces_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Two real photos of different people, cropped square around the MTCNN face and resized to the UNet's size."""
    rows = list(csv.DictReader((faces_dir / "labels.csv").open()))
    picked = [next(r for r in rows if r["identity"] == name) for name in ("angelina_jolie", "george_clooney")]
    detector = build_detector("mtcnn")
    images, landmarks = [], []
    for row in picked:
        rgb = load_photo(faces_dir / row["path"], max_side=640).rgb
        crop = square_face_crop(rgb, detector.detect(rgb)[0], RESOLUTION)
        images.append(crop.image01)
        landmarks.append(crop.landmarks5)
    return torch.stack(images), torch.stack(landmarks)


@pytest.fixture(scope="module")
def judges() -> tuple[AdversarialIdentityLoss, ExpressionObjective, torch.nn.Module]:
    identity = AdversarialIdentityLoss([load_fr_model(ATTACKED)], mode="dodge")
    return identity, ExpressionObjective("happy"), load_faceapi_model("landmark68")


@pytest.fixture(scope="module")
def initial_unet() -> DDPMUNet:
    torch.manual_seed(0)
    return DDPMUNet(TINY)


@pytest.fixture(scope="module")
def data(crops, judges, initial_unet) -> FinetuneFaces:
    images, landmarks = crops
    identity, _, landmark = judges
    return prepare_finetune_faces(initial_unet, images, landmarks, CONFIG, identity, landmark)


def build_module(unet: DDPMUNet, judges, config: ScoreFinetuneConfig = CONFIG) -> ScoreFinetune:
    identity, expression, landmark = judges
    return ScoreFinetune(copy.deepcopy(unet), config, identity, expression, landmark, NoiseSchedule())


def fit(module: ScoreFinetune, data: FinetuneFaces, steps: int, root: Path, ckpt_path: Path | None = None) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    # The whole set is one batch: every step is one epoch, so a checkpoint never falls mid-epoch.
    loader = DataLoader(data, batch_size=len(data), shuffle=False)
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="grad_mode"):
        ScoreFinetuneConfig(grad_mode="none")
    with pytest.raises(ConfigError, match="identity_mode"):
        ScoreFinetuneConfig(identity_mode="hide")
    with pytest.raises(ConfigError, match="non-negative"):
        ScoreFinetuneConfig(weights=LossWeights(score=-1.0))
    with pytest.raises(ConfigError, match="unknown map config keys"):
        ScoreFinetuneConfig.from_dict({"t0": 100, "learning_rate": 1.0})
    assert ScoreFinetuneConfig.from_dict(CONFIG.to_dict()) == CONFIG
    with pytest.raises(ConfigError, match=r"neutral.*surprised"):
        ExpressionObjective("smug", network=torch.nn.Identity())


def test_impersonation_needs_a_target(crops, judges, initial_unet) -> None:
    images, landmarks = crops
    identity = AdversarialIdentityLoss([load_fr_model(ATTACKED)], mode="impersonate")
    config = ScoreFinetuneConfig.from_dict({**CONFIG.to_dict(), "identity_mode": "impersonate"})
    with pytest.raises(ConfigError, match="target embeddings"):
        prepare_finetune_faces(initial_unet, images, landmarks, config, identity, judges[2])
    with pytest.raises(ConfigError, match="identity_mode"):
        build_module(initial_unet, judges, config)


def test_expression_box_covers_the_face(crops) -> None:
    _, landmarks = crops
    boxes = face_boxes_from_landmarks(landmarks)
    for box, points in zip(boxes, landmarks, strict=True):
        side = box[2] - box[0]
        assert torch.isclose(side, box[3] - box[1])
        assert bool((points[:, 0] > box[0]).all() and (points[:, 0] < box[2]).all())
        assert bool((points[:, 1] > box[1]).all() and (points[:, 1] < box[3]).all())
        eye_distance = (points[1] - points[0]).norm()
        assert 2.0 < side / eye_distance < 5.0


@pytest.fixture(scope="module")
def one_step(data, judges, initial_unet, tmp_path_factory) -> tuple[ScoreFinetune, Path, dict]:
    """A module after one fine-tuning step, its Lightning checkpoint and the logged metrics."""
    root = tmp_path_factory.mktemp("one_step")
    module = build_module(initial_unet, judges)
    trainer = fit(module, data, 1, root)
    path = root / "map.ckpt"
    trainer.save_checkpoint(path)
    return module, path, dict(trainer.callback_metrics)


def test_checkpoint_holds_only_the_score_network(one_step, judges, initial_unet) -> None:
    module, path, metrics = one_step
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and primitives only
    keys = list(checkpoint["state_dict"])
    assert keys and all(k.startswith("unet.") for k in keys)
    assert len(keys) == len(initial_unet.state_dict())
    assert checkpoint["hyper_parameters"]["config"] == CONFIG.to_dict()
    assert len(checkpoint["optimizer_states"]) == 1
    assert checkpoint["gradient_projection"]["averages"] is not None
    identity, expression, landmark = judges
    assert not any(m.training for m in (identity, expression, landmark))
    assert all(not p.requires_grad for m in (identity, expression, landmark) for p in m.parameters())
    # Every loss term was logged.
    for name in ("identity", "expression", "pixel", "ssim", "landmark", "score", "total"):
        assert f"loss/{name}" in metrics
    assert f"similarity/source/{ATTACKED}" in metrics
    assert "expression/probability" in metrics
    # Fine-tuning changed the network.
    changed = [not torch.equal(a, b) for a, b in zip(module.unet.parameters(), initial_unet.parameters())]
    assert any(changed)


def test_resume_continues_where_it_stopped(data, judges, initial_unet, tmp_path: Path) -> None:
    straight = build_module(initial_unet, judges)
    fit(straight, data, 4, tmp_path / "straight")

    first = build_module(initial_unet, judges)
    trainer = fit(first, data, 2, tmp_path / "first")
    path = tmp_path / "half.ckpt"
    trainer.save_checkpoint(path)
    resumed = build_module(initial_unet, judges)
    resumed_trainer = fit(resumed, data, 4, tmp_path / "resumed", ckpt_path=path)

    assert resumed_trainer.global_step == 4
    for (name, a), b in zip(straight.unet.state_dict().items(), resumed.unet.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{name} differs after resuming")
    assert not torch.equal(first.unet.conv_out.weight, resumed.unet.conv_out.weight)


def test_finetuned_network_protects_new_photos_after_saving(one_step, initial_unet, crops, tmp_path: Path) -> None:
    module = one_step[0]
    folder = save_finetuned(module, tmp_path / "finetuned")
    reloaded = DDPMUNet.from_pretrained(folder)
    images, _ = crops
    new_photo = images.flip(-1)  # a photo the network never saw (mirrored)
    protected = protect_with_finetuned(reloaded, new_photo, CONFIG, original=initial_unet)
    assert protected.shape == new_photo.shape
    assert float(protected.min()) >= 0.0 and float(protected.max()) <= 1.0
    in_memory = protect_with_finetuned(module.unet, new_photo, CONFIG, original=initial_unet)
    torch.testing.assert_close(protected, in_memory)
    self_inverted = protect_with_finetuned(reloaded, new_photo, CONFIG)
    assert not torch.equal(self_inverted, protected)  # the two inversion choices differ
    assert np.isfinite(self_inverted.numpy()).all()


def test_composite_judges_only_what_fine_tuning_changes(crops, judges, initial_unet) -> None:
    images, landmarks = crops
    identity, _, landmark = judges
    mask = torch.zeros(2, 1, RESOLUTION, RESOLUTION)
    mask[..., 4:12, 4:12] = 1.0
    delta = prepare_finetune_faces(
        initial_unet, images, landmarks, CONFIG, identity, landmark, composite="delta", change_mask=mask
    )
    module = build_module(initial_unet, judges)
    batch = delta.tensors
    with torch.no_grad():
        regenerated = module.regenerate(batch["x_t0"])
        # Before fine-tuning there is no change: the judged face is the photo, though the network cannot reproduce it.
        assert float((regenerated - images).abs().max()) > 0.05
        torch.testing.assert_close(module.composite(regenerated, batch), images)
        # A change reaches the judged face only inside the mask.
        moved = module.composite(regenerated + 0.3, batch)
        torch.testing.assert_close(moved[..., 4:12, 4:12], images[..., 4:12, 4:12] + 0.3)
        torch.testing.assert_close(moved[..., :4, :], images[..., :4, :])
        replace = prepare_finetune_faces(
            initial_unet, images, landmarks, CONFIG, identity, landmark, composite="replace"
        )
        torch.testing.assert_close(module.composite(regenerated, replace.tensors), regenerated)
        # A sharper photo than the network's resolution: the network sees it downsampled, the losses judge it sharp
        # with the change upsampled (as paste-back does), so the untouched network still shows the photo exactly.
        sharp = torch.nn.functional.interpolate(images, scale_factor=2, mode="bicubic").clamp(0, 1)
        composited = prepare_finetune_faces(
            initial_unet, sharp, landmarks * 2, CONFIG, identity, landmark, composite="delta"
        )
        assert (
            composited.tensors["x0"].shape[-1] == RESOLUTION and composited.tensors["photo"].shape[-1] == 2 * RESOLUTION
        )
        regenerated = module.regenerate(composited.tensors["x_t0"])
        torch.testing.assert_close(module.composite(regenerated, composited.tensors), sharp)
    with pytest.raises(ConfigError, match="need a composite mode"):
        prepare_finetune_faces(initial_unet, sharp, landmarks * 2, CONFIG, identity, landmark)
    with pytest.raises(ConfigError, match="composite mode"):
        prepare_finetune_faces(initial_unet, images, landmarks, CONFIG, identity, landmark, change_mask=mask)
    with pytest.raises(ConfigError, match="composite='blend'"):
        prepare_finetune_faces(initial_unet, images, landmarks, CONFIG, identity, landmark, composite="blend")  # type: ignore[arg-type]


def test_moving_the_module_leaves_the_frozen_judges_alone(judges, initial_unet):
    """Teardown's module move applies to the fine-tuned copy only, never to the job's FR/expression/landmark nets."""
    module = build_module(initial_unet, judges)
    module.double()
    for judge in judges:
        assert {t.dtype for t in [*judge.parameters(), *judge.buffers()] if t.is_floating_point()} <= {torch.float32}
    assert {p.dtype for p in module.unet.parameters()} == {torch.float64}


def test_fp16_loss_scaling_is_refused_with_the_key_to_change(data, judges, initial_unet, tmp_path: Path) -> None:
    """The hand-assembled projected update never passes through the fp16 gradient scaler: refuse, don't stall.

    On a GPU, ``precision=16-mixed`` brings a gradient scaler; here the same plugin is given a real CPU scaler.
    """
    from lightning.pytorch.plugins import MixedPrecision

    module = build_module(initial_unet, judges)
    scaled = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer = L.Trainer(
        accelerator="cpu", plugins=[scaled], max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"trainer\.precision=16-mixed.*bf16-mixed"):
        trainer.fit(module, DataLoader(data, batch_size=len(data), shuffle=False))
