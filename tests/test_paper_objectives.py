"""The paper's objectives as switches: InfoNCE CLIP loss, template sets, ensemble sum, reference dodging, box crop."""

from __future__ import annotations

import open_clip
import pytest
import torch
from torchvision import transforms

from facecloak.errors import ConfigError
from facecloak.faces.box_crop import box_slices, crop_boxes
from facecloak.losses.clip_infonce import InfoNCECLIPLoss, torchvision_perspective_points
from facecloak.losses.clip_loss import CLIP_TEMPLATE_SETS, IMAGENET_TEMPLATES, OPEN_CLIP_ARCHITECTURE, ClipPreprocessing
from facecloak.losses.identity import AdversarialIdentityLoss, IdentityReference
from facecloak.models.fr.zoo import FaceEmbedder
from facecloak.registry.entries import get_entry
from test_clip_loss import tiny_clip_model

pytestmark = pytest.mark.usefixtures("single_thread")
PREPROCESSING = ClipPreprocessing(224, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def test_official_templates_are_clips_list_without_one() -> None:
    official = CLIP_TEMPLATE_SETS["official79"]
    assert len(official) == 79 and len(IMAGENET_TEMPLATES) == 80
    assert [t for t in IMAGENET_TEMPLATES if t not in official] == ["a photo of many {}."]


def test_perspective_corners_are_torchvisions_draws() -> None:
    ours = torchvision_perspective_points(64, 48, 0.5, torch.Generator().manual_seed(7))
    torch.manual_seed(7)  # torchvision draws from the global stream
    assert ours == transforms.RandomPerspective.get_params(64, 48, 0.5)


class CountingClip(torch.nn.Module):
    """A tiny real CLIP that counts how often its text encoder runs."""

    def __init__(self) -> None:
        super().__init__()
        self.clip = tiny_clip_model()
        self.text_calls = 0

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        self.text_calls += 1
        return self.clip.encode_text(tokens)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(image)


@pytest.mark.parametrize("input_range", ["official", "fixed"])
def test_infonce_encodes_templates_once_and_moves_the_image(input_range: str) -> None:
    model = CountingClip()
    tokenizer = open_clip.get_tokenizer(OPEN_CLIP_ARCHITECTURE)
    loss = InfoNCECLIPLoss(
        model, tokenizer, "red lipstick", CLIP_TEMPLATE_SETS["official79"], PREPROCESSING, input_range=input_range
    )
    assert model.text_calls == 2 and loss.source_text_features.shape[0] == 79
    source = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    images = source.clone().requires_grad_(True)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    value = loss(images, loss.source_features(source), gens)
    value.sum().backward()
    assert value.shape == (2,) and torch.isfinite(value).all() and images.grad is not None
    assert images.grad.abs().sum() > 0 and model.text_calls == 2  # no re-encoding per step
    # Cross-entropy over 1 positive and 79 negatives is at most a few units around log(80).
    assert (value > 0).all() and (value < 30).all()


def test_clip_input_range_official_squeezes_into_the_upper_half() -> None:
    loss = InfoNCECLIPLoss(tiny_clip_model(), open_clip.get_tokenizer(OPEN_CLIP_ARCHITECTURE), "x", ["{}"],
                           PREPROCESSING, input_range="official")  # fmt: skip
    black = torch.zeros(1, 3, 32, 32)
    mean = torch.tensor(PREPROCESSING.mean).view(1, 3, 1, 1)
    std = torch.tensor(PREPROCESSING.std).view(1, 3, 1, 1)
    assert torch.allclose(loss.preprocess(black), ((0.5 - mean) / std).expand(1, 3, 224, 224), atol=1e-5)


class Scaled(torch.nn.Module):
    """A fixed, differentiable stand-in network: embeddings are channel means times a per-model vector."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.weight = torch.randn(3, 8, generator=torch.Generator().manual_seed(seed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) @ self.weight


def embedders() -> list[FaceEmbedder]:
    return [FaceEmbedder(get_entry(name), Scaled(i)) for i, name in enumerate(["ir152", "irse50", "mobile_face"])]


def test_ensemble_sum_is_the_mean_times_the_number_of_models() -> None:
    models = embedders()
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[8.0, 8.0, 56.0, 56.0]])
    target = {m.name: torch.nn.functional.normalize(torch.randn(1, 8), dim=1) for m in models}
    source = {m.name: torch.nn.functional.normalize(torch.randn(1, 8), dim=1) for m in models}
    reference = IdentityReference(source, target, boxes)
    marks = torch.zeros(1, 5, 2)
    mean = AdversarialIdentityLoss(models, "impersonate", reduce="mean", preprocess="box")(images, marks, reference)[0]
    total = AdversarialIdentityLoss(models, "impersonate", reduce="sum", preprocess="box")(images, marks, reference)[0]
    assert torch.allclose(total, 3 * mean)
    dodge = AdversarialIdentityLoss(
        models, "dodge", reduce="sum", dodge_objective="source_minus_target", preprocess="box"
    )
    value, sims = dodge(images, marks, reference)
    expected = sum(sims["source"][n] - sims["target"][n] for n in dodge.names)
    assert torch.allclose(value, expected, atol=1e-6)


def test_box_crop_rounds_like_the_reference_and_refuses_boxes_outside() -> None:
    rows, cols = box_slices((14.4, 17.6, 50.5, 58.5), 64, 64)
    assert (rows, cols) == (slice(18, 58), slice(14, 50))  # Python's round: 50.5 -> 50, 58.5 -> 58
    [crop] = crop_boxes(torch.zeros(1, 3, 64, 64), torch.tensor([[14.4, 17.6, 50.5, 58.5]]))
    assert crop.shape == (1, 3, 40, 36)
    with pytest.raises(ConfigError, match=r"fr\.preprocess=box"):
        box_slices((-3.0, 0.0, 30.0, 30.0), 64, 64)
