"""Read any user photo as plain 8-bit RGB, and write results that leak no metadata.

Users hand us whatever their phone or editor produced: EXIF-rotated JPEGs, PNGs with transparency,
CMYK or 16-bit files, greyscale scans, huge panoramas, half-downloaded files. ``load_photo`` turns
every readable case into one ``H×W×3`` ``uint8`` array and records what it changed in ``Photo.notes``
so the user can be told; every unreadable case becomes an ``ImageError`` that says what to do.

Saving is the privacy-sensitive half: a protected photo that still carries GPS coordinates, the
camera serial or an embedded thumbnail of the *unprotected* face defeats the purpose. ``save_png``
and ``save_jpeg`` therefore build a fresh image from the pixels alone (no EXIF, XMP, ICC or text
chunks) and write it atomically, so an interrupted run never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from facecloak.errors import ConfigError, ImageError
from facecloak.filemode import user_file_mode

# Longer side beyond which photos are downscaled on load; large enough for any face detector and
# generator we use, small enough that a 100-megapixel panorama does not exhaust memory.
DEFAULT_MAX_SIDE = 4096
# Pillow refuses images above 2 × Image.MAX_IMAGE_PIXELS (2 × 89,478,485) as decompression bombs;
# we keep the same limit by default but make it an explicit, raisable option.
DEFAULT_MAX_PIXELS = 178_956_970
# Transparent pixels become white: the usual look of a transparent PNG in viewers and documents.
ALPHA_BACKGROUND = (255, 255, 255)
# Highest quality Pillow recommends; lower values start to wash out small protective perturbations.
DEFAULT_JPEG_QUALITY = 95
EXIF_ORIENTATION_TAG = 0x0112
SIXTEEN_BIT_TO_EIGHT = 257.0  # 65535 / 255

_PIXEL_LIMIT_LOCK = threading.Lock()


@dataclass(frozen=True, eq=False)
class Photo:
    """A decoded photo: the pixels, where they came from and what loading changed."""

    rgb: np.ndarray
    source: Path
    original_size: tuple[int, int]
    """(height, width) after EXIF rotation and before any downscaling."""
    notes: tuple[str, ...] = ()

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of ``rgb``."""
        return (int(self.rgb.shape[0]), int(self.rgb.shape[1]))

    @property
    def was_downscaled(self) -> bool:
        """Whether ``rgb`` is smaller than the file, so outputs can be flagged or upscaled."""
        return self.size != self.original_size


def load_photo(
    path: str | os.PathLike[str],
    max_side: int | None = DEFAULT_MAX_SIDE,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Photo:
    """Decode a user's photo into upright 8-bit RGB so every later stage sees one format."""
    if max_side is not None and max_side < 1:
        raise ConfigError(f"max_side must be a positive number of pixels or None (no downscaling), got {max_side}")
    if max_pixels < 1:
        raise ConfigError(f"max_pixels must be positive, got {max_pixels}")
    source = Path(path)
    _check_file(source)
    notes: list[str] = []
    with _pixel_limit(max_pixels):
        image = _open_checked(source, max_pixels)
        with image:
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                notes.append(f"first of {frames} frames used")
            image = _exif_upright(image, notes)
            image = _to_rgb(image, notes)
    original_size = (image.height, image.width)
    image = _downscale(image, max_side, notes)
    rgb = np.array(image, dtype=np.uint8, copy=True)
    return Photo(rgb=rgb, source=source, original_size=original_size, notes=tuple(notes))


def _check_file(source: Path) -> None:
    if not source.exists():
        raise ImageError(f"{source}: file not found; check the path")
    if source.is_dir():
        raise ImageError(f"{source}: is a folder, not an image file")
    if source.stat().st_size == 0:
        raise ImageError(f"{source}: empty file (0 bytes); the download or copy did not finish, get the photo again")


@contextlib.contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Let Pillow open anything up to our own limit (its check is global, so hold a lock and restore it)."""
    with _PIXEL_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _too_large(source: Path, width: int | None, height: int | None, max_pixels: int) -> ImageError:
    found = f"{width}×{height} = {width * height:,} pixels" if width and height else "its declared size"
    return ImageError(
        f"{source}: image too large: {found} exceeds the limit of {max_pixels:,} pixels "
        "(a guard against decompression bombs); if you trust the file, raise the limit with the config key "
        f"faces.max_pixels (e.g. faces.max_pixels={_suggested_limit(width, height, max_pixels)})"
    )


def _suggested_limit(width: int | None, height: int | None, max_pixels: int) -> int:
    """A round limit above the photo's pixel count (or twice the current one when the size is unknown)."""
    needed = width * height if width and height else 2 * max_pixels
    return int(-(-needed // 10_000_000) * 10_000_000)


def _open_checked(source: Path, max_pixels: int) -> Image.Image:
    """Open and fully decode the file, mapping every Pillow failure to a message the user can act on."""
    try:
        image = Image.open(source)
    except Image.DecompressionBombError as error:
        raise _too_large(source, None, None, max_pixels) from error
    except UnidentifiedImageError as error:
        raise ImageError(
            f"{source}: not an image file Pillow can read (JPEG, PNG, WebP, TIFF, BMP, GIF, …); "
            "check that it is a photo and not an HTML page or archive"
        ) from error
    except OSError as error:
        raise ImageError(f"{source}: cannot be read ({error})") from error
    if image.width * image.height > max_pixels:
        image.close()
        raise _too_large(source, image.width, image.height, max_pixels)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        image.close()
        raise ImageError(
            f"{source}: truncated or corrupt image data ({error}); the file is incomplete, get the photo again"
        ) from error
    return image


def _exif_upright(image: Image.Image, notes: list[str]) -> Image.Image:
    """Apply the EXIF orientation, so faces are upright for the detector and the output looks as shown."""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError) as error:
        notes.append(f"EXIF unreadable ({error}); orientation ignored")
        return image
    if orientation in (None, 1):
        return image
    upright = ImageOps.exif_transpose(image)
    if upright is None:  # only when in_place=True; kept for the type checker
        return image
    notes.append(f"EXIF rotation applied (orientation {orientation})")
    return upright


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, noting every lossy or visible change."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        return _high_bit_depth_to_rgb(image, notes)
    if _has_alpha(image):
        return _flatten_alpha(image, notes)
    if mode in ("RGB", "CMYK"):
        return _icc_to_srgb(image, notes)
    if mode != "RGB":
        notes.append(f"{mode} mode converted to RGB")
    return image.convert("RGB")


def _high_bit_depth_to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """Scale 16-bit/32-bit/float grey to 8 bits; Pillow's own convert would clip instead of scale."""
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
    else:
        scale = 1.0 / SIXTEEN_BIT_TO_EIGHT if values.size and values.max() > 255 else 1.0
    grey = np.clip(np.rint(np.nan_to_num(values * scale)), 0, 255).astype(np.uint8)
    notes.append(f"{image.mode} (high bit depth) reduced to 8-bit RGB")
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2))


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _flatten_alpha(image: Image.Image, notes: list[str]) -> Image.Image:
    rgba = image.convert("RGBA")
    alpha_min = int(np.asarray(rgba.getchannel("A")).min(initial=255))
    if alpha_min < 255:
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        rgba = Image.alpha_composite(background, rgba)
        notes.append("alpha flattened on white")
    return rgba.convert("RGB")


def _icc_to_srgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """Honour an embedded colour profile (CMYK press profiles, Display P3), since we strip it on save."""
    was_cmyk = image.mode == "CMYK"
    icc = image.info.get("icc_profile")
    converted: Image.Image | None = None
    if icc:
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            description = ImageCms.getProfileDescription(profile).strip()
            if was_cmyk or "srgb" not in description.lower():
                srgb = ImageCms.createProfile("sRGB")
                converted = ImageCms.profileToProfile(image, profile, srgb, outputMode="RGB")
                if converted is not None and not was_cmyk:
                    notes.append(f"ICC profile '{description}' converted to sRGB")
        except (ImageCms.PyCMSError, OSError, ValueError) as error:
            notes.append(f"embedded ICC profile unusable ({error}); colours taken as sRGB")
    if was_cmyk:
        notes.append("CMYK converted to RGB" + (" with its ICC profile" if converted is not None else ""))
    return converted if converted is not None else image.convert("RGB")


def _downscale(image: Image.Image, max_side: int | None, notes: list[str]) -> Image.Image:
    longest = max(image.width, image.height)
    if max_side is None or longest <= max_side:
        return image
    factor = max_side / longest
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    notes.append(f"downscaled from {image.width}×{image.height} to {size[0]}×{size[1]} (max_side={max_side})")
    return image.resize(size, Image.Resampling.LANCZOS)


# ----------------------------------------------------------------------------------------------- saving


def save_png(path: str | os.PathLike[str], rgb: np.ndarray) -> Path:
    """Write lossless RGB with no metadata at all, atomically, so protection survives exactly."""
    image = _pixels_only(rgb)
    return _atomic_write(Path(path), lambda stream: image.save(stream, format="PNG"))


def save_jpeg(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    quality: int = DEFAULT_JPEG_QUALITY,
    *,
    chroma_subsampling: bool = False,
) -> Path:
    """Write a JPEG with no EXIF/GPS/ICC, atomically; 4:4:4 by default so colour perturbations survive."""
    if not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality must be between 1 and 100 (95 recommended), got {quality}")
    image = _pixels_only(rgb)
    subsampling = "4:2:0" if chroma_subsampling else "4:4:4"
    return _atomic_write(
        Path(path),
        lambda stream: image.save(stream, format="JPEG", quality=quality, subsampling=subsampling, optimize=True),
    )


def save_image(path: str | os.PathLike[str], rgb: np.ndarray, jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> Path:
    """Pick PNG or JPEG from the file suffix, so callers pass one output path."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        return save_png(path, rgb)
    if suffix in (".jpg", ".jpeg"):
        return save_jpeg(path, rgb, jpeg_quality)
    raise ConfigError(f"{path}: cannot save as '{suffix}'; use a .png (lossless, recommended) or .jpg path")


def _pixels_only(rgb: np.ndarray) -> Image.Image:
    """A fresh Pillow image built from pixels alone: nothing of the input file's metadata can follow."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        found = f"{rgb.dtype} array of shape {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ImageError(f"can only save an H×W×3 uint8 RGB array, got {found}")
    return Image.fromarray(np.ascontiguousarray(rgb))


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write to a temporary file beside the target, then rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, user_file_mode())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return path
