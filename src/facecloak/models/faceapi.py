"""face-api.js networks (npm ``@vladmandic/face-api``) as differentiable PyTorch modules.

face-api ships "layers-free" TF.js weights manifests: named tensors and no graph. Each network is therefore
defined here, with every parameter named exactly as its manifest entry (``a/b/c`` becomes the state-dict key
``a.b.c``), so loading is a strict one-to-one mapping checked before ``load_state_dict(strict=True)``.

* :class:`FaceApiRecognitionNet`: face-api's port of dlib's ResNet-29 face descriptor (128-D); input is a dlib
  face chip (``dlib.get_face_chip``, 150×150, padding 0.25). Against native dlib it agrees at cosine ≈ 0.9997.
* :class:`FaceApiExpressionNet`: seven expressions on the 112×112 ``FaceFeatureExtractor`` backbone.
* :class:`FaceApiLandmarkNet`: 68 landmarks on the same backbone.

Architectures follow face-api's ``src/faceRecognitionNet``, ``src/faceFeatureExtractor``, ``src/faceProcessor``,
``src/faceExpressionNet`` and ``src/faceLandmarkNet``. TF "SAME" padding (extra row/column at the bottom/right
when the total is odd) is reproduced explicitly, since PyTorch's symmetric padding would shift strided outputs.
All networks take NCHW float RGB in [0, 255] and normalise inside, so gradients reach the input pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from facecloak.errors import ConfigError, CorruptWeightsError, ImageError, MissingWeightsError
from facecloak.models.tfjs.weights import load_manifest_weights
from facecloak.paths import shared_weights_dir

# --- input conventions -----------------------------------------------------------------------------------------------

MEAN_RGB = (122.782, 117.001, 104.298)
"""Per-channel means subtracted from 0–255 RGB: dlib's ``input_rgb_image`` defaults, copied by face-api."""

RECOGNITION_DIVISOR = 256.0
"""dlib's ``input_rgb_image`` divides the mean-subtracted pixels by 256. face-api 1.7 divides by 255; on the shared
photos both reach mean cosine 0.9997 against native dlib, so the original's value is kept."""

FEATURE_EXTRACTOR_DIVISOR = 255.0
"""face-api's ``FaceFeatureExtractor`` divides the mean-subtracted pixels by 255."""

EXPRESSION_LABELS = ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")
"""Output order of the expression net (face-api ``FACE_EXPRESSION_LABELS``)."""

NUM_LANDMARKS = 68
"""iBUG 300-W landmark scheme (jaw 0–16, brows 17–26, nose 27–35, eyes 36–47, mouth 48–67)."""

DESCRIPTOR_DIM = 128
"""Size of the dlib / face-api face descriptor."""


@dataclass(frozen=True)
class FaceApiInputSpec:
    """What a face-api network expects, so callers can prepare crops without reading the network code."""

    size: int
    """Side of the square NCHW input in pixels."""
    value_range: tuple[float, float]
    """Range of the float pixel values (the network normalises internally)."""
    colour: str
    """Channel order."""
    crop: str
    """How the face crop is made."""


# --- TF.js layout conversion -----------------------------------------------------------------------------------------

_TF_CONV_TO_TORCH = (3, 2, 0, 1)
"""TF conv kernels are [kh, kw, in, out]; PyTorch wants [out, in, kh, kw]."""

_TF_DEPTHWISE_TO_TORCH = (2, 3, 0, 1)
"""TF depthwise kernels are [kh, kw, channels, multiplier]; PyTorch grouped convs want [channels, 1, kh, kw]."""


def _tf_to_torch(name: str, value: torch.Tensor) -> torch.Tensor:
    """Reorder one TF tensor into the layout of the PyTorch parameter of the same name."""
    if value.dim() == 4:
        order = _TF_DEPTHWISE_TO_TORCH if name.endswith("depthwise_filter") else _TF_CONV_TO_TORCH
        return value.permute(*order).contiguous()
    if value.dim() == 2:  # fully connected: TF [in, out], stored here as [out, in]
        return value.t().contiguous()
    return value


def _tf_same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Zero-pad like TF "SAME": output = ceil(input / stride), odd totals put the extra pixel bottom/right."""
    pads: list[int] = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: width first, then height
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _check_input(x: torch.Tensor, spec: FaceApiInputSpec, network: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[-2:] != (spec.size, spec.size):
        raise ImageError(
            f"{network} expects NCHW {spec.colour} input of shape (N, 3, {spec.size}, {spec.size}) with values in "
            f"{spec.value_range}, got {tuple(x.shape)}; make the crop as follows: {spec.crop}"
        )


def _normalise(x: torch.Tensor, divisor: float) -> torch.Tensor:
    mean = x.new_tensor(MEAN_RGB).view(1, 3, 1, 1)
    return (x - mean) / divisor


# --- building blocks (parameter names = manifest names) --------------------------------------------------------------


class _Conv(nn.Module):
    """Plain conv with bias and TF padding (``filters``, ``bias``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, same: bool) -> None:
        super().__init__()
        self.filters = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.kernel, self.stride, self.same = kernel, stride, same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve with TF "SAME" or "VALID" padding."""
        if self.same:
            x = _tf_same_pad(x, self.kernel, self.stride)
        return F.conv2d(x, self.filters, self.bias, stride=self.stride)


class _Scale(nn.Module):
    """dlib's affine layer (folded batch norm): per-channel ``weights`` and ``biases``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.empty(channels))
        self.biases = nn.Parameter(torch.empty(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the per-channel affine transform."""
        return x * self.weights.view(1, -1, 1, 1) + self.biases.view(1, -1, 1, 1)


class _ScaledConv(nn.Module):
    """Recognition-net conv layer: conv, then scale; strided ones use "VALID" padding like dlib."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = _Conv(in_channels, out_channels, kernel, stride, same=stride == 1)
        self.scale = _Scale(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve, then apply the affine layer."""
        return self.scale(self.conv(x))


class _Residual(nn.Module):
    """dlib residual block: two 3×3 scaled convs plus a shortcut.

    A down-sampling block strides its first conv by 2 ("VALID") and shortcuts through a 2×2 average pool; like
    dlib's ``add_prev``, the two branches are zero-padded to a common size (spatially for odd inputs, in channels
    when the block widens) before they are added.
    """

    def __init__(self, in_channels: int, out_channels: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv1 = _ScaledConv(in_channels, out_channels, 3, stride=2 if down else 1)
        self.conv2 = _ScaledConv(out_channels, out_channels, 3, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run both branches and add them."""
        out = self.conv2(F.relu(self.conv1(x)))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        out = F.pad(out, (0, shortcut.shape[-1] - out.shape[-1], 0, shortcut.shape[-2] - out.shape[-2]))
        shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, out.shape[1] - shortcut.shape[1]))
        return F.relu(out + shortcut)


class _SeparableConv(nn.Module):
    """Depthwise 3×3 (carrying the stride) then pointwise 1×1, TF "SAME" padding, one bias after both."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.depthwise_filter = nn.Parameter(torch.empty(in_channels, 1, 3, 3))
        self.pointwise_filter = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise, then pointwise convolution."""
        x = F.conv2d(_tf_same_pad(x, 3, self.stride), self.depthwise_filter, stride=self.stride, groups=x.shape[1])
        return F.conv2d(x, self.pointwise_filter, self.bias)


class _DenseBlock4(nn.Module):
    """face-api ``denseBlock4``: a strided entry conv and three separable convs, each fed the sum of all before it."""

    def __init__(self, in_channels: int, out_channels: int, first: bool) -> None:
        super().__init__()
        self.conv0: nn.Module = (
            _Conv(in_channels, out_channels, 3, stride=2, same=True)
            if first
            else _SeparableConv(in_channels, out_channels, stride=2)
        )
        self.conv1 = _SeparableConv(out_channels, out_channels, stride=1)
        self.conv2 = _SeparableConv(out_channels, out_channels, stride=1)
        self.conv3 = _SeparableConv(out_channels, out_channels, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Densely connected sums with a ReLU at each junction."""
        total = F.relu(self.conv0(x))
        for conv in (self.conv1, self.conv2, self.conv3):
            total = total + conv(F.relu(total))
        return F.relu(total)


class _FullyConnected(nn.Module):
    """Dense layer named like face-api's ``fc`` (``weights``, ``bias``)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Affine map of the flattened features."""
        return F.linear(x, self.weights, self.bias)


# --- recognition net (dlib ResNet-29) --------------------------------------------------------------------------------

_RECOGNITION_STEM = ("conv32_down", 32, 7)
"""Stem: a 7×7 stride-2 "VALID" conv to 32 channels, then a 3×3 stride-2 max pool."""

_RECOGNITION_BLOCKS: tuple[tuple[str, int, bool], ...] = (
    ("conv32_1", 32, False),
    ("conv32_2", 32, False),
    ("conv32_3", 32, False),
    ("conv64_down", 64, True),
    ("conv64_1", 64, False),
    ("conv64_2", 64, False),
    ("conv64_3", 64, False),
    ("conv128_down", 128, True),
    ("conv128_1", 128, False),
    ("conv128_2", 128, False),
    ("conv256_down", 256, True),
    ("conv256_1", 256, False),
    ("conv256_2", 256, False),
    ("conv256_down_out", 256, True),
)
"""Residual blocks in order: (manifest name, output channels, down-sampling), face-api ``FaceRecognitionNet``."""


class FaceApiRecognitionNet(nn.Module):
    """dlib's ResNet-29 face descriptor, differentiable, so attacks can target the strongest offline FR model."""

    input_spec: ClassVar[FaceApiInputSpec] = FaceApiInputSpec(
        size=150,
        value_range=(0.0, 255.0),
        colour="RGB",
        crop="dlib.get_face_chip(image, shape, size=150, padding=0.25) (see facecloak.models.dlib_native)",
    )

    def __init__(self) -> None:
        super().__init__()
        name, channels, kernel = _RECOGNITION_STEM
        self.add_module(name, _ScaledConv(3, channels, kernel, stride=2))
        self.block_names = tuple(block for block, _, _ in _RECOGNITION_BLOCKS)
        for block, out_channels, down in _RECOGNITION_BLOCKS:
            self.add_module(block, _Residual(channels, out_channels, down))
            channels = out_channels
        self.fc = nn.Parameter(torch.empty(DESCRIPTOR_DIM, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the raw (not unit-length) 128-D descriptors of (N, 3, 150, 150) RGB chips in [0, 255]."""
        _check_input(x, self.input_spec, type(self).__name__)
        out = F.relu(self.get_submodule(_RECOGNITION_STEM[0])(_normalise(x, RECOGNITION_DIVISOR)))
        out = F.max_pool2d(out, 3, 2)
        for block in self.block_names:
            out = self.get_submodule(block)(out)
        return F.linear(out.mean(dim=(2, 3)), self.fc)


# --- FaceFeatureExtractor heads --------------------------------------------------------------------------------------

_EXTRACTOR_CHANNELS = (32, 64, 128, 256)
"""Output channels of ``dense0``–``dense3``; each block halves the resolution (112 → 7)."""

_EXTRACTOR_POOL = (7, 2)
"""Final average pool (kernel, stride), "VALID": the 7×7 map becomes one 256-D vector."""

_EXTRACTOR_INPUT = FaceApiInputSpec(
    size=112,
    value_range=(0.0, 255.0),
    colour="RGB",
    crop="the detected face box, padded to a square and resized to 112×112 (face-api toBatchTensor(112, true))",
)


class _FaceFeatureHead(nn.Module):
    """face-api ``FaceProcessor``: the ``FaceFeatureExtractor`` backbone and one fully connected head."""

    input_spec: ClassVar[FaceApiInputSpec] = _EXTRACTOR_INPUT
    num_outputs: ClassVar[int]

    def __init__(self) -> None:
        super().__init__()
        channels = 3
        for index, out_channels in enumerate(_EXTRACTOR_CHANNELS):
            self.add_module(f"dense{index}", _DenseBlock4(channels, out_channels, first=index == 0))
            channels = out_channels
        self.fc = _FullyConnected(channels, self.num_outputs)

    def head_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Return the raw fully connected outputs for (N, 3, 112, 112) RGB crops in [0, 255]."""
        _check_input(x, self.input_spec, type(self).__name__)
        out = _normalise(x, FEATURE_EXTRACTOR_DIVISOR)
        for index in range(len(_EXTRACTOR_CHANNELS)):
            out = self.get_submodule(f"dense{index}")(out)
        out = F.avg_pool2d(out, *_EXTRACTOR_POOL)
        return self.fc(out.flatten(1))


class FaceApiExpressionNet(_FaceFeatureHead):
    """Seven-class facial expression classifier, to check that protection keeps the expression."""

    num_outputs: ClassVar[int] = len(EXPRESSION_LABELS)
    labels: ClassVar[tuple[str, ...]] = EXPRESSION_LABELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return (N, 7) logits in :data:`EXPRESSION_LABELS` order (face-api applies softmax on top)."""
        return self.head_outputs(x)

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Return (N, 7) expression probabilities, as face-api's ``predictExpressions`` reports them."""
        return torch.softmax(self(x), dim=1)


class FaceApiLandmarkNet(_FaceFeatureHead):
    """68-point landmark regressor, to measure how far protection moves facial geometry."""

    num_outputs: ClassVar[int] = 2 * NUM_LANDMARKS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return (N, 68, 2) landmark (x, y) positions as fractions of the crop's width and height."""
        return self.head_outputs(x).view(-1, NUM_LANDMARKS, 2)  # face-api interleaves x0, y0, x1, y1, ...


# --- loading ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceApiModelSpec:
    """One face-api network: how to build it and which manifest holds its weights."""

    build: Callable[[], nn.Module]
    manifest_name: str
    """File name in ``$FACECLOAK_SHARED/weights/face_api`` (npm ``@vladmandic/face-api@1.7.15``, ``model/``)."""


FACEAPI_MODELS: dict[str, FaceApiModelSpec] = {
    "recognition": FaceApiModelSpec(FaceApiRecognitionNet, "face_recognition_model-weights_manifest.json"),
    "expression": FaceApiModelSpec(FaceApiExpressionNet, "face_expression_model-weights_manifest.json"),
    "landmark68": FaceApiModelSpec(FaceApiLandmarkNet, "face_landmark_68_model-weights_manifest.json"),
}
"""The face-api networks facecloak can load, by kind."""


def faceapi_state_dict(model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map TF.js manifest tensors onto ``model``'s parameters, failing loudly unless they match one to one."""
    expected = {key: param.shape for key, param in model.state_dict().items()}
    converted = {name.replace("/", "."): _tf_to_torch(name, value) for name, value in weights.items()}
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    wrong_shape = sorted(
        f"{key}: manifest {tuple(converted[key].shape)} vs network {tuple(expected[key])}"
        for key in set(expected) & set(converted)
        if converted[key].shape != expected[key]
    )
    if missing or unexpected or wrong_shape:
        raise CorruptWeightsError(
            f"the weights do not fit {type(model).__name__}: missing {missing or 'none'}; "
            f"unexpected {unexpected or 'none'}; wrong shape {wrong_shape or 'none'}. "
            "Check that the manifest is the face-api.js one for this kind of network."
        )
    return converted


def load_faceapi_model(kind: str, manifest_path: str | Path | None = None) -> nn.Module:
    """Build a face-api network and load its manifest strictly; returned frozen in eval mode for use as a victim.

    ``manifest_path`` defaults to the copy in ``$FACECLOAK_SHARED/weights/face_api``.
    """
    if kind not in FACEAPI_MODELS:
        raise ConfigError(f"unknown face-api model kind {kind!r}; choose one of {sorted(FACEAPI_MODELS)}")
    spec = FACEAPI_MODELS[kind]
    path = Path(manifest_path) if manifest_path is not None else shared_weights_dir() / "face_api" / spec.manifest_name
    if not path.is_file():
        raise MissingWeightsError(
            f"face-api manifest for {kind!r} not found at {path}; it ships in npm @vladmandic/face-api@1.7.15 "
            f"(model/{spec.manifest_name} and its .bin): copy both next to each other and pass the manifest path"
        )
    model = spec.build()
    model.load_state_dict(faceapi_state_dict(model, load_manifest_weights(path)), strict=True)
    return model.eval().requires_grad_(False)
