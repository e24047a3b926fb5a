"""Image-quality metrics: identities, monotonicity, an independent NumPy/SciPy reference, piq when installed."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from scipy import signal

from facecloak.errors import ConfigError
from facecloak.registry.entries import get_entry
from facecloak.registry.store import is_available
from facecloak.verify import quality
from facecloak.verify.quality import (
    QUALITY_METRICS,
    gmsd,
    haarpsi,
    measure_photo_set,
    measure_quality,
    ms_ssim_scales,
)


@pytest.fixture(scope="module")
def face_crop(faces_dir) -> torch.Tensor:
    """A real 192×176 face crop in [0, 1], float64 ([1,3,H,W])."""
    rgb = np.asarray(Image.open(faces_dir / "angelina_jolie" / "img1.jpg").convert("RGB"))
    h, w = rgb.shape[:2]
    crop = rgb[h // 5 : h // 5 + 192, w // 4 : w // 4 + 176].copy()
    return torch.from_numpy(crop).permute(2, 0, 1)[None].double() / 255


def _noisy(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0, 1)


def _blurred(x: torch.Tensor, sigma: float) -> torch.Tensor:
    size = 2 * int(np.ceil(3 * sigma)) + 1
    coords = torch.arange(size, dtype=x.dtype) - size // 2
    k = torch.exp(-(coords**2) / (2 * sigma**2))
    k = k / k.sum()
    padded = torch.nn.functional.pad(x, (size // 2,) * 4, mode="reflect")
    rows = torch.nn.functional.conv2d(padded, k.view(1, 1, size, 1).expand(3, 1, size, 1), groups=3)
    return torch.nn.functional.conv2d(rows, k.view(1, 1, 1, size).expand(3, 1, 1, size), groups=3)


# ---------------------------------------------------------------- an independent reference from the papers' code


def _matlab_same(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    # MATLAB conv2(A, K, 'same') via SciPy, as the HaarPSI reference code does it (rotate, convolve, rotate back).
    return np.rot90(signal.convolve2d(np.rot90(image, 2), np.rot90(kernel, 2), mode="same"), 2)


def _reference_yiq(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    i = 0.596 * r - 0.274 * g - 0.322 * b
    q = 0.211 * r - 0.523 * g + 0.312 * b
    return y, i, q


def _reference_subsample(image: np.ndarray) -> np.ndarray:
    return _matlab_same(image, np.ones((2, 2)) / 4)[::2, ::2]


def _reference_haarpsi(ref: np.ndarray, dist: np.ndarray) -> float:
    c, alpha, scales = 30.0, 4.2, 3
    ref_yiq = [_reference_subsample(ch) for ch in _reference_yiq(ref)]
    dist_yiq = [_reference_subsample(ch) for ch in _reference_yiq(dist)]

    def haar(image: np.ndarray) -> list[np.ndarray]:
        coeffs = [None] * (2 * scales)
        for s in range(1, scales + 1):
            f = 2.0 ** (-s) * np.ones((2**s, 2**s))
            f[: f.shape[0] // 2, :] *= -1
            coeffs[s - 1] = _matlab_same(image, f)
            coeffs[s + scales - 1] = _matlab_same(image, f.T)
        return coeffs

    cr, cd = haar(ref_yiq[0]), haar(dist_yiq[0])
    sims, weights = [], []
    for o in range(2):
        weights.append(np.maximum(np.abs(cr[2 + o * scales]), np.abs(cd[2 + o * scales])))
        pair = [(np.abs(cr[k + o * scales]), np.abs(cd[k + o * scales])) for k in range(2)]
        sims.append(sum((2 * a * b + c) / (a**2 + b**2 + c) for a, b in pair) / 2)
    chroma = []
    for k in (1, 2):
        a = np.abs(_matlab_same(ref_yiq[k], np.ones((2, 2)) / 4))
        b = np.abs(_matlab_same(dist_yiq[k], np.ones((2, 2)) / 4))
        chroma.append((2 * a * b + c) / (a**2 + b**2 + c))
    sims.append((chroma[0] + chroma[1]) / 2)
    weights.append((weights[0] + weights[1]) / 2)
    s, w = np.stack(sims), np.stack(weights)
    pooled = np.sum(w / (1 + np.exp(-alpha * s))) / np.sum(w)
    return float((np.log(pooled / (1 - pooled)) / alpha) ** 2)


def _reference_gmsd(ref: np.ndarray, dist: np.ndarray) -> float:
    t = 170.0
    dx = np.array([[1, 0, -1]] * 3, dtype=np.float64) / 3

    def magnitude(rgb: np.ndarray) -> np.ndarray:
        y = _reference_subsample(_reference_yiq(rgb)[0])
        return np.sqrt(_matlab_same(y, dx) ** 2 + _matlab_same(y, dx.T) ** 2)

    g1, g2 = magnitude(ref), magnitude(dist)
    return float(np.std((2 * g1 * g2 + t) / (g1**2 + g2**2 + t)))  # population std, as in the paper's eq. (8)


def _as_255(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).numpy() * 255


def test_matlab_same_alignment_matches_scipy_reference():
    rng = np.random.default_rng(3)
    image = rng.random((7, 9))
    for kernel in (np.ones((2, 2)) / 4, rng.random((4, 4)), rng.random((3, 3))):
        ours = quality._conv_same(torch.from_numpy(image)[None, None], torch.from_numpy(kernel))[0, 0].numpy()
        np.testing.assert_allclose(ours, _matlab_same(image, kernel), atol=1e-12)


def test_haar_filter_on_a_step_edge_by_hand():
    # A horizontal step 0 -> 1 between rows 3 and 4. The scale-1 filter is [-1/2 -1/2; +1/2 +1/2]; with MATLAB
    # 'same' alignment output (r, c) sees rows r, r+1 and columns c, c+1, so row 3 straddles the step:
    # |2 * 1/2| = 1. Row 7 sees the zero padding below the image, another step of 1. The last column sees
    # zero padding on its right, so it is left out.
    step = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    step[..., 4:, :] = 1.0
    response = quality._conv_same(step, quality._haar_kernel(2, torch.float64))[0, 0]
    expected = torch.zeros(8, 7, dtype=torch.float64)
    expected[3] = expected[7] = 1.0
    torch.testing.assert_close(response[:, :7].abs(), expected)


@pytest.mark.parametrize("size", [(48, 48), (37, 53)])
def test_haarpsi_and_gmsd_match_independent_reference(size):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, *size, generator=g, dtype=torch.float64)
    x = _blurred(x, 1.5)  # natural-image-like smoothness
    y = _noisy(x, 0.03, seed=2)
    assert haarpsi(x, y).item() == pytest.approx(_reference_haarpsi(_as_255(x), _as_255(y)), abs=1e-10)
    assert gmsd(x, y).item() == pytest.approx(_reference_gmsd(_as_255(x), _as_255(y)), abs=1e-10)


def test_identical_images_are_perfect(face_crop):
    assert haarpsi(face_crop, face_crop).item() == pytest.approx(1.0, abs=1e-12)
    assert gmsd(face_crop, face_crop).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("degrade, levels", [(_noisy, (0.01, 0.03, 0.08, 0.15)), (_blurred, (0.5, 1.0, 2.0, 4.0))])
def test_monotone_under_increasing_degradation(face_crop, degrade, levels):
    h = [haarpsi(face_crop, degrade(face_crop, s)).item() for s in levels]
    d = [gmsd(face_crop, degrade(face_crop, s)).item() for s in levels]
    assert all(a > b for a, b in itertools.pairwise(h)), h
    assert all(a < b for a, b in itertools.pairwise(d)), d
    assert 0 < h[-1] < h[0] < 1


def test_symmetric_and_batched(face_crop):
    y = _noisy(face_crop, 0.05)
    assert haarpsi(face_crop, y).item() == pytest.approx(haarpsi(y, face_crop).item(), abs=1e-12)
    batch = haarpsi(torch.cat([face_crop, face_crop]), torch.cat([face_crop, y]))
    assert batch.shape == (2,) and batch[0].item() == pytest.approx(1.0) and batch[1] < 1


def test_agrees_with_piq_when_installed(face_crop):
    piq = pytest.importorskip("piq")
    y = _noisy(face_crop, 0.05)
    # piq rounds the YIQ chroma rows differently (0.5959 vs 0.596), hence HaarPSI agrees to ~1e-4, GMSD exactly.
    assert haarpsi(face_crop, y).item() == pytest.approx(piq.haarpsi(y, face_crop).item(), abs=1e-3)
    assert gmsd(face_crop, y).item() == pytest.approx(piq.gmsd(y, face_crop).item(), abs=1e-6)


@pytest.mark.parametrize("side, scales", [(43, 0), (44, 3), (98, 3), (99, 4), (175, 4), (176, 5)])
def test_ms_ssim_scales_match_what_torchmetrics_accepts(side, scales):
    assert ms_ssim_scales(side, side + 7) == scales
    x = torch.rand(1, 3, side, side + 7, generator=torch.Generator().manual_seed(0))
    if scales == 0:
        with pytest.raises(quality.MetricUnavailableError, match="too small"):
            quality.ms_ssim(x, x)
    else:
        assert quality.ms_ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)


def test_measure_quality_reports_face_and_photo(face_crop):
    x = face_crop.float()
    y = _noisy(x, 0.02)
    report = measure_quality(x, y, box=(20, 30, 84, 94), metrics=["psnr", "ssim", "ms_ssim", "haarpsi", "gmsd"])
    assert set(report) == {"photo", "face"}
    photo, face = report["photo"], report["face"]
    assert photo["psnr"]["available"] and 30 < photo["psnr"]["value"] < 40
    assert photo["ms_ssim"]["available"] and "note" in face["ms_ssim"]  # 64 px face crop: 3 of 5 scales
    assert "3 of 5 scales" in face["ms_ssim"]["note"]
    assert face["haarpsi"]["per_image"][0] == pytest.approx(
        haarpsi(x[..., 30:94, 20:84], y[..., 30:94, 20:84]).item(), abs=1e-6
    )
    assert face["gmsd"]["higher_is_better"] is False


def test_small_crop_is_reported_unavailable_not_replaced():
    x = torch.rand(1, 3, 12, 12)
    report = measure_quality(x, x, metrics=["ms_ssim", "haarpsi", "psnr"])["photo"]
    assert report["ms_ssim"] == {"available": False, "reason": report["ms_ssim"]["reason"]}
    assert "too small" in report["ms_ssim"]["reason"]
    assert report["haarpsi"]["available"] is False and "16×16" in report["haarpsi"]["reason"]
    assert report["psnr"]["available"] is True


def test_per_image_boxes_and_bad_input():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g)
    y = _noisy(x.double(), 0.05).float()
    report = measure_quality(x, y, box=[(0, 0, 32, 32), (10, 10, 60, 50)], metrics=["psnr"])
    assert len(report["face"]["psnr"]["per_image"]) == 2
    with pytest.raises(ConfigError, match="unknown quality metrics"):
        measure_quality(x, y, metrics=["nope"])
    with pytest.raises(ConfigError, match="does not overlap"):
        measure_quality(x, y, box=(70, 70, 90, 90), metrics=["psnr"])
    with pytest.raises(ConfigError, match="same shape"):
        measure_quality(x, y[..., :32], metrics=["psnr"])


def test_weight_metrics_declare_their_weights():
    assert QUALITY_METRICS["lpips"].needs_weights == "lpips_vgg"
    assert QUALITY_METRICS["fid"].needs_weights == "fid_inception" and not QUALITY_METRICS["fid"].per_image
    assert QUALITY_METRICS["haarpsi"].needs_weights is None


def test_lpips_reported_unavailable_with_fetch_command_or_computed():
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    result = measure_quality(x, x, metrics=["lpips"])["photo"]["lpips"]
    if is_available("lpips_vgg"):
        assert result["available"] and result["value"] == pytest.approx(0.0, abs=1e-6)
    else:
        assert result == {"available": False, "reason": result["reason"]}
        assert "run: facecloak weights fetch lpips_vgg" in result["reason"]


def _fid_weights_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make ``home`` the only place the registry looks for weights; return where ``fid_inception`` belongs there."""
    monkeypatch.setenv("FACECLOAK_CHECKPOINTS", str(home))
    monkeypatch.setenv("FACECLOAK_WEIGHTS_PATH", "")
    monkeypatch.setenv("FACECLOAK_SHARED", str(home / "no-shared"))
    [file] = get_entry("fid_inception").files
    return home / file.path


def test_fid_and_kid_without_weights_say_how_to_fetch_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fid_weights_home(tmp_path, monkeypatch)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    report = measure_quality(x, x, box=(0, 0, 16, 16), metrics=["fid", "kid"])
    for region in ("photo", "face"):
        for name in ("fid", "kid"):
            assert report[region][name] == {
                "available": False,
                "reason": "weights 'fid_inception' not found, run: facecloak weights fetch fid_inception",
            }


def _random_fid_inception_state_dict() -> dict[str, torch.Tensor]:
    """A randomly initialised FID Inception in the registry file's format (pytorch-fid's: torchvision's
    Inception-v3 with 1008 classes and no auxiliary head), He-initialised so features stay finite."""
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return net.state_dict()


@pytest.mark.slow  # two FIDs: each an eigendecomposition of a 2048×2048 matrix product, ~30 s on two CPU cores
def test_fid_and_kid_load_the_registry_file_and_measure_distance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch_fidelity", reason="torchmetrics' Inception comes from torch-fidelity (eval extra)")
    weights = _fid_weights_home(tmp_path, monkeypatch)
    weights.parent.mkdir(parents=True)
    torch.save(_random_fid_inception_state_dict(), weights)
    assert quality.unavailable_reason(QUALITY_METRICS["fid"]) is None
    g = torch.Generator().manual_seed(0)
    photos = [torch.rand(1, 3, 48 + 8 * i, 64, generator=g) for i in range(3)]  # sizes differ, as real photos do
    shifted = [(0.5 * p + 0.3).clamp(0, 1) for p in photos]
    same = measure_photo_set(photos, photos)["photo"]
    changed = measure_photo_set(photos, shifted)["photo"]
    # FID of a set with itself is 0 up to round-off; KID's unbiased estimator leaves the kernel's diagonal out of
    # the within-set terms only, so on three photos it sits slightly off 0.
    for name, tolerance in (("fid", 1e-3), ("kid", 2e-2)):
        assert same[name]["available"] and changed[name]["available"], (same[name], changed[name])
        assert changed[name]["value"] > 0, name
        assert abs(same[name]["value"]) < tolerance * changed[name]["value"], name
    assert quality.fid_inception() is quality.fid_inception()  # loaded once per file, not once per metric


def test_set_metrics_need_two_photos_and_matching_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch_fidelity", reason="torchmetrics' Inception comes from torch-fidelity (eval extra)")
    weights = _fid_weights_home(tmp_path, monkeypatch)
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"never read: the set is too small to load the network")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = measure_quality(x, x, metrics=["fid", "kid"])["photo"]
    assert result["fid"]["available"] is False and "at least 2 photos" in result["fid"]["reason"]
    assert result["kid"]["available"] is False and "at least 2 photos" in result["kid"]["reason"]
    with pytest.raises(ConfigError, match="one of each per photo"):
        measure_photo_set([x, x], [x], metrics=["psnr"])


def test_photo_set_of_mixed_sizes_measures_each_photo_and_face() -> None:
    g = torch.Generator().manual_seed(0)
    photos = [torch.rand(1, 3, 40, 56, generator=g).double(), torch.rand(1, 3, 64, 48, generator=g).double()]
    noisy = [_noisy(p, 0.05, seed=i) for i, p in enumerate(photos)]
    boxes = [(4, 4, 36, 36), (8, 16, 40, 60)]
    report = measure_photo_set(photos, noisy, boxes, metrics=["psnr"])
    for i, (x, y, box) in enumerate(zip(photos, noisy, boxes)):
        assert report["photo"]["psnr"]["per_image"][i] == pytest.approx(float(quality.psnr(x, y)))
        face = measure_quality(x, y, box=box, metrics=["psnr"])["face"]["psnr"]["value"]
        assert report["face"]["psnr"]["per_image"][i] == pytest.approx(face)
