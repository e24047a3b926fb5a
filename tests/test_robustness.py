"""Social-network degradations: real codecs on uint8, differentiable twins that agree with them and pass gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio

from facecloak.errors import ConfigError
from facecloak.evaluation.robustness import DEFAULT_TRANSFORMS, apply_transform, parse_transform
from facecloak.losses.degrade import DegradationConfig, RandomDegradation, diff_blur, diff_jpeg, diff_resize

MIN_JPEG_AGREEMENT_DB = 30.0  # real libjpeg vs kornia's differentiable codec at q75 (the brief's bar)


@pytest.fixture(scope="module")
def crop(faces_dir) -> np.ndarray:
    """A real 160×144 face crop, uint8 RGB."""
    rgb = np.asarray(Image.open(faces_dir / "angelina_jolie" / "img1.jpg").convert("RGB"))
    h, w = rgb.shape[:2]
    return rgb[h // 4 : h // 4 + 160, w // 4 : w // 4 + 144].copy()


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(peak_signal_noise_ratio(a, b, data_range=1.0))


@pytest.mark.parametrize("name", DEFAULT_TRANSFORMS)
def test_named_transforms_keep_shape_and_dtype_and_change_pixels(crop, name):
    out = apply_transform(name, crop)
    assert out.shape == crop.shape and out.dtype == np.uint8
    assert not np.array_equal(out, crop)
    assert _psnr(_tensor(out), _tensor(crop)) > 25  # a degradation, not a different photo


def test_jpeg_strength_follows_quality(crop):
    errors = [np.abs(apply_transform(f"jpeg{q}", crop).astype(int) - crop).mean() for q in (95, 75, 50)]
    assert errors[0] < errors[1] < errors[2]


def test_identity_and_unknown_names(crop):
    assert np.array_equal(apply_transform("identity", crop), crop)
    family, value = parse_transform("blur2.5")
    assert family.name == "blur" and value == 2.5
    for bad in ("sharpen1", "jpeg", "jpeg75.5", "downscale2"):
        with pytest.raises(ConfigError):
            apply_transform(bad, crop)
    with pytest.raises(ConfigError, match="uint8"):
        apply_transform("jpeg75", crop.astype(np.float32))


@pytest.mark.parametrize("quality", [95, 75, 50])
def test_differentiable_jpeg_agrees_with_libjpeg(crop, quality):
    real = _tensor(apply_transform(f"jpeg{quality}", crop))
    differentiable = diff_jpeg(_tensor(crop), quality)
    agreement = _psnr(differentiable, real)
    assert agreement > MIN_JPEG_AGREEMENT_DB
    # and the codecs agree better with each other than either does with the uncompressed crop at low quality
    if quality <= 75:
        assert agreement > _psnr(real, _tensor(crop))


def test_differentiable_resize_and_blur_agree_with_opencv(crop):
    x = _tensor(crop)
    assert _psnr(diff_resize(x, 0.5), _tensor(apply_transform("downscale0.5", crop))) > 40
    assert _psnr(diff_blur(x, 1.0), _tensor(apply_transform("blur1.0", crop))) > 40


@pytest.mark.parametrize(
    "fn",
    [lambda x: diff_jpeg(x, 75), lambda x: diff_resize(x, 0.5), lambda x: diff_blur(x, 1.0)],
    ids=["jpeg", "resize", "blur"],
)
def test_gradients_flow(crop, fn):
    x = _tensor(crop).requires_grad_(True)
    fn(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_random_degradation_samples_all_kinds_reproducibly(crop):
    x = _tensor(crop)[..., :64, :64].requires_grad_(True)
    module = RandomDegradation(DegradationConfig(), generator=torch.Generator().manual_seed(0))
    seen = set()
    for _ in range(24):
        out = module(x)
        assert out.shape == x.shape
        seen.add(module.last[0])
    assert seen == {"identity", "jpeg", "resize", "blur"}
    out.sum().backward()
    assert x.grad is not None
    again = RandomDegradation(DegradationConfig(), generator=torch.Generator().manual_seed(0))
    first = RandomDegradation(DegradationConfig(), generator=torch.Generator().manual_seed(0))
    assert [again.sample() for _ in range(5)] == [first.sample() for _ in range(5)]


def test_random_degradation_respects_probabilities_and_ranges():
    config = DegradationConfig(probabilities={"jpeg": 1.0, "blur": 0.0}, jpeg_quality=(60, 70))
    module = RandomDegradation(config, generator=torch.Generator().manual_seed(1))
    draws = [module.sample() for _ in range(20)]
    assert all(name == "jpeg" and 60 <= q <= 70 for name, q in draws)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"probabilities": {"rotate": 1.0}},
        {"probabilities": {"jpeg": 0.0}},
        {"jpeg_quality": (90, 50)},
        {"resize_factor": (0.5, 1.5)},
    ],
)
def test_degradation_config_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError, match="degradation"):
        DegradationConfig(**kwargs)
