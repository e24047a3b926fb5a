"""StyleGAN2 generator (Karras et al., 2020) with the state-dict layout of rosinality's PyTorch port.

CLIP2Protect inverts faces into the FFHQ config-f generator of ``rosinality/stylegan2-pytorch``
(``stylegan2-ffhq-config-f.pt``, entry ``g_ema``), so every module, parameter and buffer here carries the name,
shape and registration order of that port: the official checkpoint loads with ``strict=True`` and the golden
parity data in ``$FACECLOAK_SHARED/golden/stylegan2`` reproduce to float precision.

Every operation is plain PyTorch; nothing is compiled:

* equalised learning rate: weights are stored unscaled and multiplied by ``lr_mul / sqrt(fan_in)`` at run time;
* fused leaky ReLU: ``leaky_relu(x + bias, 0.2) * sqrt(2)``;
* ``upfirdn2d``: zero-insertion upsampling, padding, then a *true* convolution with the loaded FIR kernel (the
  kernel is flipped before ``conv2d``, which cross-correlates);
* modulated convolution with demodulation, computed as one grouped convolution over the batch, so every sample
  has its own weight; an optional per-sample ``weight_delta`` lets batched pivot tuning give each image its own
  generator weights without copying the module;
* upsampling convolutions are a stride-2 transposed convolution followed by a blur; the RGB skip branch is
  upsampled by ``upfirdn2d`` with the same kind of kernel.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facecloak.errors import ConfigError, CorruptWeightsError, MissingWeightsError

# --- configuration ---------------------------------------------------------------------------------------------------

LEAKY_SLOPE = 0.2
"""Negative slope of StyleGAN2's leaky ReLU (rosinality ``fused_leaky_relu``)."""

ACTIVATION_GAIN = math.sqrt(2.0)
"""Gain after the leaky ReLU that keeps the signal variance (rosinality ``scale=2 ** 0.5``)."""

PIXELNORM_EPS = 1e-8
"""Epsilon of the mapping network's PixelNorm (rosinality ``PixelNorm``)."""

DEMOD_EPS = 1e-8
"""Epsilon of the demodulation ``rsqrt(sum w² + eps)`` (rosinality ``ModulatedConv2d``)."""

UP_FACTOR = 2
"""Every synthesis block doubles the resolution."""

BASE_RESOLUTION = 4
"""Resolution of the learned constant input."""

RGB_CHANNELS = 3

CONFIG_F_CHANNEL_BASE = 32768
"""Config-f widths: NVlabs stylegan2 ``fmap_base = 16 << 10`` over ``2 ** (log2(res) - 1)``, i.e. ``32768 / res``."""

CONFIG_F_CHANNEL_MAX = 512
"""``channel_max`` of config-f (``fmap_max``)."""


@dataclass(frozen=True)
class GeneratorConfig:
    """Shape of a StyleGAN2 generator; the defaults of the knobs reproduce config-f (FFHQ 1024 px)."""

    size: int
    style_dim: int
    n_mlp: int
    channel_base: int = CONFIG_F_CHANNEL_BASE
    channel_max: int = CONFIG_F_CHANNEL_MAX
    blur_kernel: tuple[int, ...] = (1, 3, 3, 1)
    lr_mlp: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "blur_kernel", tuple(int(t) for t in self.blur_kernel))
        if self.size < 2 * BASE_RESOLUTION or self.size & (self.size - 1):
            raise ConfigError(f"GeneratorConfig.size must be a power of two >= {2 * BASE_RESOLUTION}, got {self.size}")
        for name in ("style_dim", "channel_base", "channel_max"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"GeneratorConfig.{name} must be positive, got {getattr(self, name)}")
        if self.n_mlp < 0:
            raise ConfigError(f"GeneratorConfig.n_mlp must be >= 0, got {self.n_mlp}")
        if self.channel_base // self.size < 1:
            raise ConfigError(f"GeneratorConfig.channel_base={self.channel_base} leaves no channels at {self.size} px")
        if len(self.blur_kernel) < UP_FACTOR:
            raise ConfigError(f"GeneratorConfig.blur_kernel needs at least {UP_FACTOR} taps, got {self.blur_kernel}")

    def channels(self, resolution: int) -> int:
        """Feature maps at ``resolution``: ``min(channel_base // res, channel_max)`` (StyleGAN3's knobs)."""
        return min(self.channel_base // resolution, self.channel_max)

    @property
    def log_size(self) -> int:
        """``log2(size)``: the number of doublings from 1 px, which fixes the layer counts."""
        return int(math.log2(self.size))

    @property
    def num_layers(self) -> int:
        """Number of styled convolutions, i.e. of noise maps: one at 4 px, two per higher resolution."""
        return 2 * self.log_size - 3

    @property
    def n_latent(self) -> int:
        """Number of W+ slots: every styled conv plus the final ToRGB (RGB layers share the next conv's slot)."""
        return 2 * self.log_size - 2


# --- primitive operations --------------------------------------------------------------------------------------------


def make_fir_kernel(taps: Sequence[int], gain: float = 1.0) -> Tensor:
    """Separable 2-D FIR kernel normalised to sum ``gain``; rosinality stores it with the upsampling gain folded in."""
    k = torch.tensor(taps, dtype=torch.float32)
    k2 = k[None, :] * k[:, None]
    return k2 / k2.sum() * gain


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion, pad (negative = crop) and convolve every channel with ``kernel``.

    The convolution is a true one (kernel flipped), as in rosinality's ``upfirdn2d_native``; with non-symmetric
    kernels this matters. ``pad`` applies to both axes as (before, after).
    """
    B, C, H, W = x.shape
    if up > 1:
        x = x.reshape(B, C, H, 1, W, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(B, C, H * up, W * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    kh, kw = kernel.shape
    weight = torch.flip(kernel, [0, 1]).to(x.dtype).view(1, 1, kh, kw)
    out = F.conv2d(x.reshape(B * C, 1, x.shape[2], x.shape[3]), weight)
    return out.reshape(B, C, out.shape[2], out.shape[3])


def fused_leaky_relu(x: Tensor, bias: Tensor) -> Tensor:
    """Bias, leaky ReLU and gain in one expression (the plain path of rosinality's fused CUDA op)."""
    bias = bias.view(1, bias.shape[0], *([1] * (x.ndim - 2)))
    return F.leaky_relu(x + bias, negative_slope=LEAKY_SLOPE) * ACTIVATION_GAIN


class PixelNorm(nn.Module):
    """Normalise each latent to unit mean square before the mapping MLP."""

    def forward(self, x: Tensor) -> Tensor:
        """Scale ``x`` to unit root-mean-square along the feature axis."""
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + PIXELNORM_EPS)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: stored weight × ``lr_mul / sqrt(in_dim)``, bias × ``lr_mul``."""

    def __init__(
        self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activate: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        """Apply the run-time-scaled affine map (and the fused leaky ReLU for mapping layers)."""
        if self.activate:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, bias=self.bias * self.lr_mul)


class FusedLeakyReLU(nn.Module):
    """Per-channel bias followed by the scaled leaky ReLU (module name ``activate`` in the checkpoint)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        """Add the bias and activate."""
        return fused_leaky_relu(x, self.bias)


class FIRFilter(nn.Module):
    """A stored FIR kernel applied by ``upfirdn2d``: the ``Blur`` after up-convs and the ``Upsample`` of RGB skips.

    The kernel is a buffer (it is part of the checkpoint) and is always taken from the loaded state.
    """

    kernel: Tensor

    def __init__(self, taps: Sequence[int], pad: tuple[int, int], up: int = 1, gain: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("kernel", make_fir_kernel(taps, gain))
        self.pad = pad
        self.up = up

    def forward(self, x: Tensor) -> Tensor:
        """Filter (and optionally upsample) every channel."""
        return upfirdn2d(x, self.kernel, up=self.up, pad=self.pad)


def upsample_pads(kernel_taps: int, factor: int = UP_FACTOR) -> tuple[int, int]:
    """Padding that centres an ``upfirdn2d`` upsampling so the output is exactly ``factor`` times larger."""
    p = kernel_taps - factor
    return (p + 1) // 2 + factor - 1, p // 2


def blur_after_transposed_conv_pads(kernel_taps: int, conv_size: int, factor: int = UP_FACTOR) -> tuple[int, int]:
    """Padding of the blur after a stride-``factor`` transposed conv, so blur+conv output ``factor`` × the input."""
    p = (kernel_taps - factor) - (conv_size - 1)
    return (p + 1) // 2 + factor - 1, p // 2 + 1


# --- synthesis layers ------------------------------------------------------------------------------------------------


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution; each sample gets ``scale · (weight [+ delta_b]) · style_b``, then demodulation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_kernel: Sequence[int] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.upsample = upsample
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        if upsample:
            pads = blur_after_transposed_conv_pads(len(blur_kernel), kernel_size)
            self.blur = FIRFilter(blur_kernel, pads, gain=UP_FACTOR**2)
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)

    def forward(self, x: Tensor, style: Tensor, weight_delta: Tensor | None = None) -> Tensor:
        """Convolve ``x [B, in, H, W]`` with weights modulated by ``style [B, style_dim]``.

        ``weight_delta`` (``[B or 1, out, in, k, k]``, same units as the stored ``weight``) is added to the stored
        weight before modulation: it gives every sample its own fine-tuned generator in one batched call.
        """
        B, C, H, W = x.shape
        s = self.modulation(style).view(B, 1, C, 1, 1)
        base = self.weight if weight_delta is None else self.weight + weight_delta
        weight = self.scale * base * s  # [B, out, in, k, k]
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + DEMOD_EPS)
            weight = weight * demod.view(B, self.out_channels, 1, 1, 1)
        k = self.kernel_size
        x = x.reshape(1, B * C, H, W)  # the batch becomes conv groups: one weight per sample
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(B * C, self.out_channels, k, k)
            out = F.conv_transpose2d(x, weight, stride=UP_FACTOR, padding=0, groups=B)
            out = self.blur(out.reshape(B, self.out_channels, out.shape[2], out.shape[3]))
        else:
            weight = weight.reshape(B * self.out_channels, C, k, k)
            out = F.conv2d(x, weight, padding=self.padding, groups=B)
            out = out.reshape(B, self.out_channels, out.shape[2], out.shape[3])
        return out


class NoiseInjection(nn.Module):
    """Add per-pixel noise scaled by one learned scalar."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """Add ``weight · noise``; fresh N(0, 1) noise when none is given."""
        if noise is None:
            B, _, H, W = x.shape
            noise = x.new_empty(B, 1, H, W).normal_()
        return x + self.weight * noise


class ConstantInput(nn.Module):
    """The learned 4×4 constant that synthesis starts from."""

    def __init__(self, channels: int, size: int = BASE_RESOLUTION) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:
        """Repeat the constant for the batch."""
        return self.input.repeat(batch, 1, 1, 1)


class StyledConv(nn.Module):
    """Modulated conv, then noise (before the bias), then bias + leaky ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        upsample: bool = False,
        blur_kernel: Sequence[int] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channels, out_channels, kernel_size, style_dim, upsample=upsample, blur_kernel=blur_kernel
        )
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(
        self, x: Tensor, style: Tensor, noise: Tensor | None = None, weight_delta: Tensor | None = None
    ) -> Tensor:
        """One synthesis layer."""
        return self.activate(self.noise(self.conv(x, style, weight_delta), noise))


class ToRGB(nn.Module):
    """1×1 modulated conv to RGB (no demodulation) plus the upsampled RGB of the previous resolution."""

    def __init__(
        self, in_channels: int, style_dim: int, upsample: bool = True, blur_kernel: Sequence[int] = (1, 3, 3, 1)
    ) -> None:
        super().__init__()
        # Registration order (bias, upsample, conv) reproduces the checkpoint's key order.
        self.bias = nn.Parameter(torch.zeros(1, RGB_CHANNELS, 1, 1))
        if upsample:
            self.upsample = FIRFilter(blur_kernel, upsample_pads(len(blur_kernel)), up=UP_FACTOR, gain=UP_FACTOR**2)
        self.conv = ModulatedConv2d(in_channels, RGB_CHANNELS, 1, style_dim, demodulate=False)

    def forward(
        self, x: Tensor, style: Tensor, skip: Tensor | None = None, weight_delta: Tensor | None = None
    ) -> Tensor:
        """RGB at this resolution, accumulated onto the upsampled ``skip``."""
        out = self.conv(x, style, weight_delta) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


# --- generator -------------------------------------------------------------------------------------------------------


class Generator(nn.Module):
    """StyleGAN2 generator: mapping MLP ``style`` (z → w) and the synthesis network (W+ → image in ~[-1, 1])."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.size = c.size
        self.style_dim = c.style_dim
        self.log_size = c.log_size
        self.num_layers = c.num_layers
        self.n_latent = c.n_latent
        # Attribute order below is the checkpoint's key order: style, input, conv1, to_rgb1, convs, to_rgbs, noises.
        mlp = [EqualLinear(c.style_dim, c.style_dim, lr_mul=c.lr_mlp, activate=True) for _ in range(c.n_mlp)]
        self.style = nn.Sequential(PixelNorm(), *mlp)
        base = c.channels(BASE_RESOLUTION)
        self.input = ConstantInput(base)
        self.conv1 = StyledConv(base, base, 3, c.style_dim, blur_kernel=c.blur_kernel)
        self.to_rgb1 = ToRGB(base, c.style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_channels = base
        for log_res in range(3, c.log_size + 1):
            out_channels = c.channels(2**log_res)
            self.convs.append(
                StyledConv(in_channels, out_channels, 3, c.style_dim, upsample=True, blur_kernel=c.blur_kernel)
            )
            self.convs.append(StyledConv(out_channels, out_channels, 3, c.style_dim, blur_kernel=c.blur_kernel))
            self.to_rgbs.append(ToRGB(out_channels, c.style_dim, blur_kernel=c.blur_kernel))
            in_channels = out_channels
        self.noises = nn.Module()
        for i, shape in enumerate(self.noise_shapes):
            self.noises.register_buffer(f"noise_{i}", torch.randn(shape))

    @property
    def noise_shapes(self) -> list[tuple[int, int, int, int]]:
        """Shape ``[1, 1, r, r]`` of each styled conv's noise, in noise-list order (r = 4, 8, 8, 16, 16, …)."""
        return [(1, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2)) for i in range(self.num_layers)]

    def make_noise(
        self, batch: int = 1, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> list[Tensor]:
        """Fresh N(0, 1) noise maps ``[batch, 1, r, r]`` in layer order (reproducible with ``generator``)."""
        device = device if device is not None else self.input.input.device
        return [torch.randn((batch, *s[1:]), generator=generator).to(device) for s in self.noise_shapes]

    def buffer_noise(self) -> list[Tensor]:
        """The fixed noise maps stored in the checkpoint (``noises.noise_i``)."""
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

    def mapping(self, z: Tensor) -> Tensor:
        """Map Z codes ``[B, style_dim]`` to W codes ``[B, style_dim]``."""
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n_samples: int = 4096, generator: torch.Generator | None = None) -> Tensor:
        """Estimate the mean W (``[1, style_dim]``) for truncation when a checkpoint lacks ``latent_avg``."""
        z = torch.randn(n_samples, self.style_dim, generator=generator).to(self.input.input.device)
        return self.mapping(z).mean(0, keepdim=True)

    def synthesis(
        self,
        wplus: Tensor,
        noise: Sequence[Tensor | None] | None = None,
        weight_deltas: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """Render W+ codes ``[B, n_latent, style_dim]`` to images ``[B, 3, size, size]``.

        ``noise``: one map per layer (``[B or 1, 1, r, r]``; a ``None`` entry draws fresh noise); ``None`` uses the
        stored buffers, so the default is deterministic. ``weight_deltas`` maps a modulated conv's state-dict weight
        name (e.g. ``"convs.0.conv.weight"``) to a per-sample offset ``[B, out, in, k, k]`` of that weight.
        """
        if wplus.ndim != 3 or wplus.shape[1] != self.n_latent or wplus.shape[2] != self.style_dim:
            raise ValueError(
                f"wplus must be [B, {self.n_latent}, {self.style_dim}], got {list(wplus.shape)}; "
                "repeat a W code over the slots or call forward([w])"
            )
        noises = list(self.buffer_noise() if noise is None else noise)
        if len(noises) != self.num_layers:
            raise ValueError(f"noise must hold {self.num_layers} maps (one per styled conv), got {len(noises)}")
        deltas = dict(weight_deltas or {})
        if deltas:
            unknown = set(deltas) - {name for name, _ in self.named_parameters() if name.endswith("conv.weight")}
            if unknown:
                raise ValueError(f"weight_deltas names no modulated conv weight: {sorted(unknown)}")

        out = self.input(wplus.shape[0])
        out = self.conv1(out, wplus[:, 0], noises[0], deltas.get("conv1.conv.weight"))
        skip = self.to_rgb1(out, wplus[:, 1], weight_delta=deltas.get("to_rgb1.conv.weight"))
        for k, to_rgb in enumerate(self.to_rgbs):
            # Block k uses slots 1+2k (up-conv), 2+2k (conv) and 3+2k (ToRGB, shared with the next up-conv).
            i = 1 + 2 * k
            out = self.convs[2 * k](out, wplus[:, i], noises[i], deltas.get(f"convs.{2 * k}.conv.weight"))
            out = self.convs[2 * k + 1](
                out, wplus[:, i + 1], noises[i + 1], deltas.get(f"convs.{2 * k + 1}.conv.weight")
            )
            skip = to_rgb(out, wplus[:, i + 2], skip, deltas.get(f"to_rgbs.{k}.conv.weight"))
        return skip

    def forward(
        self,
        styles: Sequence[Tensor],
        input_is_latent: bool = False,
        noise: Sequence[Tensor | None] | None = None,
        randomize_noise: bool = True,
        truncation: float = 1.0,
        truncation_latent: Tensor | None = None,
        return_latents: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Rosinality's call, so code written against the reference (CLIP2Protect, e4e) runs unchanged.

        ``styles`` is a list with one code: ``[B, style_dim]`` (repeated to every slot) or ``[B, n_latent,
        style_dim]``; Z codes unless ``input_is_latent``. Noise: an explicit list wins; else fresh noise if
        ``randomize_noise``, else the stored buffers. Returns ``(image, W+ if return_latents else None)``; the
        CLIP2Protect copy also returns its per-layer style vectors, which nothing here needs. Style mixing (two
        codes) is not supported.
        """
        if len(styles) != 1:
            raise ValueError(f"styles must be a list with exactly one code tensor, got {len(styles)} (no style mixing)")
        style = styles[0] if input_is_latent else self.mapping(styles[0])
        if truncation < 1:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent (e.g. the checkpoint's latent_avg)")
            style = truncation_latent + truncation * (style - truncation_latent)
        latent = style.unsqueeze(1).repeat(1, self.n_latent, 1) if style.ndim < 3 else style
        if noise is None:
            noise = [None] * self.num_layers if randomize_noise else self.buffer_noise()
        image = self.synthesis(latent, noise)
        return image, (latent if return_latents else None)


# --- loading the official checkpoint ---------------------------------------------------------------------------------

_MAPPING_WEIGHT = re.compile(r"style\.(\d+)\.weight")
_NOISE_BUFFER = re.compile(r"noises\.noise_(\d+)")


def infer_generator_config(state_dict: Mapping[str, Tensor]) -> GeneratorConfig:
    """Read size, widths and MLP depth off a rosinality generator state dict (blur taps and lr_mlp: defaults)."""
    n_noise = sum(1 for k in state_dict if _NOISE_BUFFER.fullmatch(k))
    n_mlp = sum(1 for k in state_dict if _MAPPING_WEIGHT.fullmatch(k))
    if n_noise == 0 or "conv1.conv.modulation.weight" not in state_dict:
        raise CorruptWeightsError(
            "this is not a rosinality StyleGAN2 generator state dict (no 'noises.noise_i' buffers or "
            "'conv1.conv.modulation.weight'); expected the 'g_ema' entry of stylegan2-ffhq-config-f.pt"
        )
    log_size = (n_noise + 3) // 2
    size = 2**log_size
    try:
        style_dim = int(state_dict["conv1.conv.modulation.weight"].shape[1])
        widths = {BASE_RESOLUTION: int(state_dict["input.input"].shape[1])}
        for k in range(log_size - 2):
            widths[2 ** (k + 3)] = int(state_dict[f"convs.{2 * k}.conv.weight"].shape[1])
    except (KeyError, IndexError) as exc:
        raise CorruptWeightsError(
            f"generator state dict with {n_noise} noise maps ({size} px) lacks {exc}; it is truncated or not "
            "rosinality's layout"
        ) from exc
    channel_max = max(widths.values())
    narrower = [res * ch for res, ch in widths.items() if ch < channel_max]
    channel_base = narrower[0] if narrower else max(CONFIG_F_CHANNEL_BASE, channel_max * size)
    return GeneratorConfig(
        size=size, style_dim=style_dim, n_mlp=n_mlp, channel_base=channel_base, channel_max=channel_max
    )


def _load_checkpoint_dict(path: Path, what: str) -> dict:
    if not path.exists():
        raise MissingWeightsError(f"{what} not found at {path}; download it and pass its path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise CorruptWeightsError(
            f"cannot read {path} as a plain tensor checkpoint ({type(exc).__name__}: {exc}); "
            f"re-download {what} or convert it to a dict of tensors"
        ) from exc
    if not isinstance(ckpt, dict):
        raise CorruptWeightsError(f"{path} holds a {type(ckpt).__name__}, expected the dict layout of {what}")
    return ckpt


def load_generator_state(state_dict: Mapping[str, Tensor], config: GeneratorConfig | None = None) -> Generator:
    """Build a generator for ``state_dict`` (layout checked, strict) without a throw-away random init."""
    found = infer_generator_config(state_dict)
    config = config or found
    if found.size != config.size:
        raise CorruptWeightsError(
            f"the weights are for a {found.size} px generator ({found.num_layers} noise maps) but the config asks for "
            f"{config.size} px; pass config=None or GeneratorConfig(size={found.size}, ...)"
        )
    with torch.device("meta"):
        generator = Generator(config)
    try:
        generator.load_state_dict(dict(state_dict), strict=True, assign=True)
    except RuntimeError as exc:
        raise CorruptWeightsError(f"generator weights do not match {config} (they look like {found}): {exc}") from exc
    return generator.eval()


def load_stylegan2_checkpoint(
    path: str | Path, config: GeneratorConfig | None = None
) -> tuple[Generator, Tensor | None]:
    """Load ``g_ema`` and ``latent_avg`` from a rosinality checkpoint such as ``stylegan2-ffhq-config-f.pt``.

    The size (and widths) are inferred from the keys when ``config`` is None. ``g``/``d`` entries are ignored.
    Returns the generator in eval mode and the mean W ``[style_dim]`` (None if the file has none).
    """
    path = Path(path)
    ckpt = _load_checkpoint_dict(path, "the StyleGAN2 checkpoint")
    if "g_ema" not in ckpt:
        hint = ""
        if "state_dict" in ckpt:
            hint = " It looks like a pSp/e4e checkpoint, whose generator sits under 'state_dict' as 'decoder.*'."
        elif any(_NOISE_BUFFER.fullmatch(str(k)) for k in ckpt):
            hint = " It looks like a bare generator state dict: wrap it as {'g_ema': state_dict}."
        raise CorruptWeightsError(
            f"{path} has no 'g_ema' entry (found {sorted(map(str, ckpt))[:6]}); expected rosinality's layout "
            f"{{'g_ema', 'latent_avg'[, 'g', 'd']}}.{hint}"
        )
    generator = load_generator_state(ckpt["g_ema"], config)
    latent_avg = ckpt.get("latent_avg")
    return generator, latent_avg


def save_stylegan2_checkpoint(path: str | Path, generator: Generator, latent_avg: Tensor | None = None) -> None:
    """Write ``{'g_ema', 'latent_avg'}`` in rosinality's layout, e.g. a pivot-tuned generator."""
    ckpt: dict[str, Tensor | dict[str, Tensor]] = {"g_ema": generator.state_dict()}
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg
    torch.save(ckpt, Path(path))
