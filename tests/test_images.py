"""Every kind of file users hand us decodes to upright 8-bit RGB or fails with an actionable message."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms
from PIL.ExifTags import IFD

from facecloak.errors import ConfigError, ImageError
from facecloak.io import load_photo, save_image, save_jpeg, save_png

ORIENTATION = 0x0112
GPS_LATITUDE_REF, GPS_LATITUDE = 1, 2


def _two_colour(width: int = 40, height: int = 20) -> Image.Image:
    """Left half red, right half blue: rotations are easy to see."""
    array = np.zeros((height, width, 3), np.uint8)
    array[:, : width // 2] = (255, 0, 0)
    array[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(array)


def _exif_with_gps(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[0x010F] = "SecretCam"  # Make
    gps = exif.get_ifd(IFD.GPSInfo)
    gps[GPS_LATITUDE_REF] = "N"
    gps[GPS_LATITUDE] = (52.0, 31.0, 12.0)
    return exif


def test_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    _two_colour().save(path, exif=_exif_with_gps(orientation=6), quality=95)
    photo = load_photo(path)
    # Orientation 6: rotate 90° clockwise for display, so the stored left (red) half ends on top.
    assert photo.rgb.shape == (40, 20, 3)
    assert photo.original_size == (40, 20)
    assert photo.rgb[:15, :, 0].mean() > 200 and photo.rgb[:15, :, 2].mean() < 50
    assert photo.rgb[25:, :, 2].mean() > 200 and photo.rgb[25:, :, 0].mean() < 50
    assert any("EXIF rotation applied" in note for note in photo.notes)


def test_rgba_is_flattened_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 1] = 200
    rgba[:, :5, 3] = 0  # transparent left half
    rgba[:, 5:, 3] = 255
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba).save(path)
    photo = load_photo(path)
    assert photo.rgb.dtype == np.uint8 and photo.rgb.shape == (10, 10, 3)
    np.testing.assert_array_equal(photo.rgb[:, :5], 255)
    np.testing.assert_array_equal(photo.rgb[:, 5:], np.broadcast_to([0, 200, 0], (10, 5, 3)))
    assert "alpha flattened on white" in photo.notes


def test_opaque_alpha_is_dropped_without_a_note(tmp_path: Path) -> None:
    path = tmp_path / "opaque.png"
    Image.new("RGBA", (8, 8), (10, 20, 30, 255)).save(path)
    photo = load_photo(path)
    np.testing.assert_array_equal(photo.rgb, np.broadcast_to([10, 20, 30], (8, 8, 3)))
    assert photo.notes == ()


def test_cmyk_jpeg_is_converted(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # pure red in print colours
    photo = load_photo(path)
    red, green, blue = photo.rgb.reshape(-1, 3).mean(axis=0)
    assert red > 200 and green < 60 and blue < 60
    assert any("CMYK converted" in note for note in photo.notes)


def test_cmyk_with_icc_profile_uses_it(tmp_path: Path) -> None:
    path = tmp_path / "cmyk_icc.tif"
    image = Image.new("CMYK", (8, 8), (0, 0, 0, 0))  # paper white
    # A CMYK file whose profile is (wrongly but readably) sRGB: the conversion must not crash, and notes say so.
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image.save(path, icc_profile=srgb)
    photo = load_photo(path)
    assert photo.rgb.shape == (8, 8, 3)
    assert any("CMYK" in note or "ICC" in note for note in photo.notes)


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [("L", 77, 77), ("1", 1, 255), ("I;16", 65535, 255), ("I;16", 32896, 128)],
)
def test_grey_and_high_bit_depth_modes(tmp_path: Path, mode: str, value: int, expected: int) -> None:
    path = tmp_path / f"grey_{mode.replace(';', '')}_{value}.png"
    Image.new(mode, (6, 4), value).save(path)
    photo = load_photo(path)
    assert photo.rgb.shape == (4, 6, 3)
    np.testing.assert_array_equal(photo.rgb, expected)


def test_sixteen_bit_gradient_keeps_its_range(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 256, dtype=np.float64).round().astype(np.uint16)[None].repeat(3, axis=0)
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    photo = load_photo(path)
    assert photo.rgb[..., 0].min() == 0 and photo.rgb[..., 0].max() == 255
    assert any("8-bit" in note for note in photo.notes)


def test_la_and_transparent_palette(tmp_path: Path) -> None:
    la = Image.new("LA", (4, 4), (50, 0))
    la.save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_photo(tmp_path / "la.png").rgb, 255)

    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.save(tmp_path / "p.png", transparency=0)
    photo = load_photo(tmp_path / "p.png")
    np.testing.assert_array_equal(photo.rgb[0, 0], [200, 100, 0])
    np.testing.assert_array_equal(photo.rgb[3, 3], [255, 255, 255])
    assert "alpha flattened on white" in photo.notes


def test_downscale_records_the_original_size(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    _two_colour(300, 200).save(path)
    photo = load_photo(path, max_side=100)
    assert photo.rgb.shape == (67, 100, 3)
    assert photo.original_size == (200, 300) and photo.was_downscaled
    assert any("downscaled from 300×200" in note for note in photo.notes)
    assert load_photo(path, max_side=None).rgb.shape == (200, 300, 3)
    with pytest.raises(ConfigError, match="max_side"):
        load_photo(path, max_side=0)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_says_truncated(tmp_path: Path, fmt: str) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format=fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_photo(path)


def test_random_bytes_are_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "random.jpg"
    path.write_bytes(np.random.default_rng(2).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ImageError, match="not an image"):
        load_photo(path)


def test_empty_missing_and_folder(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        load_photo(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="file not found"):
        load_photo(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="folder"):
        load_photo(tmp_path)


def test_too_many_pixels_names_the_limit_and_the_option(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("RGB", (200, 100)).save(path)
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match=r"too large.*20,000 pixels.*10,000 pixels.*max_pixels") as caught:
        load_photo(path, max_pixels=10_000)
    assert "faces.max_pixels=" in str(caught.value) and "--max-pixels" not in str(caught.value)
    assert before == Image.MAX_IMAGE_PIXELS
    # A limit far below Pillow's own triggers Pillow's bomb error at open time; same message.
    with pytest.raises(ImageError, match="too large"):
        load_photo(path, max_pixels=1_000)
    assert load_photo(path, max_pixels=20_000).rgb.shape == (100, 200, 3)


def _assert_no_metadata(path: Path) -> None:
    with Image.open(path) as reopened:
        assert "exif" not in reopened.info
        assert len(reopened.getexif()) == 0
        assert "icc_profile" not in reopened.info
        assert not getattr(reopened, "text", {})
    raw = path.read_bytes()
    assert b"Exif" not in raw and b"SecretCam" not in raw and b"ICC_PROFILE" not in raw


def test_saving_strips_gps_exif_and_icc(tmp_path: Path) -> None:
    source = tmp_path / "gps.jpg"
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    _two_colour().save(source, exif=_exif_with_gps(), icc_profile=srgb, quality=95)
    with Image.open(source) as original:
        assert original.getexif().get_ifd(IFD.GPSInfo)  # the fixture really carries GPS
    photo = load_photo(source)

    jpeg = save_jpeg(tmp_path / "out" / "clean.jpg", photo.rgb, quality=95)
    png = save_png(tmp_path / "out" / "clean.png", photo.rgb)
    for path in (jpeg, png):
        _assert_no_metadata(path)
    np.testing.assert_array_equal(load_photo(png).rgb, photo.rgb)
    assert np.abs(load_photo(jpeg).rgb.astype(int) - photo.rgb).mean() < 3


def test_png_text_chunks_are_not_copied(tmp_path: Path) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", "SecretCam at home")
    source = tmp_path / "text.png"
    _two_colour().save(source, pnginfo=info)
    out = save_png(tmp_path / "clean.png", load_photo(source).rgb)
    _assert_no_metadata(out)


def test_atomic_save_replaces_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "photo.png"
    first = np.zeros((4, 4, 3), np.uint8)
    save_png(target, first)
    save_png(target, first + 9)
    np.testing.assert_array_equal(load_photo(target).rgb, 9)
    with pytest.raises(ImageError, match="H×W×3 uint8"):
        save_png(target, np.zeros((4, 4), np.float32))
    np.testing.assert_array_equal(load_photo(target).rgb, 9)  # a failed save keeps the old file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]


def test_save_image_dispatches_on_suffix_and_validates(tmp_path: Path) -> None:
    rgb = np.full((5, 7, 3), 100, np.uint8)
    assert save_image(tmp_path / "a.PNG", rgb).exists()
    assert save_image(tmp_path / "a.jpeg", rgb).exists()
    with pytest.raises(ConfigError, match=r"\.png"):
        save_image(tmp_path / "a.gif", rgb)
    with pytest.raises(ConfigError, match="quality"):
        save_jpeg(tmp_path / "b.jpg", rgb, quality=0)
