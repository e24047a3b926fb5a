"""The directional CLIP makeup loss on a tiny random open_clip model (same code path as the real ViT-B/32)."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from facecloak.errors import ConfigError, MissingWeightsError
from facecloak.losses.clip_loss import (
    CLIP_REGISTRY_NAME,
    IMAGENET_TEMPLATES,
    OPEN_CLIP_ARCHITECTURE,
    ClipPreprocessing,
    DirectionalCLIPLoss,
    directional_loss,
    load_clip_model,
    perspective_corners,
    random_perspective,
    resize_for_clip,
    text_direction,
)
from facecloak.registry.store import is_available

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPT = "red lipstick"


def tiny_clip_model(seed: int = 0) -> CLIP:
    """A random CLIP with open_clip's ViT/text classes and OpenAI's tokenizer and input size, but tiny widths."""
    torch.manual_seed(seed)
    vision = CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=32, image_size=224)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)
    return CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text, quick_gelu=True).eval()


def tiny_clip_loss(
    prompt: str = PROMPT, distortion_scale: float | None = None, num_augmentations: int = 1
) -> DirectionalCLIPLoss:
    return DirectionalCLIPLoss.from_prompt(
        tiny_clip_model(),
        open_clip.get_tokenizer(OPEN_CLIP_ARCHITECTURE),
        prompt,
        distortion_scale=distortion_scale,
        num_augmentations=num_augmentations,
    )


@pytest.fixture(scope="module")
def loss() -> DirectionalCLIPLoss:
    return tiny_clip_loss()


def images(seed: int, batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_templates_are_the_80_imagenet_prompts() -> None:
    assert len(IMAGENET_TEMPLATES) == 80 == len(set(IMAGENET_TEMPLATES))
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)


def test_registry_preprocessing_is_openai_clip() -> None:
    pre = ClipPreprocessing.from_registry()
    assert pre.size == 224
    assert pre.mean == pytest.approx(open_clip.constants.OPENAI_DATASET_MEAN)
    assert pre.std == pytest.approx(open_clip.constants.OPENAI_DATASET_STD)
    with pytest.raises(ConfigError, match="positive stds"):
        ClipPreprocessing(224, (0.5, 0.5, 0.5), (1.0, 0.0, 1.0))


def test_preprocessing_normalises_exactly_once(loss: DirectionalCLIPLoss) -> None:
    """Whatever reaches the vision tower: a constant image at the CLIP mean becomes 0, at mean + std becomes 1."""
    seen: list[torch.Tensor] = []
    hook = loss.model.visual.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        mean = torch.tensor(loss.preprocessing.mean).view(1, 3, 1, 1)
        std = torch.tensor(loss.preprocessing.std).view(1, 3, 1, 1)
        for value, expected in ((mean, 0.0), (mean + std, 1.0)):
            x = value.expand(2, 3, 48, 80).clone()  # not square, not 224: resize of the shorter side + centre crop
            loss.source_features(x)
            loss.image_features(x)
            for tensor in seen[-2:]:
                assert tensor.shape == (2, 3, 224, 224)
                torch.testing.assert_close(tensor, torch.full_like(tensor, expected), atol=1e-5, rtol=0)
    finally:
        hook.remove()
    assert len(seen) == 4


def test_resize_keeps_range_and_crops_the_centre() -> None:
    x = torch.zeros(1, 3, 100, 300)
    x[..., 100:200] = 1.0  # the centre square is white, the sides black
    out = resize_for_clip(x, 224)
    assert out.shape == (1, 3, 224, 224)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(out[..., 20:-20].mean()) == pytest.approx(1.0, abs=1e-6)


def test_directional_loss_on_crafted_directions() -> None:
    text = torch.tensor([[0.6, 0.8, 0.0]])
    cases = {
        "aligned": (text * 3.0, 0.0),
        "opposite": (-text * 0.5, 2.0),
        "orthogonal": (torch.tensor([[0.0, 0.0, 2.0]]), 1.0),
    }
    for name, (image_dir, expected) in cases.items():
        assert float(directional_loss(image_dir, text)) == pytest.approx(expected, abs=1e-6), name
    for no_edit in (torch.zeros(1, 3), torch.full((1, 3), 1e-7)):  # exactly zero, and float noise
        no_edit.requires_grad_(True)
        value = directional_loss(no_edit, text)
        value.sum().backward()
        assert float(value.detach()) == 1.0
        assert no_edit.grad is not None and torch.equal(no_edit.grad, torch.zeros_like(no_edit.grad))


def test_identical_image_gives_loss_one_and_a_finite_gradient(loss: DirectionalCLIPLoss) -> None:
    x = images(1).requires_grad_(True)
    source = loss.source_features(x.detach())
    value = loss(x, source)
    assert value.shape == (2,)
    torch.testing.assert_close(value.detach(), torch.ones(2), atol=0, rtol=0)
    value.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # A real edit gets a gradient through the same path.
    edited = (x.detach() * 0.5).requires_grad_(True)
    loss(edited, source).sum().backward()
    assert edited.grad is not None and torch.isfinite(edited.grad).all() and float(edited.grad.abs().sum()) > 0


def test_aligned_and_opposite_edits_through_the_model(loss: DirectionalCLIPLoss) -> None:
    """An edit whose CLIP direction is the text direction scores 0; the reverse edit scores 2."""
    source_images, edited = images(2, batch=1), images(3, batch=1)
    edit_direction = loss.image_features(edited)[:, 0] - loss.source_features(source_images)
    for sign, expected in ((1.0, 0.0), (-1.0, 2.0)):
        crafted = DirectionalCLIPLoss(loss.model, sign * edit_direction[0], loss.preprocessing, distortion_scale=None)
        value = crafted(edited, crafted.source_features(source_images))
        assert float(value) == pytest.approx(expected, abs=1e-5)


def test_text_direction_is_the_template_mean_of_unit_differences(loss: DirectionalCLIPLoss) -> None:
    tokenizer = open_clip.get_tokenizer(OPEN_CLIP_ARCHITECTURE)
    templates = ("a photo of a {}.", "a sketch of the {}.")
    direction = text_direction(loss.model, tokenizer, PROMPT, "face", templates)
    with torch.no_grad():
        feats = {
            text: torch.nn.functional.normalize(loss.model.encode_text(tokenizer([t.format(text) for t in templates])))
            for text in (PROMPT, "face")
        }
    expected = torch.nn.functional.normalize((feats[PROMPT] - feats["face"]).mean(0), dim=0)
    torch.testing.assert_close(direction, expected)
    assert float(loss.direction.norm()) == pytest.approx(1.0)
    assert loss.prompt == PROMPT
    with pytest.raises(ConfigError, match="different makeup prompt"):
        text_direction(loss.model, tokenizer, "face", "face", templates)
    with pytest.raises(ConfigError, match="'\\{\\}'"):
        text_direction(loss.model, tokenizer, PROMPT, "face", ("no slot",))


def test_augmented_loss_has_gradients_and_per_image_streams() -> None:
    augmented = tiny_clip_loss(distortion_scale=0.5, num_augmentations=2)
    x = images(4).requires_grad_(True)
    source = augmented.source_features(x.detach())

    def rngs(*seeds: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in seeds]

    value = augmented(x, source, rngs(10, 11))
    assert value.shape == (2,) and bool((value > 0).all()) and bool((value < 2).all())
    value.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0
    # An image's augmentation depends on its own generator only, not on its batch-mates.
    alone = augmented(x[1:].detach(), source[1:], rngs(11))
    torch.testing.assert_close(alone, value[1:].detach(), atol=1e-5, rtol=1e-5)


def test_random_perspective_moves_corners_inward_with_black_fill() -> None:
    corners = perspective_corners(224, 0.5, torch.Generator().manual_seed(0))
    last, reach = 223.0, 0.5 * 223 / 2
    assert bool(((corners[:, 0] >= 0) & (corners[:, 0] <= last) & (corners[:, 1] >= 0)).all())
    assert bool(((corners[[0, 3], 0]) <= reach).all() and (corners[[1, 2], 0] >= last - reach).all())
    white = torch.ones(2, 3, 32, 32)
    warped = random_perspective(white, 0.5, [torch.Generator().manual_seed(s) for s in (1, 2)])
    assert float(warped.min()) == 0.0 and float(warped.max()) == pytest.approx(1.0)
    assert not torch.equal(warped[0], warped[1])
    with pytest.raises(ConfigError, match="one generator per image"):
        random_perspective(white, 0.5, [None])


def test_real_weights_load_only_from_the_registry() -> None:
    if not is_available(CLIP_REGISTRY_NAME):
        with pytest.raises(MissingWeightsError, match="facecloak"):
            load_clip_model()
        return
    model, tokenizer = load_clip_model()
    assert model.visual.output_dim == 512 and tokenizer([PROMPT]).shape == (1, 77)
