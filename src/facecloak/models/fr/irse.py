"""ArcFace-style face-recognition backbones used as victims by CLIP2Protect, AMT-GAN and DiffAM.

Two families, both written so that their ``state_dict()`` has exactly the names, shapes and order of the
AMT-GAN ``assets/models`` checkpoints (``irse50.pth``, ``ir152.pth``, ``mobile_face.pth``):

* :class:`IRBackbone`: the "improved residual" (IR) ResNets of InsightFace, optionally with
  squeeze-and-excitation (IR-SE). One implementation serves every depth; :func:`ir_se_50` and :func:`ir_152`
  are the two configurations the papers use. The reference code is ``irse.Backbone`` / ``ir152.Backbone`` in
  CLIP2Protect (TreB1eN/InsightFace_Pytorch and ZhaoJ9014/face.evoLVe lineage).
* :class:`MobileFaceNet` (Chen et al., 2018), reference ``irse.MobileFaceNet``.

All networks take an RGB face crop in [-1, 1] at 112×112 and return a 512-d embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from facecloak.errors import ConfigError

# --- shared pieces ---------------------------------------------------------------------------------------------------

EMBEDDING_DIM = 512
"""Embedding size of every face-recognition network in the papers."""

SE_REDUCTION = 16
"""Squeeze-and-excitation channel reduction of the IR-SE units (reference ``SEModule(depth, 16)``)."""


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Scale each embedding to unit length, as the reference ``l2_norm`` does before returning it."""
    return F.normalize(x, p=2.0, dim=1)


# --- IR / IR-SE backbones --------------------------------------------------------------------------------------------

STAGE_DEPTHS = (64, 128, 256, 512)
"""Output channels of the four residual stages (InsightFace ``get_blocks``)."""

UNITS_PER_STAGE: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    152: (3, 8, 36, 3),
}
"""Residual units per stage for each network depth (InsightFace ``get_blocks``)."""

STEM_CHANNELS = 64
"""Channels of the 3×3 input convolution."""

TOTAL_STRIDE = 16
"""Four stride-2 stages shrink 112×112 to a 7×7 grid before the fully connected embedding layer."""

DEFAULT_INPUT_SIZE = 112
"""Side of the aligned face crop the papers' IR checkpoints were trained on (the reference also allows 224)."""


class SqueezeExcite(nn.Module):
    """Channel attention of IR-SE units: global average, bottleneck 1×1 convs, sigmoid gate."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reweight channels by a gate computed from their spatial mean."""
        gate = F.adaptive_avg_pool2d(x, 1)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(gate))))
        return x * gate


class IRUnit(nn.Module):
    """Pre-activation bottleneck of the IR ResNets: BN, 3×3 conv, PReLU, strided 3×3 conv, BN (then optional SE).

    The stride sits on the second 3×3 conv. When the channel count is unchanged the shortcut is a 1×1 max-pool,
    i.e. plain subsampling; otherwise it is a strided 1×1 conv followed by BatchNorm.
    """

    def __init__(self, in_channels: int, depth: int, stride: int, use_se: bool) -> None:
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(kernel_size=1, stride=stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(depth),
            )
        residual: list[nn.Module] = [
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, kernel_size=3, stride=1, padding=1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(depth),
        ]
        if use_se:
            residual.append(SqueezeExcite(depth))
        self.res_layer = nn.Sequential(*residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add the residual branch to the (possibly subsampled or projected) input."""
        return self.res_layer(x) + self.shortcut_layer(x)


@dataclass(frozen=True)
class IRConfig:
    """Everything that distinguishes one IR backbone of the papers from another."""

    num_layers: int
    use_se: bool
    drop_ratio: float
    l2_normalize_output: bool
    input_size: int = DEFAULT_INPUT_SIZE

    def __post_init__(self) -> None:
        if self.num_layers not in UNITS_PER_STAGE:
            raise ConfigError(f"num_layers must be one of {sorted(UNITS_PER_STAGE)}, got {self.num_layers}")
        if self.input_size % TOTAL_STRIDE:
            raise ConfigError(f"input_size must be a multiple of {TOTAL_STRIDE}, got {self.input_size}")


class IRBackbone(nn.Module):
    """IR / IR-SE ResNet: stem, four residual stages, then BN → dropout → flatten (C, H, W) → linear → BN1d."""

    def __init__(self, config: IRConfig) -> None:
        super().__init__()
        self.config = config
        grid = config.input_size // TOTAL_STRIDE
        # Attribute order (input, output, body) reproduces the checkpoints' key order.
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, STEM_CHANNELS, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(STEM_CHANNELS),
            nn.PReLU(STEM_CHANNELS),
        )
        last = STAGE_DEPTHS[-1]
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(last),
            nn.Dropout(config.drop_ratio),
            nn.Flatten(),
            nn.Linear(last * grid * grid, EMBEDDING_DIM),
            nn.BatchNorm1d(EMBEDDING_DIM),
        )
        units: list[nn.Module] = []
        in_channels = STEM_CHANNELS
        for depth, num_units in zip(STAGE_DEPTHS, UNITS_PER_STAGE[config.num_layers]):
            for index in range(num_units):
                stride = 2 if index == 0 else 1
                units.append(IRUnit(in_channels, depth, stride, config.use_se))
                in_channels = depth
        self.body = nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed faces ``[B, 3, S, S]`` in [-1, 1]; L2-normalised only if the reference normalises."""
        embedding = self.output_layer(self.body(self.input_layer(x)))
        return l2_normalize(embedding) if self.config.l2_normalize_output else embedding


IR_SE_50 = IRConfig(num_layers=50, use_se=True, drop_ratio=0.6, l2_normalize_output=True)
"""``irse.Backbone(50, 0.6, 'ir_se')``: IR-SE-50 (``irse50.pth``), returns unit-length embeddings."""

IR_152 = IRConfig(num_layers=152, use_se=False, drop_ratio=0.4, l2_normalize_output=False)
"""``ir152.IR_152((112, 112))``: IR-152 (``ir152.pth``); the reference returns the raw BatchNorm1d output."""


def ir_se_50() -> IRBackbone:
    """IR-SE-50 as built by CLIP2Protect/AMT-GAN, so ``irse50.pth`` loads strictly."""
    return IRBackbone(IR_SE_50)


def ir_152() -> IRBackbone:
    """IR-152 as built by CLIP2Protect/AMT-GAN, so ``ir152.pth`` loads strictly."""
    return IRBackbone(IR_152)


# --- MobileFaceNet ---------------------------------------------------------------------------------------------------


class ConvBN(nn.Module):
    """Bias-free conv + BatchNorm, with PReLU unless ``linear`` (the reference ``Conv_block`` / ``Linear_block``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        linear: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.prelu = None if linear else nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve, normalise and (unless linear) activate."""
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class DepthWiseUnit(nn.Module):
    """Inverted bottleneck: 1×1 expand to ``expanded`` channels, 3×3 depthwise (strided), linear 1×1 projection."""

    def __init__(self, in_channels: int, out_channels: int, expanded: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.conv = ConvBN(in_channels, expanded)
        self.conv_dw = ConvBN(expanded, expanded, kernel=3, stride=stride, padding=1, groups=expanded)
        self.project = ConvBN(expanded, out_channels, linear=True)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the bottleneck, adding the input back inside residual stacks."""
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


class ResidualStack(nn.Module):
    """``num_units`` stride-1 residual bottlenecks that keep ``channels`` (the reference ``Residual``)."""

    def __init__(self, channels: int, num_units: int, expanded: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            *(DepthWiseUnit(channels, channels, expanded, stride=1, residual=True) for _ in range(num_units))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the stack."""
        return self.model(x)


MOBILEFACENET_FINAL_GRID = 7
"""Spatial size before the global depthwise conv (112 px input, total stride 16)."""

MOBILEFACENET_FEATURES = 512
"""Channels of the last 1×1 conv, pooled by the global depthwise conv into the linear layer's input."""


class MobileFaceNet(nn.Module):
    """MobileFaceNet (Chen et al., 2018, Table 1) in the InsightFace_Pytorch layout used by the papers.

    Channel counts, expansions and repeats follow the reference ``irse.MobileFaceNet`` exactly. A linear
    depthwise conv whose kernel covers the whole final 7×7 map replaces average pooling.
    """

    def __init__(self, embedding_size: int = EMBEDDING_DIM) -> None:
        super().__init__()
        features = MOBILEFACENET_FEATURES
        self.conv1 = ConvBN(3, 64, kernel=3, stride=2, padding=1)
        self.conv2_dw = ConvBN(64, 64, kernel=3, padding=1, groups=64)
        self.conv_23 = DepthWiseUnit(64, 64, expanded=128, stride=2, residual=False)
        self.conv_3 = ResidualStack(64, num_units=4, expanded=128)
        self.conv_34 = DepthWiseUnit(64, 128, expanded=256, stride=2, residual=False)
        self.conv_4 = ResidualStack(128, num_units=6, expanded=256)
        self.conv_45 = DepthWiseUnit(128, 128, expanded=512, stride=2, residual=False)
        self.conv_5 = ResidualStack(128, num_units=2, expanded=256)
        self.conv_6_sep = ConvBN(128, features)
        self.conv_6_dw = ConvBN(features, features, kernel=MOBILEFACENET_FINAL_GRID, groups=features, linear=True)
        self.linear = nn.Linear(features, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed faces ``[B, 3, 112, 112]`` in [-1, 1] into unit-length vectors."""
        x = self.conv2_dw(self.conv1(x))
        x = self.conv_3(self.conv_23(x))
        x = self.conv_4(self.conv_34(x))
        x = self.conv_5(self.conv_45(x))
        x = self.conv_6_dw(self.conv_6_sep(x))
        return l2_normalize(self.bn(self.linear(torch.flatten(x, 1))))
