"""Put a processed aligned crop back into the full photo, touching nothing but the face.

Users give a full photo and expect the same photo back with only the faces changed. The crop is warped
back with the inverse of its alignment matrix and blended under a feathered mask (the crop area, or a
caller's face mask, eroded then blurred so no seam shows).

What is blended, by default, is the *change*: ``crop − reference``, where ``reference`` is the crop as
aligned before processing. Warping a difference back instead of the crop itself has two advantages:
an unmodified crop changes the photo by exactly zero (no double-resampling blur), and where the crop
has fewer pixels than the face in the photo (a 112×112 recognition crop of a 600-pixel face) the
photo keeps its own detail and only gains the crop's edit, upsampled. ``mode="replace"`` pastes the
warped crop itself, for crops whose content was regenerated wholesale at a resolution at least that of
the photo (e.g. a 1024 FFHQ crop of a small face); it loses some sharpness to resampling.
"""

from __future__ import annotations

import cv2
import numpy as np

from facecloak.errors import ConfigError, ImageError
from facecloak.faces.align import invert_affine, transform_points, warp_image

# Erosion of the crop mask, as a fraction of the crop's shorter side: the blend reaches full strength this far
# (plus the blur) inside the crop edge, which hides the seam where the crop's content ends.
DEFAULT_FEATHER = 0.05
# The Gaussian blur's sigma is erosion / 3, so the feathered mask is ~0 (< 0.2 %) at the original mask edge.
FEATHER_SIGMAS = 3.0
MASK_THRESHOLD = 0.5  # a caller's soft mask (e.g. face-parsing probabilities) selects pixels above this
PASTE_MODES = ("delta", "replace")
# Bicubic carries the (smooth) delta back into the photo; the mask uses bilinear so it stays within [0, 1].
DELTA_INTERPOLATION = "bicubic"
MASK_INTERPOLATION = "bilinear"
# Photo pixels kept around the crop's footprint so interpolation at its edge sees the crop, not nothing.
FOOTPRINT_MARGIN = 2


def feather_mask(size: tuple[int, int], feather: float = DEFAULT_FEATHER, mask: np.ndarray | None = None) -> np.ndarray:
    """Soft blend weights in crop space: the region ``mask > 0.5`` (default: the whole crop), eroded and blurred."""
    if not 0.0 <= feather < 0.5:
        raise ConfigError(f"feather is a fraction of the crop's shorter side in [0, 0.5), got {feather}")
    height, width = size
    region = np.ones((height, width), bool) if mask is None else np.asarray(mask) > MASK_THRESHOLD
    if region.shape != (height, width):
        raise ConfigError(f"paste-back mask must have the crop's shape {(height, width)}, got {region.shape}")
    erosion = round(feather * min(height, width))
    if erosion == 0:
        return region.astype(np.float32)
    # Erode by a disc via the distance to the nearest outside pixel (pixels beyond the crop count as outside);
    # this costs the same for any feather, unlike a morphological erosion with a large kernel.
    padded = cv2.copyMakeBorder(region.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    eroded = (distance > erosion).astype(np.float32)
    soft = cv2.GaussianBlur(eroded, (0, 0), sigmaX=erosion / FEATHER_SIGMAS, borderType=cv2.BORDER_CONSTANT)
    return np.clip(soft, 0.0, 1.0)


def paste_back(
    photo_rgb: np.ndarray,
    crop_rgb: np.ndarray,
    matrix: np.ndarray,
    feather: float = DEFAULT_FEATHER,
    *,
    reference_crop: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    mode: str = "delta",
) -> np.ndarray:
    """Blend a processed crop (made with photo→crop ``matrix``) back into a copy of the photo, same size.

    ``reference_crop`` is the unprocessed crop (``AlignedFace.crop``); without it, it is re-cut from the photo with
    ``align_face``'s bilinear warp, which matches crops made by ``align_face`` but not FFHQ-padded ones.
    """
    photo = _rgb_uint8(photo_rgb, "photo")
    crop = _rgb_uint8(crop_rgb, "crop")
    if mode not in PASTE_MODES:
        raise ConfigError(f"unknown paste-back mode '{mode}'; choose one of {', '.join(PASTE_MODES)}")
    matrix = np.asarray(matrix, dtype=np.float64)
    crop_size = crop.shape[:2]
    box = _footprint_box(matrix, crop_size, photo.shape[:2])
    if box is None:  # the crop lies entirely outside the photo
        return photo.copy()
    x0, y0, x1, y1 = box
    # crop→region matrix: crop→photo, then shift the photo origin to the region's corner.
    to_region = invert_affine(matrix)
    to_region[:, 2] -= (x0, y0)
    region_size = (y1 - y0, x1 - x0)

    weights = feather_mask(crop_size, feather, mask)
    if mode == "replace":  # crop pixels that sampled beyond the photo edge hold padding, not photo: weigh them less
        coverage = warp_image(np.ones(photo.shape[:2], np.float32), matrix, crop_size, interpolation="bilinear")
        weights = weights * coverage
    weights = warp_image(weights, to_region, region_size, interpolation=MASK_INTERPOLATION)[..., None]
    region = photo[y0:y1, x0:x1].astype(np.float32)
    if mode == "delta":
        if reference_crop is None:
            reference_crop = warp_image(photo, matrix, crop_size, interpolation="bilinear", border="zeros")
        reference = _rgb_uint8(reference_crop, "reference crop")
        if reference.shape != crop.shape:
            raise ImageError(f"reference crop shape {reference.shape} differs from the crop's {crop.shape}")
        delta = crop.astype(np.float32) - reference.astype(np.float32)
        blended = region + weights * warp_image(delta, to_region, region_size, interpolation=DELTA_INTERPOLATION)
    else:
        warped = warp_image(crop.astype(np.float32), to_region, region_size, interpolation=DELTA_INTERPOLATION)
        blended = region + weights * (warped - region)
    result = photo.copy()
    result[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return result


def _rgb_uint8(array: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        found = f"{array.dtype} array of shape {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        raise ImageError(f"paste-back needs the {what} as an H×W×3 uint8 RGB array, got {found}")
    return array


def _footprint_box(
    matrix: np.ndarray, crop_size: tuple[int, int], photo_size: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """Photo pixel box (x0, y0, x1, y1) covered by the crop, clipped to the photo."""
    height, width = crop_size
    corners = np.array([[-0.5, -0.5], [width - 0.5, -0.5], [-0.5, height - 0.5], [width - 0.5, height - 0.5]])
    photo_corners = transform_points(invert_affine(matrix), corners)
    x0 = max(int(np.floor(photo_corners[:, 0].min())) - FOOTPRINT_MARGIN, 0)
    y0 = max(int(np.floor(photo_corners[:, 1].min())) - FOOTPRINT_MARGIN, 0)
    x1 = min(int(np.ceil(photo_corners[:, 0].max())) + FOOTPRINT_MARGIN + 1, photo_size[1])
    y1 = min(int(np.ceil(photo_corners[:, 1].max())) + FOOTPRINT_MARGIN + 1, photo_size[0])
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1
