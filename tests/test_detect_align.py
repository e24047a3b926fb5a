"""Detection finds every face in real photos; alignment puts landmarks where each model expects them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from insightface.utils.face_align import estimate_norm, norm_crop2
from skimage.transform import SimilarityTransform

from facecloak.errors import ConfigError, ImageError, MissingWeightsError, WeightsError
from facecloak.faces import (
    Face,
    MTCNNDetector,
    SCRFDDetector,
    align_face,
    align_ffhq,
    align_tensor,
    build_detector,
    dlib_landmarks68,
    estimate_similarity,
    ffhq_matrix,
    ffhq_quad_from_landmarks,
    get_template,
    landmarks5_from_68,
    template_names,
    transform_points,
)
from facecloak.faces.config import FacesConfig
from facecloak.faces.landmarks68 import landmarks68
from facecloak.faces.templates import ARCFACE_112, SPHEREFACE_112X96
from facecloak.io import load_photo

Found = Callable[[str], tuple[np.ndarray, list[Face]]]
EYE_TOLERANCE_PX = 2.0
# Frontal, well-lit faces: the 5-point similarity fit can place both eyes on the template.
FRONTAL = ["elon_musk/img18.jpg", "jack_dorsey/img16.jpg"]
# Turned faces: the least-squares fit trades eye accuracy for nose and mouth; the eye midpoint stays within this
# (largest seen on the shared multi-face photos: 2.8 px, a face looking sideways; insightface's fit is identical).
ANY_FACE_EYE_MIDPOINT_TOLERANCE_PX = 3.5


@pytest.fixture(scope="module")
def detector() -> MTCNNDetector:
    return MTCNNDetector()


@pytest.fixture(scope="module")
def found(detector: MTCNNDetector, faces_dir: Path) -> Callable[[str], tuple[np.ndarray, list[Face]]]:
    """Photo and detections by name, computed once per module (detection is the slow part)."""

    @functools.cache
    def photo_and_faces(name: str) -> tuple[np.ndarray, list[Face]]:
        rgb = load_photo(faces_dir / name).rgb
        return rgb, detector.detect(rgb)

    return photo_and_faces


# ----------------------------------------------------------------------------------------------- detection


def test_detects_both_faces_of_the_couple(found: Found) -> None:
    _, faces = found("_multi/couple.jpg")
    assert len(faces) == 2
    assert faces[0].area >= faces[1].area
    for face in faces:
        x1, y1, x2, y2 = face.box
        assert face.score > 0.9 and face.landmarks5.shape == (5, 2)
        inside = (face.landmarks5[:, 0] > x1) & (face.landmarks5[:, 0] < x2)
        assert inside.all() and ((face.landmarks5[:, 1] > y1) & (face.landmarks5[:, 1] < y2)).all()
        assert face.landmarks5[0, 0] < face.landmarks5[1, 0]  # left eye as seen in the image comes first
        assert face.landmarks5[3, 0] < face.landmarks5[4, 0]
    # Two different people, boxes far apart.
    assert abs(np.mean(faces[0].box[::2]) - np.mean(faces[1].box[::2])) > 300


def test_detects_several_faces_in_a_group_selfie(found: Found) -> None:
    _, faces = found("_multi/selfie-many-people.jpg")
    assert len(faces) >= 3
    areas = [face.area for face in faces]
    assert areas == sorted(areas, reverse=True)


@pytest.mark.parametrize("image", ["flat", "coffee"])
def test_no_face_gives_an_empty_list(detector: MTCNNDetector, image: str) -> None:
    rgb = np.full((240, 320, 3), 128, np.uint8) if image == "flat" else skimage.data.coffee()
    assert detector.detect(rgb) == []


def test_detector_rejects_non_rgb_input(detector: MTCNNDetector) -> None:
    with pytest.raises(ImageError, match="H×W×3 uint8"):
        detector.detect(np.zeros((50, 50), np.uint8))


def test_build_detector_registry_and_options(tmp_path: Path) -> None:
    mtcnn = build_detector("MTCNN", min_face_size=40, thresholds=(0.7, 0.8, 0.9))
    assert isinstance(mtcnn, MTCNNDetector) and mtcnn.min_face_size == 40
    with pytest.raises(ConfigError, match="known: mtcnn, scrfd"):
        build_detector("retinaface")
    with pytest.raises(ConfigError, match="bad options"):
        build_detector("mtcnn", min_size=3)
    with pytest.raises(ConfigError, match="thresholds"):
        build_detector("mtcnn", thresholds=(0.5, 2.0, 0.5))
    with pytest.raises(ConfigError, match="needs model_path"):
        build_detector("scrfd", model_path=None)
    with pytest.raises(MissingWeightsError, match=r"det_10g\.onnx"):
        build_detector("scrfd", model_path=tmp_path / "det_10g.onnx")


def test_scrfd_refuses_an_onnx_file_that_is_not_a_detector(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    # A recognition-shaped graph (1×3×112×112 in): insightface routes it to ArcFace, which is not a detector.
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "not_a_detector",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 112, 112])],
    )
    path = tmp_path / "w600k_r50.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime we support
    onnx.save(model, path)
    detector = SCRFDDetector(path)
    with pytest.raises(WeightsError, match="not a face detector"):
        detector.detect(np.zeros((64, 64, 3), np.uint8))


def test_dlib_68_landmarks_agree_with_mtcnn(found: Found) -> None:
    rgb, (face, *_) = found("elon_musk/img18.jpg")
    points68 = dlib_landmarks68(rgb, face)
    assert points68.shape == (68, 2)
    eye_distance = np.linalg.norm(face.landmarks5[1] - face.landmarks5[0])
    error = np.linalg.norm(landmarks5_from_68(points68) - face.landmarks5, axis=1) / eye_distance
    assert error.max() < 0.1


# ----------------------------------------------------------------------------------------------- templates


def test_templates_registry_and_scaling() -> None:
    assert get_template("arcface") is ARCFACE_112
    assert get_template("mobilefacenet_casia") is SPHEREFACE_112X96
    assert SPHEREFACE_112X96.size == (112, 96)
    # The ArcFace template is the SphereFace one shifted 8 px right (112 wide instead of 96).
    np.testing.assert_allclose(ARCFACE_112.points_array() - SPHEREFACE_112X96.points_array(), [[8, 0]] * 5, atol=1e-4)
    faceres = get_template("arcface_224")
    assert faceres.size == (224, 224)
    np.testing.assert_allclose(faceres.points_array(), ARCFACE_112.points_array() * 2, rtol=1e-6)
    np.testing.assert_allclose(get_template("arcface_160").points_array(), ARCFACE_112.points_array() * 160 / 112)
    assert get_template("ArcFace_256").size == (256, 256)
    # insightface's own scaling agrees for multiples of 112.
    reference = estimate_norm(ARCFACE_112.points_array() * 2, image_size=224)
    np.testing.assert_allclose(reference, [[1, 0, 0], [0, 1, 0]], atol=1e-4)
    assert "sphereface_112x96" in template_names()


def test_unknown_template_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"known: .*arcface_112.*sphereface_112x96"):
        get_template("vggface2_square")


# ----------------------------------------------------------------------------------------- similarity fit


def test_similarity_matches_skimage_on_random_batches() -> None:
    generator = torch.Generator().manual_seed(0)
    src = torch.rand(8, 5, 2, generator=generator, dtype=torch.float64) * 300
    dst = torch.rand(8, 5, 2, generator=generator, dtype=torch.float64) * 112
    ours = estimate_similarity(src, dst)
    assert ours.shape == (8, 2, 3)
    for k in range(8):
        reference = SimilarityTransform.from_estimate(src[k].numpy(), dst[k].numpy()).params[:2]
        np.testing.assert_allclose(ours[k].numpy(), reference, atol=1e-6)


def test_similarity_matches_insightface_on_real_landmarks(
    found: Found,
) -> None:
    _, faces = found("_multi/selfie-many-people.jpg")
    landmarks = torch.from_numpy(np.stack([face.landmarks5 for face in faces]).astype(np.float32))
    ours = estimate_similarity(landmarks, torch.from_numpy(ARCFACE_112.points_array()))
    for face, matrix in zip(faces, ours, strict=True):
        reference = estimate_norm(face.landmarks5.astype(np.float32), image_size=112)
        np.testing.assert_allclose(matrix.numpy(), reference, atol=1e-4, rtol=1e-4)


def test_similarity_recovers_a_known_transform_without_reflection() -> None:
    angle, scale, shift = 0.3, 0.45, torch.tensor([12.0, -7.0], dtype=torch.float64)
    rotation = torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=torch.float64)
    src = torch.tensor([[0, 0], [10, 1], [4, 8], [-3, 5], [7, -2]], dtype=torch.float64)
    dst = src @ (scale * rotation).T + shift
    matrix = estimate_similarity(src, dst)
    torch.testing.assert_close(matrix[:, :2], scale * rotation)
    torch.testing.assert_close(matrix[:, 2], shift)
    mirrored = dst * torch.tensor([-1.0, 1.0], dtype=torch.float64)
    assert torch.linalg.det(estimate_similarity(src, mirrored)[:, :2]) > 0  # never a reflection


def test_similarity_is_differentiable() -> None:
    src = (torch.rand(2, 5, 2, dtype=torch.float64) * 50).requires_grad_()
    dst = (torch.rand(2, 5, 2, dtype=torch.float64) * 50).requires_grad_()
    assert torch.autograd.gradcheck(estimate_similarity, (src, dst))


# --------------------------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("name", FRONTAL)
def test_arcface_crop_puts_the_eyes_on_the_template(found: Found, detector: MTCNNDetector, name: str) -> None:
    rgb, (face, *_) = found(name)
    aligned = align_face(rgb, face.landmarks5, ARCFACE_112)
    assert aligned.crop.shape == (112, 112, 3) and aligned.template == "arcface_112"
    eyes = transform_points(aligned.matrix, face.landmarks5[:2])
    assert np.abs(eyes - ARCFACE_112.points_array()[:2]).max() < EYE_TOLERANCE_PX
    # Re-detect on the crop (upscaled ×4 and padded so MTCNN sees a whole face).
    upscale, pad = 4, 224
    big = cv2.resize(aligned.crop, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
    big = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    redetected = detector.detect(np.ascontiguousarray(big))[0].landmarks5
    eyes_again = (redetected[:2] - pad) / upscale
    assert np.abs(eyes_again - ARCFACE_112.points_array()[:2]).max() < EYE_TOLERANCE_PX


def test_eye_midpoint_is_near_the_template_for_every_face(
    found: Found,
) -> None:
    target = ARCFACE_112.points_array()[:2].mean(axis=0)
    for name in ["_multi/couple.jpg", "_multi/selfie-many-people.jpg"]:
        rgb, faces = found(name)
        for face in faces:
            matrix = align_face(rgb, face.landmarks5, ARCFACE_112).matrix
            midpoint = transform_points(matrix, face.landmarks5[:2]).mean(axis=0)
            assert np.abs(midpoint - target).max() < ANY_FACE_EYE_MIDPOINT_TOLERANCE_PX


def test_crop_matches_insightface_norm_crop(found: Found) -> None:
    rgb, faces = found("_multi/selfie-many-people.jpg")  # small faces: no antialiasing needed
    for face in faces:
        ours = align_face(rgb, face.landmarks5, ARCFACE_112)
        reference, matrix = norm_crop2(rgb, face.landmarks5.astype(np.float32))
        np.testing.assert_allclose(ours.matrix, matrix, atol=1e-4)
        assert np.abs(ours.crop.astype(int) - reference).max() <= 1


def test_sphereface_crop_has_its_own_shape(found: Found) -> None:
    rgb, (face, *_) = found(FRONTAL[0])
    aligned = align_face(rgb, face.landmarks5, SPHEREFACE_112X96)
    assert aligned.crop.shape == (112, 96, 3)


def test_align_tensor_matches_align_face_and_passes_gradients(
    found: Found,
) -> None:
    rgb, faces = found("_multi/selfie-many-people.jpg")
    faces = faces[:2]
    image = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255).expand(2, -1, -1, -1).clone().requires_grad_()
    landmarks = torch.from_numpy(np.stack([face.landmarks5 for face in faces])).float().requires_grad_()
    crops = align_tensor(image, landmarks, ARCFACE_112)
    assert crops.shape == (2, 3, 112, 112)
    for k, face in enumerate(faces):
        reference = align_face(rgb, face.landmarks5, ARCFACE_112).crop
        ours = crops[k].detach().permute(1, 2, 0).numpy() * 255
        assert np.abs(ours - reference).mean() < 0.5
    crops[:, :, 40:70, 30:80].mean().backward()
    assert image.grad is not None and landmarks.grad is not None
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
    assert torch.isfinite(landmarks.grad).all() and landmarks.grad.abs().sum() > 0
    resized = align_tensor(image.detach(), landmarks.detach(), ARCFACE_112, out_size=224)
    assert resized.shape == (2, 3, 224, 224)


def test_align_tensor_antialiases_large_faces(found: Found) -> None:
    rgb, (face, *_) = found("_multi/couple.jpg")  # faces ~500 px wide into 112 px: strong minification
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    landmarks = torch.from_numpy(face.landmarks5)[None].float()
    smooth = align_tensor(image, landmarks, ARCFACE_112)[0].permute(1, 2, 0).numpy()
    aliased = align_tensor(image, landmarks, ARCFACE_112, antialias=False)[0].permute(1, 2, 0).numpy()
    reference = align_face(rgb, face.landmarks5, ARCFACE_112).crop.astype(np.float32)  # area-downsampled
    assert np.abs(smooth - reference).mean() < np.abs(aliased - reference).mean()


def test_align_tensor_reads_no_device_value() -> None:
    """Called every search step: on meta tensors (no data) any host read of a value would raise."""
    images = torch.empty(2, 3, 1024, 1024, device="meta")
    crops = align_tensor(images, torch.empty(2, 5, 2, device="meta"), ARCFACE_112)
    assert crops.shape == (2, 3, 112, 112) and crops.device.type == "meta"


def test_align_tensor_crops_each_image_as_if_alone() -> None:
    """The antialiasing blur is per image: a small face next to a large one is cropped exactly as on its own."""
    torch.manual_seed(0)
    images = torch.rand(2, 3, 512, 512)
    template = ARCFACE_112.points_array()
    landmarks = torch.from_numpy(np.stack([template * 3.0 + 20, template * 1.5 + 100])).float()  # shrink 3 and 1.5
    together = align_tensor(images, landmarks, ARCFACE_112)
    for k in range(2):
        alone = align_tensor(images[k : k + 1], landmarks[k : k + 1], ARCFACE_112)
        torch.testing.assert_close(together[k : k + 1], alone, rtol=0, atol=1e-6)
    unblurred = align_tensor(images[1:], landmarks[1:], ARCFACE_112, antialias=False)
    torch.testing.assert_close(together[1:], unblurred, rtol=0, atol=1e-6)  # minifies by < 2: no blur


FACEAPI_VS_DLIB_MAX_IOD = 0.15
"""face-api's 68 points against dlib's, mean distance in eye distances (0.07-0.13 on 21 photos: the jaw differs)."""
INNER_POINTS = slice(17, 68)
"""Brows, nose, eyes and mouth: where the two predictors agree best, and what FFHQ alignment uses."""
FACEAPI_VS_DLIB_INNER_MAX_IOD = 0.10
"""The same over the inner points (0.05-0.08 on 21 photos)."""
FACEAPI_VS_MTCNN_MAX_IOD = 0.08
"""Their five-point set against MTCNN's own landmarks (measured 0.03-0.06; dlib's own: 0.03-0.05)."""


@pytest.mark.parametrize("name", FRONTAL)
def test_faceapi_landmarks68_agree_with_dlib_and_mtcnn(found: Found, name: str) -> None:
    """``faces.landmarks68=faceapi`` (350 kB) stands in for dlib's 100 MB predictor: the same points, closely."""
    rgb, (face, *_) = found(name)
    ours = landmarks68(rgb, face, "faceapi")
    eye_distance = np.linalg.norm(face.landmarks5[0] - face.landmarks5[1])
    assert ours.shape == (68, 2)
    apart = np.linalg.norm(ours - dlib_landmarks68(rgb, face), axis=1) / eye_distance
    assert apart.mean() < FACEAPI_VS_DLIB_MAX_IOD and apart[INNER_POINTS].mean() < FACEAPI_VS_DLIB_INNER_MAX_IOD
    five = landmarks5_from_68(ours)
    assert np.linalg.norm(five - face.landmarks5, axis=1).mean() < FACEAPI_VS_MTCNN_MAX_IOD * eye_distance
    with pytest.raises(ConfigError, match=r"faces\.landmarks68"):
        landmarks68(rgb, face, "mediapipe")
    with pytest.raises(ConfigError, match=r"faces\.landmarks68"):
        FacesConfig(landmarks68="mediapipe")


# ------------------------------------------------------------------------------------------ FFHQ alignment


def test_ffhq_quad_is_a_square_mapped_onto_the_crop(found: Found) -> None:
    rgb, (face, *_) = found(FRONTAL[0])
    quad = ffhq_quad_from_landmarks(dlib_landmarks68(rgb, face))
    sides = np.linalg.norm(np.roll(quad, -1, axis=0) - quad, axis=1)
    np.testing.assert_allclose(sides, sides[0], rtol=1e-9)
    assert abs(np.dot(quad[1] - quad[0], quad[3] - quad[0])) < 1e-6 * sides[0] ** 2
    size = 512
    matrix = ffhq_matrix(quad, size)
    # PIL's QUAD maps the quad's continuous corners onto the crop's; in pixel centres that is -0.5 on both sides.
    corners = transform_points(matrix, quad - 0.5) + 0.5
    np.testing.assert_allclose(corners, [[0, 0], [0, size], [size, size], [size, 0]], atol=1e-6)
    # The eyes sit centred horizontally, a little above the middle, as in FFHQ.
    eyes = transform_points(matrix, face.landmarks5[:2]).mean(axis=0) / size
    assert abs(eyes[0] - 0.5) < 0.03 and 0.4 < eyes[1] < 0.5


def test_ffhq_five_point_approximation_is_close(found: Found) -> None:
    for name in FRONTAL:
        rgb, (face, *_) = found(name)
        exact = ffhq_quad_from_landmarks(dlib_landmarks68(rgb, face))
        approximate = ffhq_quad_from_landmarks(face.landmarks5)
        side = np.linalg.norm(exact[3] - exact[0])
        assert np.abs(approximate - exact).max() / side < 0.05


def test_ffhq_crop_and_padding(found: Found) -> None:
    rgb, (face, *_) = found(FRONTAL[0])
    points68 = dlib_landmarks68(rgb, face)
    aligned = align_ffhq(rgb, points68, 256)
    assert aligned.crop.shape == (256, 256, 3) and aligned.template == "ffhq_256"
    # Cut the photo through the face: the quad now leaves the photo on the left and top.
    x0, y0 = 420, 300
    cut = np.ascontiguousarray(rgb[y0:, x0:])
    shifted = points68 - (x0, y0)
    padded = {mode: align_ffhq(cut, shifted, 256, padding=mode) for mode in ("ffhq", "reflect", "zeros")}
    outside = padded["zeros"].crop.max(axis=2) == 0
    assert outside.mean() > 0.1
    reflect, ffhq = padded["reflect"].crop.astype(float), padded["ffhq"].crop.astype(float)
    # FFHQ padding smooths the mirrored area (less detail than a plain reflection) ...
    laplacian = lambda img: np.abs(cv2.Laplacian(img.mean(axis=2), cv2.CV_64F))  # noqa: E731
    assert laplacian(ffhq)[outside].mean() < 0.5 * laplacian(reflect)[outside].mean()
    # ... and leaves the photo's own pixels, away from its edge, untouched.
    inside = np.zeros_like(outside)
    inside[160:, 160:] = True
    assert np.abs(ffhq - reflect)[inside].max() <= 1
    with pytest.raises(ConfigError, match="1024"):
        align_ffhq(rgb, points68, 2048)
    with pytest.raises(ConfigError, match="padding"):
        align_ffhq(rgb, points68, 256, padding="mirror")
