"""Inception-ResNet-v1 FaceNet (VGGFace2), the fourth victim network of CLIP2Protect/AMT-GAN.

The layout reproduces timesler/facenet-pytorch's ``InceptionResnetV1`` as vendored by CLIP2Protect
(``models/facenet.py``), so AMT-GAN's ``facenet.pth`` loads strictly. The architecture is Szegedy et al. (2016),
"Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning", Inception-ResNet-v1 variant.

Input: RGB face crops in [-1, 1] at 160×160. Output: unit-length 512-d embeddings. The ``logits`` layer
(VGGFace2's 8631 identities) is part of the checkpoint but plays no part in embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
"""BatchNorm epsilon of every layer: the value of the original TensorFlow FaceNet that the weights came from."""

EMBEDDING_DIM = 512
VGGFACE2_CLASSES = 8631
"""Identities of VGGFace2's training split: the size of the (unused) ``logits`` layer in ``facenet.pth``."""

DROPOUT_PROB = 0.6
"""Dropout before the embedding layer (facenet-pytorch default; inactive in eval)."""

# Residual scales of the three Inception-ResNet block types (Szegedy et al. 2016, section 3.3; facenet-pytorch).
BLOCK35_SCALE = 0.17
BLOCK17_SCALE = 0.10
BLOCK8_SCALE = 0.20

# Repeats of each block type in Inception-ResNet-v1 (the last Block8 is separate, unscaled and without ReLU).
BLOCK35_REPEATS = 5
BLOCK17_REPEATS = 10
BLOCK8_REPEATS = 5

FINAL_CHANNELS = 1792
"""Channels after the last Inception-ResNet block, pooled into the embedding layer."""


class BasicConv2d(nn.Module):
    """Bias-free conv, BatchNorm (eps 1e-3), ReLU: the only conv flavour inside the network."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve, normalise, rectify."""
        return F.relu(self.bn(self.conv(x)))


def _branch(*convs: BasicConv2d) -> nn.Module:
    """Return a one-conv branch as the bare conv and longer ones as Sequential, as the checkpoint's keys name them."""
    return convs[0] if len(convs) == 1 else nn.Sequential(*convs)


class InceptionResidual(nn.Module):
    """Parallel conv branches, concatenated, projected back by a 1×1 conv, scaled and added to the input."""

    def __init__(self, branches: list[nn.Module], concat_channels: int, channels: int, scale: float, relu: bool):
        super().__init__()
        for index, branch in enumerate(branches):
            self.add_module(f"branch{index}", branch)
        self.num_branches = len(branches)
        self.conv2d = nn.Conv2d(concat_channels, channels, kernel_size=1)
        self.scale = scale
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual update ``x + scale · conv(concat(branches(x)))``, then ReLU unless this is the last block."""
        mixed = torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.num_branches)], dim=1)
        out = self.conv2d(mixed) * self.scale + x
        return F.relu(out) if self.relu else out


def block35(scale: float = BLOCK35_SCALE) -> InceptionResidual:
    """Inception-ResNet-A (35×35 grid in the paper; 256 channels)."""
    return InceptionResidual(
        [
            _branch(BasicConv2d(256, 32, 1)),
            _branch(BasicConv2d(256, 32, 1), BasicConv2d(32, 32, 3, padding=1)),
            _branch(BasicConv2d(256, 32, 1), BasicConv2d(32, 32, 3, padding=1), BasicConv2d(32, 32, 3, padding=1)),
        ],
        concat_channels=96,
        channels=256,
        scale=scale,
        relu=True,
    )


def block17(scale: float = BLOCK17_SCALE) -> InceptionResidual:
    """Inception-ResNet-B (17×17 grid in the paper; 896 channels) with factorised 1×7 / 7×1 convs."""
    return InceptionResidual(
        [
            _branch(BasicConv2d(896, 128, 1)),
            _branch(
                BasicConv2d(896, 128, 1),
                BasicConv2d(128, 128, (1, 7), padding=(0, 3)),
                BasicConv2d(128, 128, (7, 1), padding=(3, 0)),
            ),
        ],
        concat_channels=256,
        channels=896,
        scale=scale,
        relu=True,
    )


def block8(scale: float = BLOCK8_SCALE, relu: bool = True) -> InceptionResidual:
    """Inception-ResNet-C (8×8 grid in the paper; 1792 channels) with factorised 1×3 / 3×1 convs."""
    return InceptionResidual(
        [
            _branch(BasicConv2d(FINAL_CHANNELS, 192, 1)),
            _branch(
                BasicConv2d(FINAL_CHANNELS, 192, 1),
                BasicConv2d(192, 192, (1, 3), padding=(0, 1)),
                BasicConv2d(192, 192, (3, 1), padding=(1, 0)),
            ),
        ],
        concat_channels=384,
        channels=FINAL_CHANNELS,
        scale=scale,
        relu=relu,
    )


class InceptionReduction(nn.Module):
    """Grid reduction: stride-2 conv branches plus a 3×3/2 max-pool branch (last), concatenated on channels."""

    def __init__(self, branches: list[nn.Module]) -> None:
        super().__init__()
        for index, branch in enumerate([*branches, nn.MaxPool2d(3, stride=2)]):
            self.add_module(f"branch{index}", branch)
        self.num_branches = len(branches) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every branch's output."""
        return torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.num_branches)], dim=1)


def mixed_6a() -> InceptionReduction:
    """Reduction-A: 256 → 896 channels, halves the grid."""
    return InceptionReduction(
        [
            _branch(BasicConv2d(256, 384, 3, stride=2)),
            _branch(BasicConv2d(256, 192, 1), BasicConv2d(192, 192, 3, padding=1), BasicConv2d(192, 256, 3, stride=2)),
        ]
    )


def mixed_7a() -> InceptionReduction:
    """Reduction-B: 896 → 1792 channels, halves the grid."""
    return InceptionReduction(
        [
            _branch(BasicConv2d(896, 256, 1), BasicConv2d(256, 384, 3, stride=2)),
            _branch(BasicConv2d(896, 256, 1), BasicConv2d(256, 256, 3, stride=2)),
            _branch(BasicConv2d(896, 256, 1), BasicConv2d(256, 256, 3, padding=1), BasicConv2d(256, 256, 3, stride=2)),
        ]
    )


class InceptionResnetV1(nn.Module):
    """FaceNet embedding network; ``forward`` returns L2-normalised embeddings like the reference's default mode."""

    def __init__(self, num_classes: int = VGGFACE2_CLASSES, dropout_prob: float = DROPOUT_PROB) -> None:
        super().__init__()
        self.conv2d_1a = BasicConv2d(3, 32, 3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 32, 3)
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3)
        self.conv2d_4b = BasicConv2d(192, 256, 3, stride=2)
        self.repeat_1 = nn.Sequential(*(block35() for _ in range(BLOCK35_REPEATS)))
        self.mixed_6a = mixed_6a()
        self.repeat_2 = nn.Sequential(*(block17() for _ in range(BLOCK17_REPEATS)))
        self.mixed_7a = mixed_7a()
        self.repeat_3 = nn.Sequential(*(block8() for _ in range(BLOCK8_REPEATS)))
        self.block8 = block8(scale=1.0, relu=False)
        self.dropout = nn.Dropout(dropout_prob)
        self.last_linear = nn.Linear(FINAL_CHANNELS, EMBEDDING_DIM, bias=False)
        self.last_bn = nn.BatchNorm1d(EMBEDDING_DIM, eps=BN_EPS)
        # Identity classifier of the training set: stored in the checkpoint, never used for embeddings.
        self.logits = nn.Linear(EMBEDDING_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Un-normalised 512-d output of ``last_bn``: the input of both the embedding and the classifier."""
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))
        x = self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(self.maxpool_3a(x))))
        x = self.mixed_6a(self.repeat_1(x))
        x = self.mixed_7a(self.repeat_2(x))
        x = self.block8(self.repeat_3(x))
        x = self.dropout(F.adaptive_avg_pool2d(x, 1))
        return self.last_bn(self.last_linear(torch.flatten(x, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed faces ``[B, 3, 160, 160]`` in [-1, 1] into unit-length vectors."""
        return F.normalize(self.features(x), p=2.0, dim=1)
