"""MobileFaceNet as trained on CASIA-WebFace by Xiaoccer/MobileFaceNet_Pytorch (``068.ckpt``).

Input: RGB crops aligned to the SphereFace 112×96 template, ``(x - 127.5) / 128``. Output: 128-D embedding
(the author concatenates the embedding of the horizontally flipped crop; the zoo wrapper does that from the
registry's ``flip_concat``). Parameter names follow the checkpoint's ``net_state_dict`` exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from facecloak.errors import CorruptWeightsError, MissingWeightsError

# (expansion t, output channels c, repeats n, first stride s), as in the MobileFaceNet paper, Table 1.
BOTTLENECK_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)
EMBEDDING_DIM = 128
INPUT_SIZE = (112, 96)


class ConvBlock(nn.Module):
    """Conv → BatchNorm → (PReLU unless linear); depthwise when ``groups`` equals the channel count."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | tuple[int, int],
        stride: int,
        padding: int,
        depthwise: bool = False,
        linear: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=cin if depthwise else 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.prelu = None if linear else nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class Bottleneck(nn.Module):
    """Inverted residual: 1×1 expand, 3×3 depthwise (stride), 1×1 project; residual when shapes agree."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.PReLU(hidden),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.PReLU(hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block, adding the input back when shapes agree."""
        out = self.conv(x)
        return x + out if self.residual else out


class MobileFaceNetCasia(nn.Module):
    """The network; takes ``[B, 3, 112, 96]`` normalised crops and returns ``[B, 128]`` raw embeddings."""

    def __init__(self, embedding_dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.conv1 = ConvBlock(3, 64, 3, 2, 1)
        self.dw_conv1 = ConvBlock(64, 64, 3, 1, 1, depthwise=True)
        blocks: list[nn.Module] = []
        cin = 64
        for expansion, cout, repeats, stride in BOTTLENECK_SETTINGS:
            for i in range(repeats):
                blocks.append(Bottleneck(cin, cout, stride if i == 0 else 1, expansion))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.conv2 = ConvBlock(cin, 512, 1, 1, 0)
        # Global depthwise conv over the final 7×6 map replaces pooling (GDConv).
        self.linear7 = ConvBlock(512, 512, (7, 6), 1, 0, depthwise=True, linear=True)
        self.linear1 = ConvBlock(512, embedding_dim, 1, 1, 0, linear=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed normalised crops."""
        x = self.dw_conv1(self.conv1(x))
        x = self.conv2(self.blocks(x))
        x = self.linear1(self.linear7(x))
        return x.flatten(1)


def load_mobilefacenet_casia(path: str | Path) -> MobileFaceNetCasia:
    """Load ``068.ckpt`` (a dict with ``net_state_dict``) strictly, in eval mode."""
    path = Path(path)
    if not path.exists():
        raise MissingWeightsError(f"MobileFaceNet-CASIA checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CorruptWeightsError(f"{path} is not a readable torch checkpoint: {err}") from err
    if not isinstance(checkpoint, dict) or "net_state_dict" not in checkpoint:
        raise CorruptWeightsError(f"{path} has no 'net_state_dict': not a MobileFaceNet_Pytorch checkpoint")
    model = MobileFaceNetCasia()
    missing, unexpected = _key_mismatch(model, checkpoint["net_state_dict"])
    if missing or unexpected:
        raise CorruptWeightsError(
            f"{path} does not match MobileFaceNet-CASIA: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    model.load_state_dict(checkpoint["net_state_dict"], strict=True)
    return model.eval()


def _key_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    ours = model.state_dict()
    missing = [k for k in ours if k not in state or state[k].shape != ours[k].shape]
    unexpected = [k for k in state if k not in ours]
    return missing, unexpected
