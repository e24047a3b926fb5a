"""Encoder4Editing (e4e, Tov et al., 2021): invert an aligned face into StyleGAN2's W+ space.

CLIP2Protect starts from the e4e inversion of each photo (``e4e_ffhq_encode.pt``), so the module names, shapes and
order here equal the ``encoder.*`` entries of that checkpoint (prefix stripped) and the official file loads with
``strict=True``. The forward pass matches ``models/encoders/psp_encoders.py::Encoder4Editing`` at the "Inference"
progressive stage (every per-slot delta added), and :meth:`Encoder4Editing.encode` adds ``latent_avg`` as pSp does
with ``start_from_latent_avg``.

Structure: an IR-SE-50 body (shared units from :mod:`facecloak.models.fr.irse`) tapped at the end of its last three
stages; a two-level feature pyramid (bilinear upsampling, ``align_corners=True``, plus 1×1 lateral convs); one
``GradualStyleBlock`` per W+ slot. Slot 0 gives the base code ``w0`` copied to every slot; slots 1… add deltas read
from the coarse (16 px), middle (32 px) or fine (64 px) pyramid level.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facecloak.errors import CorruptWeightsError, MissingWeightsError
from facecloak.models.fr.irse import STAGE_DEPTHS, STEM_CHANNELS, UNITS_PER_STAGE, IRUnit
from facecloak.models.stylegan2 import EqualLinear

INPUT_SIZE = 256
"""e4e reads FFHQ-aligned faces resized to 256×256, RGB in [-1, 1] (encoder4editing ``transforms_config``)."""

STYLE_DIM = 512
"""Width of W for the FFHQ StyleGAN2 that e4e was trained against."""

BODY_DEPTH = 50
"""IR-SE-50 body (``Encoder4Editing(50, 'ir_se', opts)``)."""

COARSE_END = 3
"""Slots ``< 3`` read the 16 px features (reference ``coarse_ind``)."""

MIDDLE_END = 7
"""Slots ``3 … 6`` read the 32 px pyramid level, slots ``>= 7`` the 64 px one (reference ``middle_ind``)."""

PYRAMID_RESOLUTIONS = (16, 32, 64)
"""Spatial size of the coarse, middle and fine features for a 256 px input."""

STYLE_BLOCK_LEAKY_SLOPE = 0.01
"""``nn.LeakyReLU()`` default slope, which the style blocks use (not StyleGAN's 0.2)."""

EXPECTED_ENCODER_TYPE = "Encoder4Editing"
"""``opts['encoder_type']`` of checkpoints this module can load."""


def stage_end_units(depth: int = BODY_DEPTH) -> tuple[int, ...]:
    """Index of the last body unit of each stage (6, 20, 23 for IR-SE-50): where e4e taps its features."""
    ends, total = [], 0
    for units in UNITS_PER_STAGE[depth]:
        total += units
        ends.append(total - 1)
    return tuple(ends)


def style_count(stylegan_size: int) -> int:
    """Number of W+ slots of a StyleGAN2 generator of this output size (18 for 1024 px)."""
    return 2 * int(math.log2(stylegan_size)) - 2


class GradualStyleBlock(nn.Module):
    """Stride-2 3×3 convs (each followed by LeakyReLU 0.01) down to 1×1, then an equalised linear layer."""

    def __init__(self, channels: int, spatial: int) -> None:
        super().__init__()
        self.channels = channels
        layers: list[nn.Module] = []
        for _ in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.LeakyReLU(STYLE_BLOCK_LEAKY_SLOPE)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(channels, channels, lr_mul=1.0)

    def forward(self, x: Tensor) -> Tensor:
        """Reduce a feature map ``[B, C, s, s]`` to one style vector ``[B, C]``."""
        return self.linear(self.convs(x).reshape(-1, self.channels))


def upsample_add(x: Tensor, lateral: Tensor) -> Tensor:
    """One feature-pyramid step: bilinear upsampling (``align_corners=True``) of ``x`` plus the lateral features."""
    return F.interpolate(x, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral


class Encoder4Editing(nn.Module):
    """e4e encoder: ``[B, 3, 256, 256]`` in [-1, 1] → W+ offsets ``[B, n_styles, 512]`` (before ``latent_avg``)."""

    def __init__(self, stylegan_size: int = 1024) -> None:
        super().__init__()
        self.n_styles = style_count(stylegan_size)
        # Attribute order (input_layer, body, styles, latlayer1, latlayer2) is the checkpoint's key order.
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, STEM_CHANNELS, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(STEM_CHANNELS),
            nn.PReLU(STEM_CHANNELS),
        )
        units: list[nn.Module] = []
        in_channels = STEM_CHANNELS
        for depth, n_units in zip(STAGE_DEPTHS, UNITS_PER_STAGE[BODY_DEPTH]):
            for index in range(n_units):
                units.append(IRUnit(in_channels, depth, stride=2 if index == 0 else 1, use_se=True))
                in_channels = depth
        self.body = nn.Sequential(*units)
        coarse, middle, fine = PYRAMID_RESOLUTIONS
        self.styles = nn.ModuleList(
            GradualStyleBlock(STYLE_DIM, coarse if i < COARSE_END else middle if i < MIDDLE_END else fine)
            for i in range(self.n_styles)
        )
        fine_ch, middle_ch = STAGE_DEPTHS[1], STAGE_DEPTHS[2]
        self.latlayer1 = nn.Conv2d(middle_ch, STYLE_DIM, kernel_size=1)
        self.latlayer2 = nn.Conv2d(fine_ch, STYLE_DIM, kernel_size=1)
        self.taps = stage_end_units()[1:]
        # pSp's start-from-latent-avg offset; not part of the encoder's state dict (the checkpoint stores it apart).
        self.register_buffer("latent_avg", torch.zeros(self.n_styles, STYLE_DIM), persistent=False)

    def features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Body features at the end of stages 2, 3, 4: fine (128 ch, 64 px), middle (256, 32), coarse (512, 16)."""
        x = self.input_layer(x)
        tapped = []
        for index, unit in enumerate(self.body):
            x = unit(x)
            if index in self.taps:
                tapped.append(x)
        fine, middle, coarse = tapped
        return fine, middle, coarse

    def forward(self, x: Tensor) -> Tensor:
        """W+ codes relative to ``latent_avg``: ``w0`` in every slot plus per-slot deltas."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(
                f"e4e expects aligned faces [B, 3, {INPUT_SIZE}, {INPUT_SIZE}] in [-1, 1], got {list(x.shape)}; "
                "resize the aligned crop first"
            )
        c1, c2, c3 = self.features(x)
        p2 = upsample_add(c3, self.latlayer1(c2))
        p1 = upsample_add(p2, self.latlayer2(c1))
        w0 = self.styles[0](c3).unsqueeze(1)
        levels = [c3 if i < COARSE_END else p2 if i < MIDDLE_END else p1 for i in range(1, self.n_styles)]
        deltas = torch.stack([block(f) for block, f in zip(self.styles[1:], levels)], dim=1)
        return torch.cat([w0, w0 + deltas], dim=1)

    def encode(self, x: Tensor) -> Tensor:
        """W+ codes ready for the generator (``input_is_latent=True``): ``forward(x) + latent_avg`` as in pSp."""
        return self(x) + self.latent_avg

    def set_latent_avg(self, latent_avg: Tensor) -> None:
        """Install the checkpoint's mean W (``[n_styles, 512]``, or ``[512]`` repeated per slot)."""
        if latent_avg.shape[-1] != STYLE_DIM or latent_avg.ndim not in (1, 2):
            raise CorruptWeightsError(
                f"latent_avg must be [{self.n_styles}, {STYLE_DIM}], got {list(latent_avg.shape)}"
            )
        self.latent_avg = latent_avg.detach().to(torch.float32).expand(self.n_styles, STYLE_DIM).clone()


def load_e4e_checkpoint(path: str | Path) -> tuple[Encoder4Editing, Tensor]:
    """Load the encoder and ``latent_avg`` of ``e4e_ffhq_encode.pt`` (strict; the ``decoder.*`` part is skipped).

    Returns the encoder in eval mode (its ``encode`` already adds ``latent_avg``) and ``latent_avg`` itself.
    """
    path = Path(path)
    if not path.exists():
        raise MissingWeightsError(f"e4e checkpoint not found at {path}; download e4e_ffhq_encode.pt and pass its path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise CorruptWeightsError(
            f"cannot read {path} as a plain tensor checkpoint ({type(exc).__name__}: {exc}); re-download "
            "e4e_ffhq_encode.pt (its 'opts' must be a plain dict)"
        ) from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        found = sorted(map(str, ckpt))[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CorruptWeightsError(
            f"{path} is not a pSp/e4e checkpoint (found {found}); expected a dict with 'state_dict', "
            "'latent_avg' and 'opts' like e4e_ffhq_encode.pt"
        )
    opts = ckpt.get("opts") or {}
    encoder_type = opts.get("encoder_type", EXPECTED_ENCODER_TYPE)
    if encoder_type != EXPECTED_ENCODER_TYPE:
        raise CorruptWeightsError(
            f"{path} holds a {encoder_type!r} encoder; only {EXPECTED_ENCODER_TYPE} (e4e) checkpoints are supported"
        )
    prefix = "encoder."
    state = {k.removeprefix(prefix): v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise CorruptWeightsError(f"{path} has no 'encoder.*' entries in its state_dict")
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is None:
        raise CorruptWeightsError(
            f"{path} has no 'latent_avg'; e4e codes are offsets from it (the official file stores it beside "
            "'state_dict')"
        )
    with torch.device("meta"):
        encoder = Encoder4Editing(stylegan_size=int(opts.get("stylegan_size", 1024)))
    try:
        encoder.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise CorruptWeightsError(f"{path}: encoder weights do not match Encoder4Editing: {exc}") from exc
    encoder.set_latent_avg(latent_avg)
    return encoder.eval(), encoder.latent_avg
