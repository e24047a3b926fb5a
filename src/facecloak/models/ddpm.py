"""The DDPM score network (ε-prediction UNet) of SDEdit / DiffusionCLIP / DiffAM, CelebA-HQ 256 layout.

Our own implementation of the reference ``DDPM(config)`` (``models/ddpm/diffusion.py`` in DiffAM and
DiffusionCLIP, from Ho et al.'s TF code). Its ``state_dict()`` has exactly the names, shapes and order of the
official ``celeba_hq.ckpt``, so that plain state_dict file loads strictly. The network only predicts the noise ε;
the noise schedule lives in :mod:`facecloak.diffusion.schedule` and the samplers in :mod:`facecloak.diffusion.ddim`.

Reading order: configuration, building blocks, the UNet, then saving/loading. Constructor arguments travel with
the weights (``save_pretrained`` writes ``config.json`` next to ``model.safetensors``, as diffusers does).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from facecloak.errors import ConfigError, CorruptWeightsError, MissingWeightsError

# --- configuration ---------------------------------------------------------------------------------------------------

GROUPNORM_GROUPS = 32
"""Groups of every GroupNorm (reference ``Normalize``); channel counts must be multiples of it."""

GROUPNORM_EPS = 1e-6
"""GroupNorm epsilon of the reference (not PyTorch's default 1e-5)."""

TEMB_MULT = 4
"""The timestep-embedding MLP is ``TEMB_MULT * ch`` wide (reference ``self.temb_ch = self.ch * 4``)."""

MAX_PERIOD = 10000.0
"""Longest period of the sinusoidal timestep embedding (Transformer positional encoding)."""

CONFIG_NAME = "config.json"
"""File name of the saved constructor arguments (as in diffusers)."""

WEIGHTS_NAME = "model.safetensors"
"""File name of the saved weights (as in diffusers)."""

REFERENCE_NON_NETWORK_KEYS = frozenset({"type", "var_type", "ema_rate", "ema"})
"""Keys of the reference yml ``model:`` section that configure training or sampling, not the network's layout."""


@dataclass(frozen=True)
class DDPMConfig:
    """Layout of the UNet; the defaults are ``configs/celeba.yml`` of SDEdit / DiffusionCLIP / DiffAM."""

    ch: int = 128
    out_ch: int = 3
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    in_channels: int = 3
    resolution: int = 256
    resamp_with_conv: bool = True

    def __post_init__(self) -> None:
        # Lists from YAML/JSON become tuples so that configs stay hashable and compare equal.
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        if self.ch <= 0 or self.ch % GROUPNORM_GROUPS:
            raise ConfigError(f"ddpm.ch={self.ch} must be a positive multiple of {GROUPNORM_GROUPS} (GroupNorm groups)")
        if not self.ch_mult or min(self.ch_mult) <= 0:
            raise ConfigError(f"ddpm.ch_mult={list(self.ch_mult)} must be a non-empty list of positive integers")
        if self.num_res_blocks < 1:
            raise ConfigError(f"ddpm.num_res_blocks={self.num_res_blocks} must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"ddpm.dropout={self.dropout} must be in [0, 1)")
        if self.in_channels < 1 or self.out_ch < 1:
            raise ConfigError(f"ddpm.in_channels={self.in_channels} and ddpm.out_ch={self.out_ch} must be positive")
        factor = 2 ** (len(self.ch_mult) - 1)
        if self.resolution <= 0 or self.resolution % factor:
            raise ConfigError(
                f"ddpm.resolution={self.resolution} must be a positive multiple of {factor} "
                f"so that {len(self.ch_mult)} levels can halve it"
            )
        unreachable = sorted(set(self.attn_resolutions) - set(self.level_resolutions))
        if unreachable:
            raise ConfigError(
                f"ddpm.attn_resolutions has {unreachable}, which no level has; "
                f"the levels are {list(self.level_resolutions)}"
            )

    @property
    def level_resolutions(self) -> tuple[int, ...]:
        """Spatial size at each level, full resolution first, so attention placement can be checked."""
        return tuple(self.resolution // 2**level for level in range(len(self.ch_mult)))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict, so the config can be saved next to the weights."""
        out = asdict(self)
        out["ch_mult"] = list(self.ch_mult)
        out["attn_resolutions"] = list(self.attn_resolutions)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DDPMConfig:
        """Rebuild a config saved by :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown DDPM config keys {unknown}; known keys are {sorted(known)}")
        return cls(**dict(values))

    @classmethod
    def from_reference(cls, model: Mapping[str, Any], image_size: int) -> DDPMConfig:
        """Read the ``model:`` section and ``data.image_size`` of a SDEdit/DiffusionCLIP yml, e.g. ``celeba.yml``."""
        if model.get("var_type", "fixedsmall") != "fixedsmall":
            raise ConfigError(f"model.var_type={model['var_type']!r}: only 'fixedsmall' (ε-only network) is supported")
        network = {k: v for k, v in model.items() if k not in REFERENCE_NON_NETWORK_KEYS}
        return cls.from_dict({**network, "resolution": image_size})


CELEBA_HQ_256 = DDPMConfig(
    ch=128,
    out_ch=3,
    ch_mult=(1, 1, 2, 2, 4, 4),
    num_res_blocks=2,
    attn_resolutions=(16,),
    dropout=0.0,
    in_channels=3,
    resolution=256,
    resamp_with_conv=True,
)
"""The layout of ``celeba_hq.ckpt``: ``configs/celeba.yml`` (model section, ``data.image_size: 256``)."""


# --- building blocks -------------------------------------------------------------------------------------------------


def swish(x: torch.Tensor) -> torch.Tensor:
    """The reference nonlinearity ``x * sigmoid(x)`` (SiLU)."""
    return F.silu(x)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm as the reference ``Normalize`` builds it (32 groups, eps 1e-6, affine)."""
    return nn.GroupNorm(GROUPNORM_GROUPS, channels, eps=GROUPNORM_EPS, affine=True)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps: ``[sin | cos]`` with periods up to ``MAX_PERIOD``.

    The frequencies are ``exp(-ln(MAX_PERIOD) * k / (half - 1))`` and the sine half comes first, as in the
    reference; computed in float32 exactly as it does, so outputs match bit for bit.
    """
    half = dim // 2
    step = math.log(MAX_PERIOD) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -step)
    angles = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(emb, (0, dim % 2))


class TimestepMLP(nn.Module):
    """Timestep features → embedding fed to every residual block (reference ``temb.dense``)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.ch = ch
        self.dense = nn.ModuleList([nn.Linear(ch, TEMB_MULT * ch), nn.Linear(TEMB_MULT * ch, TEMB_MULT * ch)])

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Embed timesteps ``[B]`` (float or int) into ``[B, 4·ch]``, in the dtype of the images."""
        first, second = self.dense
        return second(swish(first(timestep_embedding(t, self.ch).to(dtype))))


class ResnetBlock(nn.Module):
    """Pre-activation residual block with the timestep embedding added after the first conv.

    A 1×1 ``nin_shortcut`` exists only when the channel count changes (reference ``conv_shortcut=False``).
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Residual update of ``x`` conditioned on the timestep embedding."""
        h = self.conv1(swish(self.norm1(x)))
        h = h + self.temb_proj(swish(temb))[:, :, None, None]
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, 1×1-conv q/k/v, scale C^-½, residual output."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix information across the whole feature map."""
        B, C, H, W = x.shape
        h = self.norm(x)
        # [B, C, H, W] -> [B, HW, C]; SDPA's default scale 1/sqrt(C) is the reference's int(c)**-0.5.
        q, k, v = (proj(h).reshape(B, C, H * W).transpose(1, 2) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(out.transpose(1, 2).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Halve the resolution: pad right/bottom by one, then a 3×3 stride-2 conv without padding (or 2×2 average)."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Asymmetric padding reproduces TF's 'SAME' stride-2 conv of the original DDPM."""
        if self.conv is None:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour ×2, then (optionally) a 3×3 conv."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample then smooth."""
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class DownLevel(nn.Module):
    """One encoder level: residual blocks (each followed by attention at attention resolutions), then downsampling."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        num_blocks: int,
        temb_ch: int,
        dropout: float,
        attn: bool,
        down: Downsample | None,
    ) -> None:
        super().__init__()
        channels = [in_ch] + [out_ch] * num_blocks
        self.block = nn.ModuleList(ResnetBlock(c, out_ch, temb_ch, dropout) for c in channels[:-1])
        self.attn = nn.ModuleList(AttnBlock(out_ch) for _ in range(num_blocks) if attn)
        self.downsample = down

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> list[torch.Tensor]:
        """Return every intermediate feature map: they are the skip connections of the decoder."""
        skips = []
        for i, block in enumerate(self.block):
            h = block(h, temb)
            if self.attn:
                h = self.attn[i](h)
            skips.append(h)
        if self.downsample is not None:
            skips.append(self.downsample(h))
        return skips


class MidBlock(nn.Module):
    """Bottleneck at the coarsest resolution: residual block, attention, residual block."""

    def __init__(self, channels: int, temb_ch: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, temb_ch, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, temb_ch, dropout)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Process the coarsest features globally."""
        return self.block_2(self.attn_1(self.block_1(h, temb)), temb)


class UpLevel(nn.Module):
    """One decoder level: ``num_res_blocks + 1`` residual blocks on ``cat([h, skip])``, attention, upsampling."""

    def __init__(
        self,
        in_ch: int,
        skip_chs: list[int],
        out_ch: int,
        temb_ch: int,
        dropout: float,
        attn: bool,
        up: Upsample | None,
    ) -> None:
        super().__init__()
        inputs = [in_ch] + [out_ch] * (len(skip_chs) - 1)
        self.block = nn.ModuleList(
            ResnetBlock(c + s, out_ch, temb_ch, dropout) for c, s in zip(inputs, skip_chs, strict=True)
        )
        self.attn = nn.ModuleList(AttnBlock(out_ch) for _ in skip_chs if attn)
        self.upsample = up

    def forward(self, h: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor) -> torch.Tensor:
        """Consume (pop) this level's skip connections from the end of ``skips``."""
        for i, block in enumerate(self.block):
            h = block(torch.cat([h, skips.pop()], dim=1), temb)
            if self.attn:
                h = self.attn[i](h)
        return h if self.upsample is None else self.upsample(h)


# --- the UNet --------------------------------------------------------------------------------------------------------


class DDPMUNet(nn.Module):
    """ε-prediction UNet ``eps = model(x_t, t)`` with the state-dict layout of the reference ``DDPM(config)``.

    ``x_t`` is ``[B, in_channels, resolution, resolution]`` in data space (RGB in [-1, 1] for CelebA-HQ) and ``t``
    holds one timestep per image (float or integer, 0-based); a scalar ``t`` applies to the whole batch.
    """

    def __init__(self, config: DDPMConfig) -> None:
        super().__init__()
        self.config = config
        ch, mult, n_blocks = config.ch, config.ch_mult, config.num_res_blocks
        temb_ch = TEMB_MULT * ch
        level_ch = [ch * m for m in mult]
        level_in = [ch, *level_ch[:-1]]  # reference in_ch_mult = (1,) + ch_mult
        last = len(mult) - 1
        attends = [r in config.attn_resolutions for r in config.level_resolutions]

        self.temb = TimestepMLP(ch)
        self.conv_in = nn.Conv2d(config.in_channels, ch, kernel_size=3, padding=1)
        self.down = nn.ModuleList(
            DownLevel(
                level_in[i],
                level_ch[i],
                n_blocks,
                temb_ch,
                config.dropout,
                attends[i],
                Downsample(level_ch[i], config.resamp_with_conv) if i != last else None,
            )
            for i in range(len(mult))
        )
        self.mid = MidBlock(level_ch[last], temb_ch, config.dropout)
        # Level i receives the output of level i+1 (or of the mid block) and the skips that down level i produced:
        # n_blocks maps of level_ch[i] and, last popped, the input of that level (level_in[i] channels).
        self.up = nn.ModuleList(
            UpLevel(
                level_ch[min(i + 1, last)],
                [level_ch[i]] * n_blocks + [level_in[i]],
                level_ch[i],
                temb_ch,
                config.dropout,
                attends[i],
                Upsample(level_ch[i], config.resamp_with_conv) if i != 0 else None,
            )
            for i in range(len(mult))
        )
        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, config.out_ch, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Predict the noise in ``x_t`` at timestep ``t``."""
        t = self._check_inputs(x, t)
        temb = self.temb(t, x.dtype)
        skips = [self.conv_in(x)]
        for level in self.down:
            skips.extend(level(skips[-1], temb))
        h = self.mid(skips[-1], temb)
        for level in reversed(self.up):
            h = level(h, skips, temb)
        return self.conv_out(swish(self.norm_out(h)))

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Reject wrong shapes with a message that says what to do; broadcast a scalar timestep."""
        c, r = self.config.in_channels, self.config.resolution
        if x.ndim != 4 or x.shape[1] != c or x.shape[2] != r or x.shape[3] != r:
            raise ValueError(
                f"DDPMUNet expects images of shape [B, {c}, {r}, {r}] (config.resolution={r}), got {list(x.shape)}; "
                f"resize/crop the images to {r}×{r} or build the network with a matching config"
            )
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(
                f"timesteps must be a scalar or have shape [{x.shape[0]}] (one per image), got {list(t.shape)}"
            )
        return t

    # --- saving / loading (diffusers style: the config travels with the weights) ---

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` so the network can be rebuilt without code changes."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> DDPMUNet:
        """Rebuild a network saved by :meth:`save_pretrained` (strict load, eval mode, CPU)."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise MissingWeightsError(f"{path} not found; expected a folder written by DDPMUNet.save_pretrained")
        config = DDPMConfig.from_dict(json.loads(config_path.read_text()))
        try:
            state = load_file(str(weights_path))
        except Exception as exc:  # safetensors raises its own error types for truncated/garbled files
            raise CorruptWeightsError(f"cannot read {weights_path}: {exc}; re-save it with save_pretrained") from exc
        return build_from_state_dict(config, state, source=weights_path)


def build_from_state_dict(config: DDPMConfig, state: Mapping[str, Any], source: str | Path) -> DDPMUNet:
    """Build the network for ``config`` and load ``state`` strictly, explaining any layout mismatch.

    The module is created on the meta device and materialised uninitialised, since every value is overwritten:
    this skips the random initialisation of 114 M parameters.
    """
    with torch.device("meta"):
        model = DDPMUNet(config)
    model = model.to_empty(device="cpu")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    non_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        k for k in set(expected) & set(state) if k not in non_tensors and tuple(state[k].shape) != expected[k]
    )
    if non_tensors or missing or unexpected or wrong_shape:
        raise CorruptWeightsError(
            f"{source} does not have the DDPM layout of config {config.to_dict()}: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}, {len(wrong_shape)} shape mismatches "
            f"{wrong_shape[:5]}, {len(non_tensors)} non-tensor entries {non_tensors[:5]}; it must be a plain "
            "state_dict of DDPM(config) (no 'module.' prefix, no wrapper dict) — check the file and the config"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_celebahq_checkpoint(path: str | Path, config: DDPMConfig | None = None) -> DDPMUNet:
    """Load the official ``celeba_hq.ckpt`` (a plain state_dict) into our UNet, strictly, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"DDPM checkpoint {path} not found; run `facecloak weights fetch ddpm_celebahq_256` or download "
            "celeba_hq.ckpt (SDEdit/DiffusionCLIP release) and pass its path"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in several types; all mean the same to the user
        raise CorruptWeightsError(f"cannot read {path} as a weights-only state_dict: {exc}; re-download it") from exc
    if not isinstance(state, Mapping):
        raise CorruptWeightsError(f"{path} holds a {type(state).__name__}, not a state_dict; re-download it")
    return build_from_state_dict(config or CELEBA_HQ_256, state, source=path)
