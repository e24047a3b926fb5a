"""CLIP2Protect stage 2 on a tiny random generator with the real offline face-recognition models (CPU, few steps)."""

from __future__ import annotations

import copy
import traceback
from pathlib import Path

import lightning as L
import pytest
import torch
from open_clip.model import CLIP

from facecloak.errors import ConfigError
from facecloak.faces.regions import jitter_landmarks
from facecloak.faces.templates import get_template
from facecloak.losses.clip_loss import DirectionalCLIPLoss
from facecloak.losses.degrade import DegradationConfig, diff_blur
from facecloak.losses.identity import AdversarialIdentityLoss, IdentityReference
from facecloak.models.fr.zoo import load_fr_model
from facecloak.models.stylegan2 import Generator, GeneratorConfig
from facecloak.stages.change import shape_change, texture_visibility
from facecloak.stages.fit import TRAINER_DEFAULTS, quiet_fit, steps_loader
from facecloak.stages.latent_search import AdversarialLatentSearch, search_latents
from facecloak.stages.latent_search_config import LatentSearchConfig, default_layers
from test_clip_loss import tiny_clip_loss

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = GeneratorConfig(size=64, style_dim=64, n_mlp=2, channel_base=512, channel_max=32)
ATTACKED = "mobilefacenet_casia"
IDS = ("alice", "bob")
NEVER = -1.0
"""A dodging threshold no cosine similarity can pass: the run never stops early."""
NOISE_STRENGTH = 0.1
PHOTO_OFFSET = 0.3
BASE = LatentSearchConfig(identity_mode="dodge", lambda_clip=0.0, steps=4, clip_distortion_scale=None)


@pytest.fixture(scope="module")
def generator() -> Generator:
    torch.manual_seed(0)
    generator = Generator(TINY).eval()
    with torch.no_grad():  # rosinality initialises noise strengths to zero; trained generators have non-zero ones
        for name, param in generator.named_parameters():
            if name.endswith("noise.weight"):
                param.fill_(NOISE_STRENGTH)
    return generator


@pytest.fixture(scope="module")
def inputs(generator: Generator) -> dict:
    """Pivots, noise and landmarks of two images, plus the render of a third identity used as a foreign reference."""
    rng = torch.Generator().manual_seed(1)
    with torch.no_grad():
        w = generator.mapping(torch.randn(3, TINY.style_dim, generator=rng))
    pivots = w[:, None].repeat(1, generator.n_latent, 1)
    pivots = pivots + 0.1 * torch.randn(pivots.shape, generator=rng)
    # Stand-ins for the user's photos: near their reconstructions but not equal (similarity ~0.95, not a maximum).
    photos = pivots + PHOTO_OFFSET * torch.randn(pivots.shape, generator=rng)
    noise = generator.make_noise(3, generator=rng)
    # The face fills the frame: the ArcFace template's landmarks scaled to the generator's size.
    landmarks = torch.as_tensor(get_template("arcface_112").scaled(TINY.size).points_array()).float()
    return {"pivots": pivots, "photos": photos, "noise": noise, "landmarks5": landmarks.expand(3, 5, 2).clone()}


def take(inputs: dict, index: list[int], dtype: torch.dtype = torch.float32) -> dict:
    """The module's inputs for some of the images (the photo codes stay under ``photos`` for the reference)."""
    return {
        "pivots": inputs["pivots"][index].to(dtype),
        "noise": [n[index].to(dtype) for n in inputs["noise"]],
        "landmarks5": inputs["landmarks5"][index].to(dtype),
        "photos": inputs["photos"][index].to(dtype),
    }


def module_inputs(part: dict) -> dict:
    return {k: v for k, v in part.items() if k != "photos"}


def render(generator: Generator, codes: torch.Tensor, part: dict) -> torch.Tensor:
    with torch.no_grad():
        return ((generator.synthesis(codes, part["noise"]) + 1) / 2).clamp(0, 1)


def photo_reference(identity: AdversarialIdentityLoss, generator: Generator, part: dict) -> IdentityReference:
    """Embeddings of the users' photos, as the caller computes them before stage 2."""
    with torch.no_grad():
        return IdentityReference(source=identity.embed(render(generator, part["photos"], part), part["landmarks5"]))


@pytest.fixture(scope="module")
def identity() -> AdversarialIdentityLoss:
    return AdversarialIdentityLoss([load_fr_model(ATTACKED)], mode="dodge")


def build(generator, part, identity, config=BASE, reference=None, thresholds=None, ids=IDS, clip_factory=None):
    reference = reference or photo_reference(identity, generator, part)
    thresholds = thresholds or {name: NEVER for name in identity.names}
    n = part["pivots"].shape[0]
    return AdversarialLatentSearch(
        generator, **module_inputs(part), image_ids=ids[:n], identity_loss=identity, reference=reference,
        thresholds=thresholds, config=config, clip_factory=clip_factory,
    )  # fmt: skip


def trainer(root: Path, steps: int, callbacks: list | None = None) -> L.Trainer:
    kwargs = {**TRAINER_DEFAULTS, "accelerator": "cpu", "default_root_dir": root, "callbacks": callbacks or []}
    return L.Trainer(**kwargs, max_steps=steps)


def run(module: AdversarialLatentSearch, root: Path, callbacks: list | None = None) -> L.Trainer:
    t = trainer(root, module.config.steps, callbacks)
    quiet_fit(t, module, steps_loader(module.config.steps))
    return t


class Record(L.Callback):
    """Latents after every optimizer step, and the clean similarities the step started from."""

    def __init__(self) -> None:
        self.latents: list[torch.Tensor] = []
        self.sims: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        with torch.no_grad():
            sims = module.clean_similarities(module.render(module.wplus(), module.noise_maps()))
        self.sims.append(sims["source"][ATTACKED].clone())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.latents.append(module.latent.detach().clone())


# --- configuration ---------------------------------------------------------------------------------------------------


def test_config_is_validated_with_the_key_named() -> None:
    for kwargs, key in (
        ({"lambda_adv": -1.0}, "lambda_adv"),
        ({"lambda_adv": 0.0, "lambda_clip": 0.0, "lambda_latent": 0.0}, "all zero"),
        ({"layers": (8, 8)}, "layers"),
        ({"identity_mode": "hide"}, "identity_mode"),
        ({"clip_distortion_scale": 1.5}, "clip_distortion_scale"),
        ({"steps": 0}, "steps"),
        ({"seed": -1}, "seed"),
        ({"change_blur_sigma": -1.0}, "change_blur_sigma"),
        ({"change_chroma": 1.5}, "change_chroma"),
        ({"change_flat_share": 0.0}, "change_flat_share"),
        ({"fr_crop_jitter": 0.5}, "fr_crop_jitter"),
    ):
        with pytest.raises(ConfigError, match=key):
            LatentSearchConfig(**kwargs)
    with pytest.raises(ConfigError, match="unknown search config keys"):
        LatentSearchConfig.from_dict({"learning_rate": 0.1})
    config = LatentSearchConfig(layers=[9, 4], fr_degradation=DegradationConfig())
    assert config.layers == (9, 4)
    assert LatentSearchConfig.from_dict(config.to_dict()) == config
    defaults = LatentSearchConfig()
    assert (defaults.lambda_adv, defaults.lambda_clip, defaults.lambda_latent) == (0.7, 0.3, 0.01)
    assert (defaults.lr, defaults.steps, defaults.noise_max_resolution) == (0.01, 50, 256)


def test_default_layers_are_the_fine_half() -> None:
    assert default_layers(18) == tuple(range(8, 18))  # CLIP2Protect on config-f: slots 8–17
    assert default_layers(TINY.n_latent) == (4, 5, 6, 7, 8, 9)


def test_inputs_are_checked(generator, inputs, identity) -> None:
    part = take(inputs, [0, 1])
    with pytest.raises(ConfigError, match="layers"):
        build(generator, part, identity, LatentSearchConfig(identity_mode="dodge", lambda_clip=0.0, layers=(12,)))
    with pytest.raises(ConfigError, match="threshold"):
        build(generator, part, identity, thresholds={"faceres": 0.3})
    with pytest.raises(ConfigError, match="identity_mode"):
        build(generator, part, identity, LatentSearchConfig(lambda_clip=0.0))  # impersonate vs a dodging loss
    with pytest.raises(ConfigError, match="pivots"):
        bad = {**part, "pivots": part["pivots"][:, :4]}
        build(generator, bad, identity, reference=photo_reference(identity, generator, part))
    with pytest.raises(ConfigError, match="unique image id"):
        build(generator, part, identity, ids=("same", "same"))


# --- loss terms ------------------------------------------------------------------------------------------------------


def test_latent_term_is_zero_at_the_pivot_and_quadratic(generator, inputs, identity) -> None:
    module = build(generator, take(inputs, [0, 1]), identity)
    torch.testing.assert_close(module.latent_loss(), torch.zeros(2), atol=0, rtol=0)
    delta = torch.randn(module.latent.shape[1:], generator=torch.Generator().manual_seed(2))
    start = module.latent.detach().clone()
    for scale in (1.0, 2.0):
        with torch.no_grad():
            module.latent[0] = start[0] + scale * delta
        expected = torch.stack([scale**2 * delta.pow(2).sum(), torch.tensor(0.0)])
        torch.testing.assert_close(module.latent_loss().detach(), expected, rtol=1e-5, atol=1e-6)


def test_adversarial_term_is_the_similarity_to_the_users_photo(generator, inputs, identity) -> None:
    """Dodging: L_adv is the cosine between the render's and the photo's embeddings; an opposite reference gives -1."""
    part = take(inputs, [0, 1])
    photo = photo_reference(identity, generator, part)
    with torch.no_grad():
        own = identity.embed(render(generator, part["pivots"], part), part["landmarks5"])[ATTACKED]
    for reference, expected in (
        (photo, (own * photo.source[ATTACKED]).sum(1)),
        (IdentityReference(source={ATTACKED: -own}), -torch.ones(2)),
    ):
        module = build(generator, part, identity, reference=reference)
        module.frozen.to(torch.device("cpu"))
        with torch.no_grad():
            terms, sims = module.losses(module.render(module.wplus(), module.noise_maps()))
        torch.testing.assert_close(terms["adv"], sims["source"][ATTACKED])
        torch.testing.assert_close(terms["adv"], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(terms["loss"], BASE.lambda_adv * terms["adv"] + BASE.lambda_latent * terms["latent"])
    photo_similarity = (own * photo.source[ATTACKED]).sum(1)
    assert bool((photo_similarity > 0.5).all() and (photo_similarity < 0.999).all())  # near, not at, the photo


def test_change_shaping_keeps_smooth_grey_changes_and_removes_texture_and_colour() -> None:
    """Low-pass and de-saturation of the pasted change, on crafted changes of known spectrum and colour."""
    size = 32
    zero = torch.zeros(1, 3, size, size)
    torch.testing.assert_close(shape_change(zero, 2.0, 0.0), zero, atol=0, rtol=0)
    grey = torch.full((1, 3, size, size), 0.05)  # a uniform brightening: nothing to blur, no colour
    torch.testing.assert_close(shape_change(grey, 2.0, 0.0), grey, atol=1e-7, rtol=0)
    # A one-pixel checkerboard (the finest texture) of amplitude 0.06 all but vanishes under sigma = 1 ...
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    checker = (0.06 * (1 - 2 * ((xx + yy) % 2))).float().expand(1, 3, size, size)
    assert float(shape_change(checker, 1.0, 1.0).abs().max()) < 0.06 * 0.01
    # ... while a slow ramp (period 32 px) keeps most of its amplitude inside the image.
    ramp = (0.06 * torch.sin(2 * torch.pi * xx / size)).float().expand(1, 3, size, size)
    kept = shape_change(ramp, 1.0, 1.0)[..., 8:24]
    assert float((kept - ramp[..., 8:24]).abs().max()) < 0.06 * 0.05
    # A red shift: chroma 0 leaves its luma in every channel, chroma 0.5 halves its distance from that grey.
    red = torch.zeros(1, 3, size, size)
    red[:, 0] = 0.1
    luma = 0.299 * 0.1
    torch.testing.assert_close(shape_change(red, 0.0, 0.0), torch.full_like(red, luma), atol=1e-7, rtol=0)
    half = shape_change(red, 0.0, 0.5)
    torch.testing.assert_close(half - luma, 0.5 * (red - luma), atol=1e-7, rtol=0)
    torch.testing.assert_close(shape_change(red, 0.0, 1.0), red, atol=0, rtol=0)
    # Neither shaping enlarges the change: a bound set before them still holds after.
    bounded = 0.09 * torch.tanh(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(4)) * 10)
    for sigma, chroma in ((1.0, 1.0), (0.0, 0.0), (2.0, 0.3)):
        assert float(shape_change(bounded, sigma, chroma).abs().max()) <= float(bounded.abs().max()) + 1e-7


def test_texture_visibility_keeps_the_change_off_smooth_skin_and_in_texture() -> None:
    """Flat image: ``flat_share`` everywhere; high-contrast texture: all of it; a blurred face counts as flat."""
    size = 64
    flat = torch.full((1, 3, size, size), 0.7)
    torch.testing.assert_close(texture_visibility(flat, 0.25), torch.full((1, 1, size, size), 0.25))
    xx = torch.arange(size).expand(size, size)
    stripes = (0.5 + 0.3 * torch.sign(torch.sin(2 * torch.pi * xx / 4 + 0.1))).float().expand(1, 3, size, size)
    half = torch.where(xx < size // 2, flat[0, 0], stripes[0, 0]).expand(1, 3, size, size)
    visibility = texture_visibility(half, 0.25)
    assert visibility.shape == (1, 1, size, size)
    assert float(visibility.min()) >= 0.25 - 1e-6 and float(visibility.max()) <= 1 + 1e-6
    torch.testing.assert_close(visibility[..., :, :20], torch.full_like(visibility[..., :, :20], 0.25))
    assert float(visibility[..., :, 44:].min()) > 0.99  # a 0.3-amplitude stripe texture hides the full change
    across = visibility[0, 0, size // 2]
    assert bool((across[1:] >= across[:-1] - 1e-6).all())  # a smooth ramp from skin to texture, no step back
    # The same stripes out of focus (a face in the crowd behind the subject) are treated as smooth skin.
    blurred = diff_blur(stripes, 4.0)
    assert float(texture_visibility(blurred, 0.25).max()) < 0.5
    assert float(texture_visibility(blurred, 0.25).mean()) < float(texture_visibility(stripes, 0.25).mean()) - 0.4


def test_crop_jitter_is_a_bounded_random_similarity() -> None:
    landmarks = torch.as_tensor(get_template("arcface_112").points_array()).float()[None]
    eye = float((landmarks[0, 1] - landmarks[0, 0]).norm())
    torch.testing.assert_close(jitter_landmarks(landmarks, 0.0, torch.Generator().manual_seed(0)), landmarks)
    rng = torch.Generator().manual_seed(0)
    moved = [jitter_landmarks(landmarks, 0.1, rng) for _ in range(50)]
    assert len({tuple(m.flatten().tolist()) for m in moved}) == 50  # a fresh draw every call
    for m in moved:
        scale = float((m[0, 1] - m[0, 0]).norm()) / eye
        assert 0.9 - 1e-5 <= scale <= 1.1 + 1e-5
        shift = (m.mean(dim=1) - landmarks.mean(dim=1)).abs().max()
        assert float(shift) <= 0.1 * eye + 1e-4
        # A similarity keeps every distance ratio: the eye-to-mouth over eye-to-eye ratio is unchanged.
        ratio = lambda p: float((p[0, 3] - p[0, 0]).norm() / (p[0, 1] - p[0, 0]).norm())  # noqa: E731
        assert abs(ratio(m) - ratio(landmarks)) < 1e-5
    spread = torch.stack(moved).std(dim=0).mean()
    assert float(spread) > 0.02 * eye  # it really moves the crop
    again = jitter_landmarks(landmarks, 0.1, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, moved[0], atol=0, rtol=0)  # the per-image stream makes runs repeatable


def test_anchored_render_pastes_a_smooth_grey_change(generator, inputs, identity) -> None:
    """With an anchor, the render is anchor + shaped change; chroma 0 gives equal R, G, B changes."""
    part = take(inputs, [0, 1])
    anchor = render(generator, part["photos"], part)
    changes = {}
    for chroma, sigma, flat_share in ((0.0, 0.0, 1.0), (1.0, 2.0, 1.0), (0.0, 2.0, 1.0), (0.0, 2.0, 0.3)):
        config = LatentSearchConfig(
            identity_mode="dodge",
            lambda_clip=0.0,
            steps=1,
            change_chroma=chroma,
            change_blur_sigma=sigma,
            change_flat_share=flat_share,
        )
        module = AdversarialLatentSearch(
            generator, **module_inputs(part), image_ids=IDS, identity_loss=identity,
            reference=photo_reference(identity, generator, part), thresholds={ATTACKED: NEVER}, config=config,
            anchor=anchor,
        )  # fmt: skip
        module.on_fit_start()
        with torch.no_grad():
            torch.testing.assert_close(module.render(module.wplus(), module.noise_maps()), anchor, atol=1e-6, rtol=0)
            module.latent.add_(0.5 * torch.randn(module.latent.shape, generator=torch.Generator().manual_seed(3)))
            moved = module.render(module.wplus(), module.noise_maps())
            raw = module._render_generated(module.wplus(), module.noise_maps()) - module._pivot_generated
        change = moved - anchor
        inside = (anchor > 0.1) & (anchor < 0.9) & (moved > 0.0) & (moved < 1.0)  # away from clamping
        inside = inside.all(dim=1, keepdim=True).expand_as(change)
        changes[flat_share] = (change, inside)
        assert float(change.abs().max()) > 0.01  # the edit reaches the pasted pixels
        if chroma == 0.0:
            spread = (change - change.mean(dim=1, keepdim=True)).abs()[inside]
            assert float(spread.max()) < 1e-5  # grey: the same change in R, G and B
        if sigma > 0:

            def roughness(x):
                return float((x[..., 1:, :] - x[..., :-1, :]).abs().mean())

            assert roughness(change) < 0.5 * roughness(raw)  # neighbouring pixels change together
    # change_flat_share scales the same change by the anchor's texture map: less on smooth parts, all in texture.
    (full, inside_full), (masked, inside_masked) = changes[1.0], changes[0.3]
    both = inside_full & inside_masked
    expected = full * texture_visibility(anchor, 0.3)
    torch.testing.assert_close(masked[both], expected[both], atol=1e-5, rtol=0)
    assert float(masked.abs().sum()) < float(full.abs().sum())


# --- the search ------------------------------------------------------------------------------------------------------


def test_dodging_lowers_similarity_and_changes_only_the_selected_slots(generator, inputs, tmp_path) -> None:
    """Two real attacked models (MobileFaceNet-CASIA on its 112×96 crop, FaceRes on its 224 crop), three steps."""
    ensemble = AdversarialIdentityLoss([load_fr_model(ATTACKED), load_fr_model("faceres")], mode="dodge")
    part = take(inputs, [0, 1])
    config = LatentSearchConfig(
        identity_mode="dodge", lambda_clip=0.0, steps=3, layers=(5, 7, 8), noise_max_resolution=16
    )
    module = build(generator, part, ensemble, config)
    t = run(module, tmp_path)
    results = module.results()
    for i, result in enumerate(results):
        assert result.image_id == IDS[i] and result.stopped_at == -1 and not result.success
        for name in ensemble.names:
            before, after = result.similarities_before["source"][name], result.similarities_after["source"][name]
            assert 0.5 < before < 0.999 and after < before - 1e-3, (name, before, after)
        changed = (result.wplus != part["pivots"][i]).any(dim=1)
        assert changed.nonzero().flatten().tolist() == [5, 7, 8]
        sides = [n.shape[-1] for n in result.noise]
        for side, new, old in zip(sides, result.noise, part["noise"]):
            assert torch.equal(new[0], old[i]) == (side > 16), side
        assert result.image.shape == (3, TINY.size, TINY.size)
        assert float(result.image.min()) >= 0.0 and float(result.image.max()) <= 1.0
    logged = set(t.callback_metrics)
    assert {"search/adv", "search/clip", "search/latent", "search/loss", "search/active_images"} <= logged
    assert f"search/sim_source/{ATTACKED}" in logged and t.global_step == 3


def test_impersonation_raises_similarity_to_the_target(generator, inputs, tmp_path) -> None:
    impersonate = AdversarialIdentityLoss([load_fr_model(ATTACKED)], mode="impersonate")
    part = take(inputs, [0, 1])
    stranger = take(inputs, [2, 2])
    reference = IdentityReference(
        source=photo_reference(impersonate, generator, part).source,
        target=photo_reference(impersonate, generator, stranger).source,
    )
    config = LatentSearchConfig(identity_mode="impersonate", lambda_clip=0.0, steps=3)
    module = build(generator, part, impersonate, config, reference, {ATTACKED: 1.5})  # a match no cosine reaches
    run(module, tmp_path)
    for result in module.results():
        before, after = result.similarities_before["target"][ATTACKED], result.similarities_after["target"][ATTACKED]
        assert after > before + 1e-3 and not result.success


def test_early_stop_freezes_each_finished_image(generator, inputs, identity, tmp_path) -> None:
    """Image 0 stops mid-run; image 1's reference is the opposite of its own face, so it passes at step 0."""
    stop = 3
    config = LatentSearchConfig(identity_mode="dodge", lambda_clip=0.0, steps=stop + 1, early_stop=False)
    dry = Record()
    run(build(generator, take(inputs, [0]), identity, config), tmp_path / "dry", [dry])
    sims = torch.stack(dry.sims)[:, 0]
    assert bool((sims[1:] < sims[:-1]).all()), sims  # monotone on this seed, so the crossing step is unambiguous
    threshold = float(sims[stop - 1] + sims[stop]) / 2

    part = take(inputs, [0, 1])
    photo = photo_reference(identity, generator, part).source[ATTACKED]
    reference = IdentityReference(source={ATTACKED: torch.stack([photo[0], -photo[1]])})
    config = LatentSearchConfig(identity_mode="dodge", lambda_clip=0.0, steps=8)
    module = build(generator, part, identity, config, reference, {ATTACKED: threshold})
    record = Record()
    t = run(module, tmp_path / "run", [record])

    assert module.stopped_at.tolist() == [stop, 0]
    assert t.global_step == stop + 1  # the run ends once both images have stopped, not after 8 steps
    latents = torch.stack(record.latents)
    pivot_slots = part["pivots"][:, list(module.layers)]
    assert all(torch.equal(step[1], pivot_slots[1]) for step in latents)  # never moved
    assert not torch.equal(latents[stop - 1][0], pivot_slots[0])
    assert all(torch.equal(step[0], latents[stop - 1][0]) for step in latents[stop - 1 :])  # frozen once passing
    results = module.results()
    assert [r.success for r in results] == [True, True]
    assert results[0].similarities_after["source"][ATTACKED] <= threshold


def test_batch_of_two_equals_two_runs_of_one(generator, inputs, tmp_path) -> None:
    """Images are independent: with CLIP (augmented views) and FR-branch EOT on, batching changes nothing.

    In float64, because Adam's first step is ``lr * sign(g)``: in float32 the last-bit differences between batched
    and single kernels flip the sign of near-zero gradient entries, which hides any real coupling.
    """
    config = LatentSearchConfig(
        identity_mode="dodge",
        steps=3,
        clip_distortion_scale=0.5,
        fr_degradation=DegradationConfig(probabilities={"jpeg": 1.0, "blur": 1.0}),
        seed=7,
    )
    generator64 = copy.deepcopy(generator).double()
    identity64 = AdversarialIdentityLoss([copy.deepcopy(load_fr_model(ATTACKED)).double()], mode="dodge")

    def clip_factory(c: LatentSearchConfig) -> DirectionalCLIPLoss:
        return tiny_clip_loss(c.makeup_prompt, c.clip_distortion_scale, c.clip_num_augmentations).double()

    def search(index: list[int]) -> list:
        part = take(inputs, index, torch.float64)
        return search_latents(
            generator64, **module_inputs(part), image_ids=[IDS[i] for i in index], identity_loss=identity64,
            reference=photo_reference(identity64, generator64, part), thresholds={ATTACKED: NEVER}, config=config,
            trainer_kwargs={"accelerator": "cpu", "default_root_dir": tmp_path}, clip_factory=clip_factory,
        )  # fmt: skip

    both = search([0, 1])
    for i in range(2):
        (alone,) = search([i])
        assert alone.image_id == both[i].image_id
        assert float((alone.wplus - inputs["pivots"][i]).abs().max()) > 0.01  # it moved
        torch.testing.assert_close(alone.wplus, both[i].wplus, atol=1e-12, rtol=0)
        for a, b in zip(alone.noise, both[i].noise):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
        torch.testing.assert_close(alone.image, both[i].image, atol=1e-12, rtol=0)


def test_per_image_generators_render_each_image_with_its_own(generator, inputs, identity) -> None:
    other = Generator(TINY).eval()
    with torch.no_grad():
        for p, q in zip(other.parameters(), generator.parameters()):
            p.copy_(q + 0.05 * torch.randn_like(q))
    part = take(inputs, [0, 1])
    module = build(generator, part, identity)
    module.frozen.generators = [generator, other]
    with torch.no_grad():
        images = module.render(module.wplus(), module.noise_maps())
    first, second = take(inputs, [0]), take(inputs, [1])
    torch.testing.assert_close(images[:1], render(generator, first["pivots"], first), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(images[1:], render(other, second["pivots"], second), atol=1e-5, rtol=1e-5)


def test_clip_is_built_only_when_weighted(generator, inputs, identity) -> None:
    built: list[str] = []

    def clip_factory(c: LatentSearchConfig) -> DirectionalCLIPLoss:
        built.append(c.makeup_prompt)
        return tiny_clip_loss(c.makeup_prompt)

    part = take(inputs, [0, 1])
    module = build(generator, part, identity, BASE, clip_factory=clip_factory)
    assert built == [] and module.frozen.clip is None
    assert not any(isinstance(m, CLIP) for m in module.modules())
    weighted = LatentSearchConfig(identity_mode="dodge", lambda_clip=0.3, makeup_prompt="pink eyeshadow")
    module = build(generator, part, identity, weighted, clip_factory=clip_factory)
    assert built == ["pink eyeshadow"] and module.frozen.clip is not None
    with pytest.raises(ConfigError, match="makeup_prompt"):
        build(generator, part, identity, weighted, clip_factory=lambda c: tiny_clip_loss("blue lipstick"))


def test_checkpoint_holds_only_latents_and_noise(generator, inputs, identity, tmp_path) -> None:
    config = LatentSearchConfig(identity_mode="dodge", steps=2, clip_distortion_scale=None)
    part = take(inputs, [0, 1])
    module = build(generator, part, identity, config, clip_factory=lambda c: tiny_clip_loss(c.makeup_prompt))
    t = run(module, tmp_path)
    path = tmp_path / "search.ckpt"
    t.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    expected = {"latent"} | {f"noise.{k}" for k in range(len(module.noise_layers))}
    assert set(checkpoint["state_dict"]) == expected
    assert checkpoint["state_dict"]["latent"].shape == (2, len(default_layers(TINY.n_latent)), TINY.style_dim)
    assert checkpoint["latent_search"]["stopped_at"].tolist() == [-1, -1]
    assert checkpoint["hyper_parameters"]["config"] == config.to_dict()
    frozen = [generator, identity, module.frozen.clip]
    assert all(not m.training and not any(p.requires_grad for p in m.parameters()) for m in frozen)
    fresh = build(generator, part, identity, config, clip_factory=lambda c: tiny_clip_loss(c.makeup_prompt))
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)
    torch.testing.assert_close(fresh.wplus(), module.wplus())
    checkpoint["latent_search"]["stopped_at"] = torch.tensor([1, -1])
    fresh.on_load_checkpoint(checkpoint)
    assert fresh.stopped_at.tolist() == [1, -1]


def test_moving_the_search_leaves_the_shared_networks_alone(generator, inputs, identity):
    """Teardown's module move must not drag the tuned generator or the FR judges along (they are the job's)."""
    module = build(generator, take(inputs, [0]), identity)
    module.double()
    assert {p.dtype for p in generator.parameters()} == {torch.float32}
    assert {p.dtype for p in module.parameters()} == {torch.float64}
    assert {p.dtype for p in identity.parameters() if p.is_floating_point()} <= {torch.float32}
    assert {b.dtype for b in identity.buffers() if b.is_floating_point()} <= {torch.float32}


# --- host reads (GPU syncs) ------------------------------------------------------------------------------------------

HOST_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")
"""Tensor methods that hand a value to Python: on a GPU each waits for every queued kernel (a host sync)."""
HOST_STATE = ("torch/optim/",)
"""Callers whose reads are of tensors that live on the host by design (Adam's step counter), so no sync."""


class HostReads(L.Callback):
    """Counts the host reads of tensor values made during optimisation steps, through patched tensor methods.

    On a CPU nothing waits, but the calls are the ones a GPU run makes, so counting them here bounds the syncs of a
    GPU run (tests/test_cuda.py checks the same on a GPU with ``torch.cuda.set_sync_debug_mode``).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counting = False
        self.reads: list[str] = []
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name)))

    def _counted(self, name: str, original):
        def read(tensor, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            if self.counting and not any(part in caller.filename for part in HOST_STATE):
                self.reads.append(f"{name} at {Path(caller.filename).name}:{caller.lineno}")
            return original(tensor, *args, **kwargs)

        return read

    def on_train_start(self, trainer, module) -> None:
        self.counting = True

    def on_train_end(self, trainer, module) -> None:
        self.counting = False


@pytest.mark.parametrize("every", [1, 4])
def test_search_reads_device_values_only_every_n_steps(generator, inputs, identity, tmp_path, monkeypatch, every):
    """Early stop decides and restores on the device; only the all-stopped check reads back, every N steps."""
    config = LatentSearchConfig(identity_mode="dodge", lambda_clip=0.0, steps=8, early_stop=True)
    module = build(generator, take(inputs, [0, 1]), identity, config)  # a threshold no image passes: never stops
    counter = HostReads(monkeypatch)
    kwargs = {"accelerator": "cpu", "default_root_dir": tmp_path, "callbacks": [counter], "log_every_n_steps": every}
    t = L.Trainer(**{**TRAINER_DEFAULTS, **kwargs}, max_steps=config.steps)
    quiet_fit(t, module, steps_loader(config.steps))
    assert t.global_step == config.steps
    assert len(counter.reads) <= config.steps // every, counter.reads
