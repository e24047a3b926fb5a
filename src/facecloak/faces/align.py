"""Face alignment as explicit photo→crop transforms, so every crop can be pasted back into its photo.

Two alignments are needed. Face-recognition models see a small crop whose five landmarks are moved onto
the model's template by a least-squares similarity (``align_face``, and ``align_tensor`` which does the
same differentiably so losses can look at the face region of a generated image). The generator sees the
FFHQ dataset's alignment (``align_ffhq``), reproduced from NVlabs/ffhq-dataset ``recreate_aligned_images``.
Both return the 2×3 matrix that maps photo pixels to crop pixels (OpenCV convention: pixel centres at
integer coordinates), which ``faces.pasteback`` inverts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from facecloak.errors import ConfigError
from facecloak.faces.templates import AlignmentTemplate
from facecloak.runtime.precision import full_precision, widened

LANDMARK_COUNT = 5
# Below this many crop pixels per photo pixel, a bilinear warp skips source pixels and aliases; the source is
# first area-downsampled by an integer factor, as the FFHQ recipe does ("shrink" step, factor floor(0.5 / scale)).
ANTIALIAS_MIN_SCALE = 0.5
# Extra source pixels kept around a warp's footprint so interpolation kernels (up to Lanczos-4) see real data.
WARP_MARGIN = 4
# Differentiable antialiasing: Gaussian sigma (s - 1) / 2 for a downscale by s, the rule of skimage.transform.rescale.
ANTIALIAS_SIGMA_PER_SHRINK = 0.5
# A face crop spans at most this many times the image's longer side: a larger face is not in the image. It bounds the
# antialiasing kernel, whose size must come from shapes (host data), not from the landmarks (device data).
MAX_CROP_SPAN = 2.0
SIMILARITY_EPS = 1e-12

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}
BORDERS = {"zeros": cv2.BORDER_CONSTANT, "reflect": cv2.BORDER_REFLECT_101, "replicate": cv2.BORDER_REPLICATE}

# FFHQ recipe constants (NVlabs/ffhq-dataset download_ffhq.py, recreate_aligned_images).
FFHQ_EYE_TO_EYE_SCALE = 2.0
FFHQ_EYE_TO_MOUTH_SCALE = 1.8
FFHQ_CENTER_TOWARDS_MOUTH = 0.1
FFHQ_BORDER_FRACTION = 0.1  # border = max(rint(qsize * 0.1), 3): how far padding reaches beyond the quad
FFHQ_MIN_BORDER = 3
FFHQ_BLUR_FRACTION = 0.02  # blur sigma = qsize * 0.02 for padded areas
FFHQ_BLUR_RAMP = 3.0  # blur weight = clip(mask * 3 + 1, 0, 1): starts a third of the pad inside the photo
FFHQ_MAX_SIZE = 1024
# PIL's QUAD transform treats coordinates as continuous (pixel centres at +0.5); the FFHQ quad is used that way.
PIL_PIXEL_CENTER = 0.5
FFHQ_PADDINGS = ("ffhq", "reflect", "zeros")


@dataclass(frozen=True, eq=False)
class AlignedFace:
    """An aligned crop and the 2×3 matrix that maps photo pixels to crop pixels (for paste-back)."""

    crop: np.ndarray
    matrix: np.ndarray
    template: str


# ------------------------------------------------------------------------------------------ transforms


def estimate_similarity(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping ``src`` onto ``dst``.

    Umeyama's closed form in 2-D without reflection reduces to linear least squares in ``[[a, -b], [b, a]]`` and
    the translation, which is batched over leading dimensions and differentiable everywhere except for degenerate
    (all-coincident) source points. Shapes ``[..., N, 2]`` → ``[..., 2, 3]``.
    """
    if src.shape[-1] != 2 or dst.shape[-1] != 2 or src.shape[-2] != dst.shape[-2]:
        raise ConfigError(f"estimate_similarity needs matching [..., N, 2] point sets, got {src.shape} and {dst.shape}")
    src, dst = torch.broadcast_tensors(src, dst.to(src.dtype))
    src_mean = src.mean(dim=-2, keepdim=True)
    dst_mean = dst.mean(dim=-2, keepdim=True)
    s = src - src_mean
    d = dst - dst_mean
    variance = (s * s).sum(dim=(-1, -2)).clamp_min(SIMILARITY_EPS)
    a = (s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1]).sum(dim=-1) / variance
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(dim=-1) / variance
    linear = torch.stack([torch.stack([a, -b], dim=-1), torch.stack([b, a], dim=-1)], dim=-2)
    translation = dst_mean.transpose(-1, -2) - linear @ src_mean.transpose(-1, -2)
    return torch.cat([linear, translation], dim=-1)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2×3 affine matrix to N×2 points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ np.asarray(matrix, dtype=np.float64)[:, :2].T + np.asarray(matrix, dtype=np.float64)[:, 2]


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2×3 affine matrix (crop→photo from photo→crop)."""
    full = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def _scale_of(matrix: np.ndarray) -> float:
    """Geometric-mean scale of an affine map: output pixels per input pixel."""
    return math.sqrt(abs(float(np.linalg.det(np.asarray(matrix, dtype=np.float64)[:, :2]))))


def _source_range(coords: np.ndarray, length: int, margin: int, *, reflected: bool) -> tuple[int, int]:
    """Index range [start, stop) of the source pixels a warp reads along one axis (mirrored reads included)."""
    low, high = float(coords.min()), float(coords.max())
    start = math.floor(low) - margin
    stop = math.ceil(high) + margin + 1
    if reflected:  # a read at -d mirrors to +d, a read at length-1+d to length-1-d
        if low < 0:
            stop = max(stop, math.ceil(-low) + margin + 1)
        if high > length - 1:
            start = min(start, math.floor(2 * (length - 1) - high) - margin)
        start, stop = max(start, 0), max(stop, 1)
    return int(np.clip(start, 0, length)), int(np.clip(stop, 0, length))


def _translate(matrix: np.ndarray, dx: float, dy: float, *, on_input: bool) -> np.ndarray:
    """The same map with the input (or output) origin moved to (dx, dy)."""
    moved = np.asarray(matrix, dtype=np.float64).copy()
    if on_input:
        moved[:, 2] += moved[:, :2] @ np.array([dx, dy])
    else:
        moved[:, 2] -= np.array([dx, dy])
    return moved


def warp_image(
    image: np.ndarray,
    matrix: np.ndarray,
    size: tuple[int, int],
    *,
    interpolation: str = "bilinear",
    border: str = "zeros",
) -> np.ndarray:
    """Warp ``image`` with a 2×3 matrix (input→output) into ``size`` (h, w), antialiased when it minifies.

    Only the source region the output can see is processed, so cropping a small face from a large photo
    (or pasting it back) costs time proportional to the face, not the photo.
    """
    if interpolation not in INTERPOLATIONS or border not in BORDERS:
        raise ConfigError(
            f"unknown interpolation '{interpolation}' or border '{border}'; "
            f"interpolations: {sorted(INTERPOLATIONS)}, borders: {sorted(BORDERS)}"
        )
    out_h, out_w = size
    matrix = np.asarray(matrix, dtype=np.float64)
    in_h, in_w = image.shape[:2]
    # Source bounding box of the output footprint; the border mode still acts at the true image edges.
    corners = np.array([[-0.5, -0.5], [out_w - 0.5, -0.5], [-0.5, out_h - 0.5], [out_w - 0.5, out_h - 0.5]])
    footprint = transform_points(invert_affine(matrix), corners)
    shrink = max(1, math.floor(ANTIALIAS_MIN_SCALE / max(_scale_of(matrix), SIMILARITY_EPS)))
    margin = WARP_MARGIN * shrink
    x0, x1 = _source_range(footprint[:, 0], in_w, margin, reflected=border != "zeros")
    y0, y1 = _source_range(footprint[:, 1], in_h, margin, reflected=border != "zeros")
    if x1 <= x0 or y1 <= y0:  # the output sees only the zero border
        return np.zeros((out_h, out_w, *image.shape[2:]), dtype=image.dtype)
    source = image[y0:y1, x0:x1]
    matrix = _translate(matrix, x0, y0, on_input=True)
    if shrink > 1:
        small_w, small_h = max(1, round(source.shape[1] / shrink)), max(1, round(source.shape[0] / shrink))
        sx, sy = small_w / source.shape[1], small_h / source.shape[0]
        source = cv2.resize(source, (small_w, small_h), interpolation=cv2.INTER_AREA)
        # Pixel-centre convention: big = (small + 0.5) / s - 0.5.
        matrix = matrix @ np.array([[1 / sx, 0, 0.5 / sx - 0.5], [0, 1 / sy, 0.5 / sy - 0.5], [0, 0, 1]])
    warped = cv2.warpAffine(
        np.ascontiguousarray(source),
        matrix,
        (out_w, out_h),
        flags=INTERPOLATIONS[interpolation],
        borderMode=BORDERS[border],
        borderValue=0,
    )
    return warped.reshape(out_h, out_w, *image.shape[2:])


# --------------------------------------------------------------------------- recognition-model alignment


def _landmarks(landmarks5: np.ndarray) -> np.ndarray:
    points = np.asarray(landmarks5, dtype=np.float64)
    if points.shape != (LANDMARK_COUNT, 2):
        raise ConfigError(f"alignment needs 5×2 landmarks (eyes, nose, mouth corners), got shape {points.shape}")
    return points


def similarity_matrix(landmarks5: np.ndarray, template: AlignmentTemplate) -> np.ndarray:
    """The photo→crop 2×3 matrix that puts the five landmarks on the template (float64 numpy)."""
    src = torch.from_numpy(_landmarks(landmarks5))
    dst = torch.from_numpy(template.points_array().astype(np.float64))
    return estimate_similarity(src, dst).numpy()


def align_face(
    rgb: np.ndarray,
    landmarks5: np.ndarray,
    template: AlignmentTemplate,
    *,
    interpolation: str = "bilinear",
) -> AlignedFace:
    """Crop one face the way a recognition model's training data was cropped (insightface ``norm_crop`` style)."""
    matrix = similarity_matrix(landmarks5, template)
    crop = warp_image(rgb, matrix, template.size, interpolation=interpolation, border="zeros")
    return AlignedFace(crop=crop, matrix=matrix, template=template.name)


def align_tensor(
    images: torch.Tensor,
    landmarks5: torch.Tensor,
    template: AlignmentTemplate,
    out_size: tuple[int, int] | int | None = None,
    *,
    antialias: bool = True,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Differentiably crop the face of each image ``[B, 3, H, W]`` onto ``template`` (optionally resized).

    Gradients reach both the pixels and the landmarks, so a loss on the crop steers the whole generated image.
    With ``antialias`` the images are Gaussian-blurred before a minifying warp (sigma from the per-image scale).
    Nothing here reads a device value back to the host: called every step, it must not stall a GPU.
    """
    import kornia

    if images.ndim != 4 or landmarks5.shape[-2:] != (LANDMARK_COUNT, 2) or landmarks5.shape[0] != images.shape[0]:
        raise ConfigError(
            f"align_tensor needs images [B, C, H, W] and landmarks [B, 5, 2], got {images.shape}, "
            f"{tuple(landmarks5.shape)}"
        )
    if out_size is not None:
        template = template.scaled(out_size)
    # The crop is cut in fp32 whatever the images' dtype (a bf16-mixed render): bf16 has no CPU determinant, and a
    # bf16 sampling grid is off by up to half a pixel at 112 px. In fp32 runs this changes nothing.
    with full_precision():
        images = widened(images)
        dst = torch.as_tensor(template.points_array(), dtype=images.dtype, device=images.device)
        matrix = estimate_similarity(landmarks5.to(images.dtype), dst.expand_as(landmarks5))
        if antialias:
            images = _antialias(images, matrix, template)
        return kornia.geometry.transform.warp_affine(
            images, matrix, dsize=template.size, mode="bilinear", padding_mode=padding_mode, align_corners=True
        )


def shrink_bound(image_size: tuple[int, int], crop_size: tuple[int, int]) -> float:
    """The largest minification a face crop of ``crop_size`` can need from an image of ``image_size``, from shapes.

    Shapes are host data, so the blur's kernel size follows from them without reading a device value (a GPU sync).
    """
    return MAX_CROP_SPAN * max(image_size) / min(crop_size)


def _antialias(images: torch.Tensor, matrix: torch.Tensor, template: AlignmentTemplate) -> torch.Tensor:
    """Gaussian-blur each image before its minifying warp: sigma from its own scale, kernel size from shapes.

    Per image, sigma is ``(s - 1) / 2`` where the warp minifies by ``s > 1 / ANTIALIAS_MIN_SCALE`` (else no blur),
    truncated at ``ceil(3 sigma)`` like ``kornia.filters.gaussian_blur2d``; the kernel is laid out at the size the
    largest possible sigma needs (:func:`shrink_bound`), its taps beyond the image's own radius zero. So neither the
    decision nor the radius reads a device value, and an image's crop does not depend on its batch-mates.
    """
    import kornia

    bound = shrink_bound((images.shape[-2], images.shape[-1]), template.size)
    if bound <= 1.0 / ANTIALIAS_MIN_SCALE:
        return images  # no face in an image this small can need it
    max_sigma = ANTIALIAS_SIGMA_PER_SHRINK * (bound - 1.0)
    window = math.ceil(3 * max_sigma)
    shrink = 1.0 / torch.sqrt(torch.abs(torch.linalg.det(matrix[:, :, :2]))).detach()
    sigma = torch.where(shrink > 1.0 / ANTIALIAS_MIN_SCALE, ANTIALIAS_SIGMA_PER_SHRINK * (shrink - 1.0), 0.0)
    sigma = sigma.clamp(max=max_sigma)[:, None]
    taps = torch.arange(-window, window + 1, device=images.device, dtype=images.dtype).abs()[None]
    inside = taps <= torch.ceil(3 * sigma)  # an impulse where sigma is 0
    weights = torch.exp(-taps.pow(2) / (2 * sigma.pow(2)).clamp_min(SIMILARITY_EPS)) * inside
    kernel = weights / weights.sum(dim=-1, keepdim=True)
    return kornia.filters.filter2d_separable(images, kernel, kernel, border_type="reflect")


# ----------------------------------------------------------------------------------------- FFHQ alignment


def ffhq_quad(
    eye_left: np.ndarray, eye_right: np.ndarray, mouth_left: np.ndarray, mouth_right: np.ndarray
) -> np.ndarray:
    """The FFHQ crop square (4×2: top-left, bottom-left, bottom-right, top-right) from eye centres and mouth corners."""
    eye_left, eye_right = np.asarray(eye_left, np.float64), np.asarray(eye_right, np.float64)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (np.asarray(mouth_left, np.float64) + np.asarray(mouth_right, np.float64)) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    # x: the face's horizontal axis, a blend of the eye line and the eye-mouth line turned by 90°.
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * FFHQ_EYE_TO_EYE_SCALE, np.hypot(*eye_to_mouth) * FFHQ_EYE_TO_MOUTH_SCALE)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * FFHQ_CENTER_TOWARDS_MOUTH
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def ffhq_quad_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """FFHQ quad from 68 dlib points (the dataset's recipe) or 5 points (eye centres ≈ pupils; an approximation)."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape == (68, 2):
        from facecloak.faces.detect import landmarks5_from_68

        points = landmarks5_from_68(points)
    points = _landmarks(points)
    return ffhq_quad(points[0], points[1], points[3], points[4])


def ffhq_matrix(quad: np.ndarray, size: int) -> np.ndarray:
    """Photo→crop 2×3 matrix (pixel-centre convention) that maps the FFHQ quad onto a ``size``² crop like PIL's QUAD."""
    quad = np.asarray(quad, dtype=np.float64)
    corners = np.array([[0.0, 0.0], [0.0, size], [size, size]])
    # Exact solve from three corners; the quad is a square, so the result is a similarity.
    continuous = np.linalg.solve(np.hstack([quad[:3], np.ones((3, 1))]), corners).T
    # PIL samples at continuous coordinates: crop_c + 0.5 = A (photo_c + 0.5) + t.
    return _translate(
        _translate(continuous, PIL_PIXEL_CENTER, PIL_PIXEL_CENTER, on_input=True),
        PIL_PIXEL_CENTER,
        PIL_PIXEL_CENTER,
        on_input=False,
    )


def align_ffhq(
    rgb: np.ndarray,
    landmarks: np.ndarray,
    size: int = FFHQ_MAX_SIZE,
    *,
    padding: str = "ffhq",
) -> AlignedFace:
    """Crop a face as the FFHQ dataset did, so a StyleGAN/e4e trained on FFHQ can invert it.

    ``landmarks`` are 68 dlib points (exact recipe) or 5 detector points (approximation). Where the square leaves
    the photo, ``padding`` chooses: ``"ffhq"`` reflects the photo and, like the dataset, blurs the reflected area
    and fades it towards the median colour with distance from the photo edge; ``"reflect"`` only reflects;
    ``"zeros"`` leaves black. Padded pixels map outside the photo, so paste-back never writes them.
    """
    if not 1 <= size <= FFHQ_MAX_SIZE:
        raise ConfigError(
            f"FFHQ crop size must be between 1 and {FFHQ_MAX_SIZE} (the dataset's resolution), got {size}"
        )
    if padding not in FFHQ_PADDINGS:
        raise ConfigError(f"unknown FFHQ padding '{padding}'; choose one of {', '.join(FFHQ_PADDINGS)}")
    quad = ffhq_quad_from_landmarks(landmarks)
    matrix = ffhq_matrix(quad, size)
    crop = warp_image(rgb, matrix, (size, size), border="zeros" if padding == "zeros" else "reflect")
    if padding == "ffhq":
        crop = _ffhq_pad_blend(crop, rgb.shape[:2], quad, matrix)
    return AlignedFace(crop=crop, matrix=matrix, template=f"ffhq_{size}")


def _ffhq_pad_blend(crop: np.ndarray, photo_size: tuple[int, int], quad: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """FFHQ's treatment of reflected padding, computed in crop space.

    The dataset pads the photo by how far the quad leaves it plus a border, then blends each padded pixel towards
    a Gaussian blur and the median colour by ``mask`` = distance outside the photo / pad width (per axis, max).
    Here the same mask is evaluated at each crop pixel's photo position.
    """
    height, width = photo_size
    qsize = np.hypot(*(quad[3] - quad[0]))
    border = max(round(qsize * FFHQ_BORDER_FRACTION), FFHQ_MIN_BORDER)
    pad_left = max(-math.floor(quad[:, 0].min()) + border, 1)
    pad_top = max(-math.floor(quad[:, 1].min()) + border, 1)
    pad_right = max(math.ceil(quad[:, 0].max()) - width + border, 1)
    pad_bottom = max(math.ceil(quad[:, 1].max()) - height + border, 1)
    size = crop.shape[0]
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="xy"), axis=-1).reshape(-1, 2)
    photo_xy = transform_points(invert_affine(matrix), grid).reshape(size, size, 2)
    px, py = photo_xy[..., 0], photo_xy[..., 1]
    mask = np.maximum(
        np.maximum(-px / pad_left, (px - (width - 1)) / pad_right),
        np.maximum(-py / pad_top, (py - (height - 1)) / pad_bottom),
    )[..., None]
    if mask.max() <= -1.0 / FFHQ_BLUR_RAMP:
        return crop
    image = crop.astype(np.float32)
    sigma = qsize * FFHQ_BLUR_FRACTION * _scale_of(matrix)
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=max(sigma, 1e-3))
    image += (blurred - image) * np.clip(mask * FFHQ_BLUR_RAMP + 1.0, 0.0, 1.0)
    image += (np.median(image, axis=(0, 1)) - image) * np.clip(mask, 0.0, 1.0)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
