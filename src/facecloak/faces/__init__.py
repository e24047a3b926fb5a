"""Faces in full photos: detection, landmark templates, alignment and paste-back."""

from facecloak.faces.align import (
    AlignedFace,
    align_face,
    align_ffhq,
    align_tensor,
    estimate_similarity,
    ffhq_matrix,
    ffhq_quad,
    ffhq_quad_from_landmarks,
    invert_affine,
    similarity_matrix,
    transform_points,
    warp_image,
)
from facecloak.faces.detect import (
    DETECTORS,
    Face,
    FaceDetector,
    MTCNNDetector,
    SCRFDDetector,
    build_detector,
    dlib_landmarks68,
    landmarks5_from_68,
)
from facecloak.faces.pasteback import feather_mask, paste_back
from facecloak.faces.templates import AlignmentTemplate, arcface_template, get_template, template_names

__all__ = [
    "DETECTORS",
    "AlignedFace",
    "AlignmentTemplate",
    "Face",
    "FaceDetector",
    "MTCNNDetector",
    "SCRFDDetector",
    "align_face",
    "align_ffhq",
    "align_tensor",
    "arcface_template",
    "build_detector",
    "dlib_landmarks68",
    "estimate_similarity",
    "feather_mask",
    "ffhq_matrix",
    "ffhq_quad",
    "ffhq_quad_from_landmarks",
    "get_template",
    "invert_affine",
    "landmarks5_from_68",
    "paste_back",
    "similarity_matrix",
    "template_names",
    "transform_points",
    "warp_image",
]
