"""The landmark-warp protection: the field, the make-up layers, the attack module, and `protect --method warp`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from facecloak.cli.main import main
from facecloak.config.compose import compose
from facecloak.errors import ConfigError
from facecloak.faces.landmark_groups import FEATURES, face_frame, feature_extents, feature_of_landmark, move_bounds
from facecloak.faces.makeup import (
    LUMINANCE_SHARE,
    REGIONS,
    apply_makeup,
    bounded_colours,
    bounded_opacity,
    makeup_masks,
)
from facecloak.faces.warp_field import (
    FIELD_BOUNDS,
    anchor_ring,
    apply_field,
    dense_field,
    inter_ocular,
    support_mask,
)
from facecloak.losses.identity import AdversarialIdentityLoss, IdentityReference
from facecloak.models.fr.zoo import load_fr_model
from facecloak.stages.warp_attack import WarpAttack, face_anchors, prepare_face
from facecloak.stages.warp_attack_config import WarpAttackConfig
from test_protect import _record

SIZE = 96


def _face(seed: int = 0) -> np.ndarray:
    """A rough 68-point iBUG layout (crop-normalised) in the crop's middle, jittered a little."""
    rng = np.random.default_rng(seed)
    angles = np.linspace(-np.pi / 2, np.pi / 2, 17)
    jaw = np.stack([0.5 - 0.2 * np.sin(angles), 0.42 + 0.28 * np.cos(angles)], axis=1)
    brows = np.stack([np.linspace(0.33, 0.67, 10), np.full(10, 0.36)], axis=1)
    bridge = np.stack([np.full(4, 0.5), np.linspace(0.42, 0.54, 4)], axis=1)
    nostrils = np.stack([np.linspace(0.45, 0.55, 5), np.full(5, 0.58)], axis=1)
    eye = np.array([[-0.05, 0], [-0.025, -0.012], [0.025, -0.012], [0.05, 0], [0.025, 0.012], [-0.025, 0.012]])
    eyes = np.concatenate([eye + np.array([0.4, 0.43]), eye + np.array([0.6, 0.43])])
    outer_angle = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    inner_angle = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    outer = np.stack([0.5 - 0.08 * np.cos(outer_angle), 0.66 + 0.03 * np.sin(outer_angle)], axis=1)
    inner = np.stack([0.5 - 0.05 * np.cos(inner_angle), 0.66 + 0.01 * np.sin(inner_angle)], axis=1)
    points = np.concatenate([jaw, brows, bridge, nostrils, eyes, outer, inner])
    return points + rng.normal(0, 0.002, points.shape)


def _geometry(points: np.ndarray, margin: float = 0.4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ring = anchor_ring(points, margin * inter_ocular(points))
    support = support_mask(ring * SIZE - 0.5, (SIZE, SIZE), margin * inter_ocular(points) * SIZE)
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32)[None]  # noqa: E731
    return as_tensor(points), as_tensor(ring), torch.from_numpy(support)[None, None]


def test_zero_displacement_is_the_identity() -> None:
    landmarks, anchors, support = _geometry(_face())
    image = torch.rand(1, 3, SIZE, SIZE)
    field = dense_field(landmarks, torch.zeros_like(landmarks), anchors, support, grid=32)
    assert torch.count_nonzero(field) == 0
    assert torch.allclose(apply_field(image, field, support), image, atol=1e-5)  # float32 grid round-off


@pytest.mark.parametrize("how", FIELD_BOUNDS)
def test_background_outside_the_anchors_never_moves_and_the_bound_holds(how: str) -> None:
    landmarks, anchors, support = _geometry(_face())
    image = torch.rand(1, 3, SIZE, SIZE)
    displacement = 0.05 * torch.randn_like(landmarks)
    bound = 0.06 * inter_ocular(_face())
    field = dense_field(landmarks, displacement, anchors, support, grid=32, max_norm=bound, bound=how)
    warped = apply_field(image, field, support)
    outside = (support == 0).expand_as(image)
    assert outside.any() and (~outside).any()
    assert torch.equal(warped[outside], image[outside])  # copied bit for bit
    assert not torch.allclose(warped, image)
    assert float(field.norm(dim=1).max()) <= bound * (1 + 1e-5)


def test_clamping_keeps_the_moves_that_were_within_the_cap() -> None:
    landmarks, anchors, support = _geometry(_face())
    displacement = 0.02 * torch.randn(landmarks.shape, generator=torch.Generator().manual_seed(1))
    displacement[0, 8] = torch.tensor([0.0, 0.2])  # one landmark (the chin) pulled far past the cap
    bound = 0.06 * inter_ocular(_face())
    fields = {how: dense_field(landmarks, displacement, anchors, support, 32, bound, bound=how) for how in FIELD_BOUNDS}
    sizes = {how: field.norm(dim=1) for how, field in fields.items()}
    assert all(float(size.max()) <= bound * (1 + 1e-5) for size in sizes.values())
    assert float(sizes["clamp"].mean()) > 1.5 * float(sizes["rescale"].mean())  # the chin no longer shrinks the rest


def test_makeup_stays_inside_its_masks_and_its_colour_ranges() -> None:
    points_px = _face() * SIZE - 0.5
    masks = torch.from_numpy(makeup_masks(points_px, (SIZE, SIZE)))[None]
    assert masks.shape == (1, len(REGIONS), SIZE, SIZE) and all(float(m.max()) > 0.1 for m in masks[0])
    image = torch.rand(1, 3, SIZE, SIZE)
    colours = bounded_colours(torch.randn(1, len(REGIONS), 3) * 10)
    opacity = bounded_opacity(torch.full((1, len(REGIONS)), 10.0))
    made_up = apply_makeup(image, masks, colours, opacity)
    outside = (masks.sum(dim=1, keepdim=True) == 0).expand_as(image)
    assert outside.any() and torch.equal(made_up[outside], image[outside])
    assert (made_up - image).abs()[~outside].max() > 0.05
    lips = bounded_colours(torch.full((1, len(REGIONS), 3), -50.0))[0, 0]
    assert lips.tolist() == pytest.approx([30.0, 15.0, -5.0])  # the lowest corner of the lipstick range


def test_dark_layers_darken_and_colour_layers_keep_the_skin_shading() -> None:
    points_px = _face() * SIZE - 0.5
    masks = torch.from_numpy(makeup_masks(points_px, (SIZE, SIZE)))[None]
    image = torch.full((1, 3, SIZE, SIZE), 0.7)
    colours = bounded_colours(torch.full((1, len(REGIONS), 3), -50.0))  # the darkest corner of every range
    opacity = bounded_opacity(torch.full((1, len(REGIONS)), 50.0))
    made_up = apply_makeup(image, masks, colours, opacity, [LUMINANCE_SHARE[r] for r in REGIONS]).mean(dim=1)[0]
    liner = masks[0, REGIONS.index("eyeliner")] > 0.9
    blush = masks[0, REGIONS.index("cheeks")] > 0.9
    assert liner.any() and blush.any()
    assert float(made_up[liner].mean()) < 0.4  # a dark line over a light skin
    assert float(made_up[blush].mean()) > 0.5  # a tint: the skin's lightness mostly stays


def test_features_keep_their_proportions_under_the_feature_bound() -> None:
    points = _face()
    cap = 0.06 * inter_ocular(points)
    translation, local = move_bounds(points, None, cap)
    assert np.all(translation == cap) and np.all(local == cap)
    translation, local = move_bounds(points, 0.15, cap)
    eye = list(FEATURES).index("eye_right")
    extents = feature_extents(points)
    assert extents[eye, 1] < 0.5 * extents[eye, 0]  # an eye is wider than it is open
    assert local[36, 1] == pytest.approx(0.15 * extents[eye, 1]) and local[36, 1] < local[36, 0] <= cap
    assert translation[list(FEATURES).index("brow_right"), 1] < cap  # a brow's height over its eye is its expression
    assert translation[list(FEATURES).index("jaw"), 1] == cap and np.all(local <= cap)


def test_the_attack_moves_stay_inside_the_feature_bounds(weights_dir: Path) -> None:
    config = WarpAttackConfig(steps=1, work_size=112, field_grid=16, feature_bound=0.15)
    module = _module(config, {"mobilefacenet_casia": 0.3})
    with torch.no_grad():
        module.translation_raw.fill_(20.0)
        module.displacement_raw.copy_(20.0 * torch.sign(torch.randn_like(module.displacement_raw)))
    moves = module.displacement()[0].detach().double().numpy() @ face_frame(module.face.landmarks[0].double().numpy())
    translation, local = move_bounds(module.face.landmarks[0].double().numpy(), 0.15, 0.06 * module.face.iod)
    own = moves - translation[feature_of_landmark()]
    assert np.all(np.abs(own) <= local * (1 + 1e-4)) and np.abs(own).max() > 0.9 * local.min()


def test_the_hinge_stops_pulling_on_models_past_their_margin(weights_dir: Path) -> None:
    config = WarpAttackConfig(steps=1, work_size=112, field_grid=16, adv_loss="hinge", adv_margin=0.2)
    fooled = _module(config, {"mobilefacenet_casia": 1.5})  # similarity ≤ 1 < 1.5 − 0.2: already past the margin
    terms, _ = fooled.losses(fooled.edit(fooled.face.work)[0])
    assert float(terms["adv"].detach()) == 0.0
    stubborn = _module(config, {"mobilefacenet_casia": 0.3})
    images, _ = stubborn.edit(stubborn.face.work)
    terms, sims = stubborn.losses(images)
    assert float(terms["adv"].detach()) == pytest.approx(float(sims["source"]["mobilefacenet_casia"]) - 0.1, abs=1e-5)


def _module(config: WarpAttackConfig, thresholds: dict[str, float]) -> WarpAttack:
    """A warp attack on a random crop with the synthetic face, against MobileFaceNet-CASIA, ready to run."""
    points = _face()
    points_px = points * SIZE - 0.5
    landmarks5 = np.stack(
        [points_px[36:42].mean(0), points_px[42:48].mean(0), points_px[30], points_px[48], points_px[54]]
    )
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    face = prepare_face(image, points_px, landmarks5, face_anchors(points, config), config)
    identity = AdversarialIdentityLoss([load_fr_model("mobilefacenet_casia")], "dodge")
    with torch.no_grad():
        source = identity.embed(face.work.image01, face.landmarks5)
    module = WarpAttack(face, "x", identity, IdentityReference(source), thresholds, config)
    module.on_fit_start()
    return module


def test_gradients_reach_the_displacements_and_the_makeup_even_with_a_closed_mouth(weights_dir: Path) -> None:
    config = WarpAttackConfig(steps=1, work_size=112, field_grid=16, makeup=("lips", "cheeks"))
    points = _face()
    points[[67, 66, 65]] = points[[61, 62, 63]]  # a closed mouth: dlib puts the inner lips on top of each other
    image = torch.rand(1, 3, SIZE, SIZE)
    points_px = points * SIZE - 0.5
    landmarks5 = np.stack(
        [points_px[36:42].mean(0), points_px[42:48].mean(0), points_px[30], points_px[48], points_px[54]]
    )
    face = prepare_face(image, points_px, landmarks5, face_anchors(points, config), config)
    identity = AdversarialIdentityLoss([load_fr_model("mobilefacenet_casia")], "dodge")
    with torch.no_grad():
        source = identity.embed(face.work.image01, face.landmarks5)
    module = WarpAttack(face, "x", identity, IdentityReference(source), {"mobilefacenet_casia": 0.3}, config)
    module.on_fit_start()
    images, _ = module.edit(face.work)
    terms, _ = module.losses(images)
    terms["loss"].sum().backward()
    for parameter in (module.translation_raw, module.displacement_raw, module.colour_raw, module.opacity_raw):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert set(dict(module.named_parameters())) == {"translation_raw", "displacement_raw", "colour_raw", "opacity_raw"}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_displacement", 0.0),
        ("makeup", ("lipstick",)),
        ("expression", "smug"),
        ("lambda_adv", 0.0),
        ("feature_bound", 0.0),
        ("adv_loss", "max"),
        ("makeup_luminance_share", 1.5),
    ],
)
def test_bad_settings_name_their_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"warp.{key}"):
        WarpAttackConfig(**{key: value})  # type: ignore[arg-type]


def test_preset_and_smoke_scale_compose() -> None:
    config = compose(["preset=warp_offline", "scale=smoke"])
    assert config.protect.method == "warp" and config.warp.steps <= 5
    assert config.fr.attacked == compose(["preset=offline_ensemble"]).fr.attacked


def test_protect_method_warp_end_to_end_and_resumes(faces_dir: Path, tmp_path: Path, single_thread: None) -> None:
    photo = faces_dir / "jack_dorsey" / "img16.jpg"
    out = tmp_path / "out"
    argv = ["protect", str(photo), "--out", str(out), "--method", "warp", "--preset", "warp_offline", "scale=smoke"]
    assert main([*argv, "trainer.progress_bar=false", "warp.makeup=[lips]"]) == 0
    record = _record(out, "img16")
    [face] = record["faces"]
    warp = face["warp"]
    assert warp["steps"] == 3 and warp["displacement"]["max_over_iod"] <= 0.06 + 1e-4
    assert 0 < warp["texture_haarpsi"] <= 1 and set(warp["makeup"]) == {"lips"}
    assert set(face["fr"]) == {"mobilefacenet_casia", "faceres", "faceres_deep", "mobileface_human", "dlib_native"}
    written = Path(record["outputs"]["photo"]).stat().st_mtime_ns
    assert main([*argv, "trainer.progress_bar=false", "warp.makeup=[lips]"]) == 0  # resumed: nothing redone
    assert Path(record["outputs"]["photo"]).stat().st_mtime_ns == written
    assert json.loads((out / "summary.json").read_text())["counts"] == {"done": 1}
    # scripts/demo.sh runs this preset and closes with demo_summary.py on the records: it must read them
    summary = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "scripts" / "demo_summary.py"), str(out)],
        capture_output=True,
        text=True,
    )
    assert summary.returncode == 0, summary.stderr
    assert f"protected photo: {record['outputs']['photo']}" in summary.stdout
    assert "dlib_native (never attacked) distance to the original face 0.000 ->" in summary.stdout


def test_evaluate_methods_warp(faces_dir: Path, tmp_path: Path, single_thread: None) -> None:
    from test_evaluate import _small_labelled_folder

    (tmp_path / "faces").mkdir()
    faces = _small_labelled_folder(faces_dir, tmp_path / "faces")
    out = tmp_path / "evaluate"
    argv = ["evaluate", "--faces", str(faces), "--out", str(out), "--methods", "clean", "warp", "--n-photos", "1"]
    assert main([*argv, "--preset", "warp_offline", "scale=smoke", "trainer.progress_bar=false"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["methods"]["warp"]["n"] == 1
    assert list((out / "warp").glob("*.png"))
