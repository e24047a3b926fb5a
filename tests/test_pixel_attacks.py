"""Pixel attacks (PGD, MI-FGSM, TI-DIM): budget, mask, effect on real photos, the TI/DI transforms, determinism."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facecloak.attacks.pixel import (
    PIXEL_ATTACKS,
    PixelAttackConfig,
    build_pixel_attack,
    diverse_input,
    gaussian_kernel,
    protect_photo_pixels,
    scaled_box,
    smooth_gradient,
)
from facecloak.config.compose import compose
from facecloak.errors import ConfigError
from facecloak.faces.crops import detect_with_config, detector_from_config
from facecloak.faces.detect import Face
from facecloak.io.images import load_photo
from facecloak.losses.degrade import DegradationConfig, RandomDegradation
from facecloak.losses.identity import AdversarialIdentityLoss, IdentityReference
from facecloak.models.fr.zoo import FaceEmbedder, load_fr_model

pytestmark = pytest.mark.usefixtures("single_thread")

ATTACKED = "mobilefacenet_casia"  # the fastest attackable offline model keeps the file well under a minute
PHOTO_MAX_SIDE = 480  # photos are downscaled on load: faces stay ~150 px, each step stays cheap on one core
STEPS = 5
EPS_255 = 8.0
REGION_SCALE = 1.5
DODGE_MAX_SIMILARITY = 0.8  # clean photos score 1.0 against themselves; 5 steps at 8/255 must cut that clearly


@dataclass(frozen=True)
class Photo:
    identity: str
    rgb: np.ndarray
    face: Face


def _first_photo_per_identity(faces_dir: Path, count: int) -> list[tuple[str, Path]]:
    with open(faces_dir / "labels.csv", newline="") as f:
        rows = sorted((r["identity"], r["path"]) for r in csv.DictReader(f))
    chosen: dict[str, Path] = {}
    for identity, path in rows:
        chosen.setdefault(identity, faces_dir / path)
    return list(chosen.items())[:count]


@pytest.fixture(scope="module")
def photos(faces_dir: Path) -> list[Photo]:
    """Three real photos of different people (two to attack, one as an impersonation target)."""
    config = compose().faces
    detector = detector_from_config(config)
    out = []
    for identity, path in _first_photo_per_identity(faces_dir, 3):
        rgb = load_photo(path, max_side=PHOTO_MAX_SIDE).rgb
        faces = detect_with_config(rgb, detector, config)
        assert faces, f"no face in {path}"
        out.append(Photo(identity, rgb, faces[0]))
    return out


@pytest.fixture(scope="module")
def model() -> FaceEmbedder:
    return load_fr_model(ATTACKED)


def _config(**overrides: object) -> PixelAttackConfig:
    return PixelAttackConfig(**{"eps_255": EPS_255, "steps": STEPS, **overrides})  # type: ignore[arg-type]


@torch.no_grad()
def _embedding(loss: AdversarialIdentityLoss, rgb: np.ndarray, face: Face) -> torch.Tensor:
    """The attacked model's embedding of a uint8 photo's face: success is judged on quantised pixels."""
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    landmarks = torch.as_tensor(face.landmarks5, dtype=torch.float32)[None]
    return loss.embed(image, landmarks)[ATTACKED][0]


def _region_tensor(photo: Photo) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int, int]]:
    box = scaled_box(photo.face.box, REGION_SCALE, photo.rgb.shape[:2])
    x0, y0, x1, y1 = box
    image = torch.from_numpy(photo.rgb[y0:y1, x0:x1].copy()).permute(2, 0, 1)[None].float() / 255
    landmarks = torch.as_tensor(photo.face.landmarks5 - [x0, y0], dtype=torch.float32)[None]
    return image, landmarks, box


# --- configuration and registry --------------------------------------------------------------------------------------


def test_registry_holds_the_paper_baselines(model: FaceEmbedder) -> None:
    assert set(PIXEL_ATTACKS) == {"pgd", "mifgsm", "tidim"}
    with pytest.raises(ConfigError, match="choose one of mifgsm, pgd, tidim"):
        build_pixel_attack("fgsm", PixelAttackConfig(), AdversarialIdentityLoss([model], "dodge"))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"eps_255": 0}, "pixel_attack.eps_255"),
        ({"steps": 0}, "pixel_attack.steps"),
        ({"di_prob": 1.5}, "pixel_attack.di_prob"),
        ({"di_resize_range": (0.9, 1.1)}, "pixel_attack.di_resize_range"),
        ({"ti_kernel_size": 4}, "pixel_attack.ti_kernel_size"),
        ({"momentum": -1}, "pixel_attack.momentum"),
    ],
)
def test_config_errors_name_the_key(overrides: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        PixelAttackConfig(**overrides)  # type: ignore[arg-type]


def test_paper_defaults_for_step_and_start(model: FaceEmbedder) -> None:
    loss = AdversarialIdentityLoss([model], "dodge")
    pgd = build_pixel_attack("pgd", PixelAttackConfig(eps_255=8, steps=10), loss)
    mifgsm = build_pixel_attack("mifgsm", PixelAttackConfig(eps_255=8, steps=10), loss)
    assert pgd.step_size == pytest.approx(2 / 255) and pgd.random_start  # torchattacks' PGD defaults
    assert mifgsm.step_size == pytest.approx(0.8 / 255) and not mifgsm.random_start  # α = ε / T
    assert build_pixel_attack("pgd", PixelAttackConfig(step_size_255=1.0), loss).step_size == pytest.approx(1 / 255)


# --- the attacks on real photos --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PIXEL_ATTACKS))
def test_dodging_full_photo_within_budget_mask_and_lowers_similarity(
    name: str, photos: list[Photo], model: FaceEmbedder
) -> None:
    loss = AdversarialIdentityLoss([model], "dodge")
    attack = build_pixel_attack(name, _config(), loss)
    for photo in photos[:2]:
        protected = protect_photo_pixels(photo.rgb, [photo.face], attack, region_scale=REGION_SCALE, mask_scale=1.0)
        assert protected.dtype == np.uint8 and protected.shape == photo.rgb.shape
        change = np.abs(protected.astype(np.int16) - photo.rgb.astype(np.int16))
        assert change.max() <= EPS_255 + 0.5
        assert change.max() > 0
        x0, y0, x1, y1 = scaled_box(photo.face.box, 1.0, photo.rgb.shape[:2])
        outside = np.ones(change.shape[:2], dtype=bool)
        outside[y0:y1, x0:x1] = False
        assert change[outside].max() == 0, "pixels outside the face box changed"
        clean = _embedding(loss, photo.rgb, photo.face)
        after = _embedding(loss, protected, photo.face)
        similarity = float(after @ clean)
        assert similarity < DODGE_MAX_SIMILARITY, (
            f"{name} on {photo.identity}: similarity to own face still {similarity:.3f}"
        )


@pytest.mark.parametrize("name", sorted(PIXEL_ATTACKS))
def test_impersonation_raises_similarity_to_target(name: str, photos: list[Photo], model: FaceEmbedder) -> None:
    loss = AdversarialIdentityLoss([model], "impersonate")
    attack = build_pixel_attack(name, _config(), loss)
    source, target_photo = photos[0], photos[2]
    target = {ATTACKED: _embedding(loss, target_photo.rgb, target_photo.face)[None]}
    protected = protect_photo_pixels(source.rgb, [source.face], attack, target=target)
    before = float(_embedding(loss, source.rgb, source.face) @ target[ATTACKED][0])
    after = float(_embedding(loss, protected, source.face) @ target[ATTACKED][0])
    assert after > before + 0.2, f"{name}: similarity to {target_photo.identity} {before:.3f} -> {after:.3f}"


@pytest.mark.parametrize("name", sorted(PIXEL_ATTACKS))
def test_float_result_in_ball_range_and_mask(name: str, photos: list[Photo], model: FaceEmbedder) -> None:
    loss = AdversarialIdentityLoss([model], "dodge")
    image, landmarks, _ = _region_tensor(photos[0])
    reference = IdentityReference(source={k: v.detach() for k, v in loss.embed(image, landmarks).items()})
    mask = torch.zeros(1, 1, *image.shape[-2:], dtype=torch.bool)
    mask[..., : image.shape[-2] // 2, :] = True  # upper half: eyes and nose
    attack = build_pixel_attack(name, _config(steps=2, random_start=True), loss)
    adv = attack.perturb(image, landmarks, reference, mask)
    assert float((adv - image).abs().max()) <= EPS_255 / 255 + 1e-6
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    assert torch.equal(adv[..., image.shape[-2] // 2 :, :], image[..., image.shape[-2] // 2 :, :])
    assert not model.training


def test_eot_degradation_is_applied_every_step(photos: list[Photo], model: FaceEmbedder) -> None:
    loss = AdversarialIdentityLoss([model], "dodge")
    image, landmarks, _ = _region_tensor(photos[0])
    reference = IdentityReference(source={k: v.detach() for k, v in loss.embed(image, landmarks).items()})
    blur = RandomDegradation(DegradationConfig(probabilities={"blur": 1.0}), torch.Generator().manual_seed(0))
    with_eot = build_pixel_attack("pgd", _config(steps=2), loss, degradation=blur).perturb(image, landmarks, reference)
    plain = build_pixel_attack("pgd", _config(steps=2), loss).perturb(image, landmarks, reference)
    assert blur.last is not None and blur.last[0] == "blur"
    assert float((with_eot - image).abs().max()) <= EPS_255 / 255 + 1e-6
    assert not torch.equal(with_eot, plain)


def test_seeded_and_stateless_across_calls(photos: list[Photo], model: FaceEmbedder) -> None:
    loss = AdversarialIdentityLoss([model], "dodge")
    config = _config(steps=2, random_start=True, di_prob=1.0)
    image_a, landmarks_a, _ = _region_tensor(photos[0])
    image_b, landmarks_b, _ = _region_tensor(photos[1])
    ref_a = IdentityReference(source={k: v.detach() for k, v in loss.embed(image_a, landmarks_a).items()})
    ref_b = IdentityReference(source={k: v.detach() for k, v in loss.embed(image_b, landmarks_b).items()})
    attack = build_pixel_attack("tidim", config, loss)
    attack.perturb(image_a, landmarks_a, ref_a)  # momentum and random draws must not leak into the next call
    after_a = attack.perturb(image_b, landmarks_b, ref_b)
    fresh = build_pixel_attack("tidim", config, loss).perturb(image_b, landmarks_b, ref_b)
    assert torch.equal(after_a, fresh)
    other_seed = build_pixel_attack("tidim", _config(steps=2, random_start=True, di_prob=1.0, seed=1), loss)
    assert not torch.equal(other_seed.perturb(image_b, landmarks_b, ref_b), fresh)


# --- the TI and DI transforms on crafted inputs ----------------------------------------------------------------------


def test_ti_kernel_is_the_reference_gaussian() -> None:
    kernel = gaussian_kernel(7)  # σ = (7 − 1) / 6 = 1 pixel
    assert kernel.shape == (7, 7)
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(kernel, kernel.T) and torch.equal(kernel, kernel.flip(0))
    assert float(kernel[3, 4] / kernel[3, 3]) == pytest.approx(np.exp(-0.5), rel=1e-5)
    assert float(gaussian_kernel(7, sigma=2.0)[3, 5] / gaussian_kernel(7, sigma=2.0)[3, 3]) == pytest.approx(
        np.exp(-0.5), rel=1e-5
    )


def test_ti_smoothing_spreads_an_impulse_and_keeps_constants() -> None:
    kernel = gaussian_kernel(5, sigma=1.0)
    impulse = torch.zeros(1, 3, 11, 11)
    impulse[:, :, 5, 5] = 1.0
    smoothed = smooth_gradient(impulse, kernel)
    assert smoothed.shape == impulse.shape
    for channel in range(3):
        torch.testing.assert_close(smoothed[0, channel, 3:8, 3:8], kernel)
    constant = smooth_gradient(torch.full((1, 3, 11, 11), 2.0), kernel)
    torch.testing.assert_close(constant[..., 2:-2, 2:-2], torch.full((1, 3, 7, 7), 2.0))
    assert float(constant[0, 0, 0, 0]) < 2.0  # zero padding at the border, as the reference's SAME convolution


def test_diverse_input_resizes_and_pads() -> None:
    images = torch.rand(2, 3, 20, 30)
    assert diverse_input(images, 0.0, (1.0, 1.1)) is images
    same = diverse_input(images, 1.0, (1.0, 1.0))
    assert torch.equal(same, images)
    exact = diverse_input(images, 1.0, (1.5, 1.5))  # scale = high: no room to pad
    torch.testing.assert_close(exact, F.interpolate(images, size=(30, 45), mode="bilinear", align_corners=False))
    ones = torch.ones(1, 1, 20, 30)
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        out = diverse_input(ones, 1.0, (1.0, 2.0), generator)
        assert out.shape[-2:] == (40, 60)
        rows, cols = torch.nonzero(out[0, 0] > 0.5, as_tuple=True)
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert 20 <= height <= 40 and 30 <= width <= 60
        assert int((out > 0.5).sum()) == height * width, "the resized image must be one rectangle, zeros around it"
    first = diverse_input(images, 1.0, (1.0, 1.3), torch.Generator().manual_seed(7))
    again = diverse_input(images, 1.0, (1.0, 1.3), torch.Generator().manual_seed(7))
    assert torch.equal(first, again)


@pytest.mark.parametrize("name", ["pgd", "tidim"])
def test_trainer_stage_gives_the_same_images_as_the_plain_loop(
    name: str, photos: list[Photo], model: FaceEmbedder
) -> None:
    from facecloak.stages.pixel_attack import trainer_perturb

    loss = AdversarialIdentityLoss([model], "dodge")
    image, landmarks, _ = _region_tensor(photos[0])
    reference = IdentityReference(source={k: v.detach() for k, v in loss.embed(image, landmarks).items()})
    config = _config(steps=3, random_start=True, di_prob=1.0)
    plain = build_pixel_attack(name, config, loss).perturb(image, landmarks, reference)
    staged = trainer_perturb(build_pixel_attack(name, config, loss), image, landmarks, reference, None, {})
    assert torch.equal(staged, plain)
    mixed = trainer_perturb(
        build_pixel_attack(name, config, loss), image, landmarks, reference, None, {"precision": "bf16-mixed"}
    )
    assert float((mixed - image).abs().max()) <= EPS_255 / 255 + 1e-6 and not torch.equal(mixed, image)


def test_photo_protection_through_the_trainer(photos: list[Photo], model: FaceEmbedder) -> None:
    import functools

    from facecloak.stages.pixel_attack import trainer_perturb

    attack = build_pixel_attack("mifgsm", _config(steps=2), AdversarialIdentityLoss([model], "dodge"))
    plain = protect_photo_pixels(photos[1].rgb, [photos[1].face], attack)
    staged = protect_photo_pixels(
        photos[1].rgb, [photos[1].face], attack, perturb=functools.partial(trainer_perturb, trainer_kwargs={})
    )
    np.testing.assert_array_equal(staged, plain)
