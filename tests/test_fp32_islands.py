"""bf16-mixed keeps its reductions in fp32: embedding norms, cosines, loss sums, 1 − MS-SSIM, CLIP directions.

Each check runs the real component under CPU bf16 autocast (what ``trainer.precision=bf16-mixed`` does) and
bounds its difference from the same computation in fp32. The bf16-only computation is shown to miss the bound, so
the bound tests the fp32 island, not a loose tolerance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from facecloak.losses.identity import AdversarialIdentityLoss, IdentityReference
from facecloak.losses.perceptual import MSSSIMDistance
from facecloak.models.fr.zoo import load_fr_model
from facecloak.runtime.precision import full_precision
from test_clip_loss import tiny_clip_loss

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}
ATTACKED = "mobilefacenet_casia"


def _faces(n: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 112, 112, generator=generator)


def test_cosines_and_the_identity_loss_stay_fp32_under_bf16() -> None:
    identity = AdversarialIdentityLoss([load_fr_model(ATTACKED)], mode="dodge")
    faces = _faces()
    with torch.no_grad():
        reference = {ATTACKED: identity.models[0](faces.flip(0))}
        with torch.autocast(**BF16):
            embedding = identity.models[0](faces)
            sims = identity.similarities({ATTACKED: embedding}, reference)
    assert embedding.dtype == torch.float32
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(2), atol=1e-6, rtol=0)
    exact = (embedding.double() * reference[ATTACKED].double()).sum(dim=1)
    assert sims[ATTACKED].dtype == torch.float32
    assert (sims[ATTACKED].double() - exact).abs().max() < 1e-6
    # the same cosine taken in bf16 is off by far more than the island's error
    with torch.autocast(**BF16):
        rounded = (embedding.bfloat16() * reference[ATTACKED].bfloat16()).sum(dim=1)
    assert (rounded.double() - exact).abs().max() > 1e-4


def test_identity_loss_sum_is_fp32_under_bf16() -> None:
    identity = AdversarialIdentityLoss([load_fr_model(ATTACKED)], mode="dodge")
    faces = _faces()
    template = torch.tensor([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]])
    landmarks = template.expand(2, 5, 2).clone()
    with torch.no_grad():
        reference = IdentityReference(source=identity.embed(faces.flip(0), landmarks))
        with torch.autocast(**BF16):
            loss, sims = identity(faces.bfloat16(), landmarks, reference)
    assert loss.dtype == torch.float32 and sims["source"][ATTACKED].dtype == torch.float32
    torch.testing.assert_close(loss, sims["source"][ATTACKED], atol=1e-6, rtol=0)


def test_msssim_of_near_identical_smooth_images_is_exact_under_bf16() -> None:
    """The case the issue measured: 1 − MS-SSIM halved in bf16 on smooth images."""
    y, x = torch.meshgrid(torch.linspace(0, 1, 128), torch.linspace(0, 1, 128), indexing="ij")
    smooth = torch.stack([x, y, (x + y) / 2])[None] * 2 - 1
    nudged = smooth + 0.01 * torch.sin(8 * torch.pi * x)[None, None]
    distance = MSSSIMDistance()
    fp32 = distance(smooth, nudged)
    with torch.autocast(**BF16):
        mixed = distance(smooth, nudged)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, fp32, atol=1e-7, rtol=1e-5)


def test_clip_direction_is_taken_in_fp32_under_bf16() -> None:
    clip = tiny_clip_loss()
    images = _faces(2)[..., :64, :64]
    with torch.no_grad():
        source = clip.source_features(images.flip(0))
        fp32 = clip(images, source)
        with torch.autocast(**BF16):
            mixed = clip(images, source)
    assert mixed.dtype == torch.float32
    # the encoder itself runs in bf16 (that is the speed-up); the direction and its cosine add no bf16 rounding
    assert (mixed - fp32).abs().max() < 2e-2


def test_full_precision_turns_autocast_off_on_every_device_type() -> None:
    a = torch.randn(8, 8)
    with torch.autocast(**BF16):
        assert (a @ a).dtype == torch.bfloat16
        with full_precision():
            assert (a @ a).dtype == torch.float32
    assert F.normalize(a, dim=1).dtype == torch.float32


def test_islands_change_nothing_in_fp32() -> None:
    """Outside autocast the islands are no-ops: fp32 runs (and the golden parity tests) keep their numbers."""
    identity = AdversarialIdentityLoss([load_fr_model(ATTACKED)], mode="dodge")
    faces = _faces()
    with torch.no_grad():
        embedding = identity.models[0](faces)
        plain = F.normalize(identity.models[0].embed_network_input(_network_input(identity, faces)), dim=1)
    assert torch.equal(embedding, plain)


def _network_input(identity: AdversarialIdentityLoss, faces: torch.Tensor) -> torch.Tensor:
    from facecloak.models.fr.zoo import _to_network_input

    model = identity.models[0]
    return _to_network_input(faces, model.entry, False)
