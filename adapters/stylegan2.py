"""StyleGAN2 generator in the rosinality layout, rendering W+ latents in pure PyTorch.

Parameter and buffer names follow rosinality's ``stylegan2-pytorch`` ``Generator`` (the
``decoder.*`` half of e4e's ``e4e_ffhq_encode.pt``): ``style.N`` mapping layers,
``input.input``, ``conv1``/``to_rgb1``, ``convs.N``/``to_rgbs.N`` with their ``blur.kernel`` and
``upsample.kernel`` buffers, and the fixed noise maps ``noises.noise_N``. The fused leaky ReLU
and ``upfirdn2d`` are plain PyTorch (no compiled ops), so it runs on any device.

:meth:`StyleGAN2Generator.forward` renders a W+ ``[batch, n_latent, style_dim]`` (18 x 512 at
1024 px) to images in ``[-1, 1]``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

#: The blur kernel of StyleGAN2's up-sampling (a binomial filter).
BLUR_KERNEL = (1, 3, 3, 1)
#: Negative slope and gain of StyleGAN2's fused leaky ReLU.
LRELU_SLOPE, LRELU_GAIN = 0.2, math.sqrt(2)
#: Channels per resolution before the channel multiplier applies (rosinality's table).
_MAX_CHANNELS = 512
_BASE_CHANNELS = {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}


@dataclass(frozen=True)
class StyleGAN2Config:
    """A generator's shape: output ``size``, widths per resolution, mapping network.

    Attributes:
        size: output side in pixels, a power of two >= 8.
        channels: feature channels at 4, 8, ... ``size`` px.
        style_dim: width of W (512 published).
        n_mlp: mapping layers (8 published).
        lr_mlp: the mapping's learning-rate multiplier (0.01), part of its weight scaling.
    """

    size: int
    channels: tuple[int, ...]
    style_dim: int = 512
    n_mlp: int = 8
    lr_mlp: float = 0.01

    def __post_init__(self):
        if self.size < 8 or self.size & (self.size - 1):
            raise ValueError(f"StyleGAN2 size must be a power of two >= 8, got {self.size}")
        if len(self.channels) != self.log_size - 1:
            raise ValueError(
                f"a {self.size}-px generator needs {self.log_size - 1} channel widths "
                f"(4 px to {self.size} px), got {len(self.channels)}"
            )

    @classmethod
    def published(cls, size: int = 1024, channel_multiplier: int = 2) -> StyleGAN2Config:
        """The rosinality/NVIDIA widths: 512 up to 32 px, then ``base * channel_multiplier``."""
        log_size = int(math.log2(size))
        channels = tuple(
            _BASE_CHANNELS.get(2**res, _MAX_CHANNELS // channel_multiplier) * channel_multiplier
            for res in range(2, log_size + 1)
        )
        return cls(size=size, channels=channels)

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        """W+ rows: two per resolution from 8 px, plus two at 4 px (18 at 1024 px)."""
        return self.log_size * 2 - 2

    @property
    def num_layers(self) -> int:
        """Styled convolutions, one noise map each."""
        return (self.log_size - 2) * 2 + 1

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> StyleGAN2Config:
        """Read the shape from a rosinality state dict (``decoder.`` prefix removed)."""
        missing = [k for k in ("input.input", "style.1.weight") if k not in state]
        if missing:
            raise KeyError(f"not a rosinality StyleGAN2 generator: no {', '.join(missing)}")
        n_mlp = sum(1 for k in state if k.startswith("style.") and k.endswith(".weight"))
        n_convs = sum(1 for k in state if k.startswith("convs.") and k.endswith(".conv.weight"))
        channels = [state["input.input"].shape[1]]
        channels += [state[f"convs.{i}.conv.weight"].shape[1] for i in range(1, n_convs, 2)]
        return cls(
            size=2 ** (n_convs // 2 + 2),
            channels=tuple(int(c) for c in channels),
            style_dim=int(state["style.1.weight"].shape[1]),
            n_mlp=n_mlp,
        )


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``leaky_relu(x + bias) * sqrt(2)``, the bias on dimension 1."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), LRELU_SLOPE) * LRELU_GAIN


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, *, up: int = 1, pad: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """Up-sample by zero insertion, pad, and filter each channel with ``kernel`` (FIR).

    The kernel is applied as a true convolution (flipped), as NVIDIA's ``upfirdn2d`` does;
    ``pad`` is (before, after) on both axes.
    """
    batch, channels, height, width = x.shape
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(batch, channels, height * up, width * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = torch.flip(kernel, (0, 1)).to(x.dtype)
    weight = weight.expand(channels, 1, *kernel.shape)
    return F.conv2d(x, weight, groups=channels)


def make_kernel(taps: Sequence[float]) -> torch.Tensor:
    """The separable 2-D FIR kernel of ``taps``, normalised to sum 1."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (keys ``weight``, ``bias``)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: bool = False,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class Blur(nn.Module):
    """FIR filter after a transposed convolution (buffer ``kernel``)."""

    def __init__(self, pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        self.register_buffer("kernel", make_kernel(BLUR_KERNEL) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR up-sampling of the RGB skip connection (buffer ``kernel``)."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.register_buffer("kernel", make_kernel(BLUR_KERNEL) * factor**2)
        self.factor = factor
        p = len(BLUR_KERNEL) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated (and optionally demodulated) convolution, optionally 2x up-sampling.

    Keys: ``weight`` ``[1, out, in, k, k]``, ``modulation.{weight,bias}`` and, when
    up-sampling, ``blur.kernel``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        *,
        demodulate: bool = True,
        upsample: bool = False,
    ):
        super().__init__()
        self.weight = nn.Parameter(
            torch.randn(1, out_channels, in_channels, kernel_size, kernel_size)
        )
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.demodulate = demodulate
        self.upsample = upsample
        if upsample:
            factor = 2
            p = (len(BLUR_KERNEL) - factor) - (kernel_size - 1)
            self.blur = Blur(((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        batch, in_channels, height, width = x.shape
        _, out_channels, _, k, _ = self.weight.shape
        style = self.modulation(style).view(batch, 1, in_channels, 1, 1)
        weight = self.scale * self.weight * style
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4)) + 1e-8)
            weight = weight * demod.view(batch, out_channels, 1, 1, 1)
        x = x.reshape(1, batch * in_channels, height, width)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(batch * in_channels, out_channels, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, groups=batch)
            out = out.view(batch, out_channels, *out.shape[2:])
            return self.blur(out)
        weight = weight.view(batch * out_channels, in_channels, k, k)
        out = F.conv2d(x, weight, padding=self.padding, groups=batch)
        return out.view(batch, out_channels, *out.shape[2:])


class NoiseInjection(nn.Module):
    """Adds per-pixel noise with a learned strength (key ``weight`` ``[1]``)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.weight * noise


class FusedLeakyReLU(nn.Module):
    """Bias plus scaled leaky ReLU (key ``bias``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class StyledConv(nn.Module):
    """Modulated 3x3 convolution, noise, activation (keys ``conv``, ``noise``, ``activate``)."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int, *, upsample: bool):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    """1x1 modulated projection to RGB plus the up-sampled skip (keys ``conv``, ``bias``,
    ``upsample.kernel``)."""

    def __init__(self, in_channels: int, style_dim: int, *, upsample: bool):
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(
        self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None
    ) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class ConstantInput(nn.Module):
    """The learned 4 x 4 input (key ``input``)."""

    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyleGAN2Generator(nn.Module):
    """rosinality's StyleGAN2 ``Generator``, for rendering W+ latents.

    Args:
        config: the shape; :meth:`StyleGAN2Config.published` for FFHQ 1024 px.
    """

    def __init__(self, config: StyleGAN2Config):
        super().__init__()
        self.config = config
        dim, channels = config.style_dim, config.channels
        self.style = nn.Sequential(
            PixelNorm(),
            *(
                EqualLinear(dim, dim, lr_mul=config.lr_mlp, activation=True)
                for _ in range(config.n_mlp)
            ),
        )
        self.input = ConstantInput(channels[0])
        self.conv1 = StyledConv(channels[0], channels[0], dim, upsample=False)
        self.to_rgb1 = ToRGB(channels[0], dim, upsample=False)
        self.noises = nn.Module()
        for index in range(config.num_layers):
            res = 2 ** ((index + 5) // 2)
            self.noises.register_buffer(f"noise_{index}", torch.randn(1, 1, res, res))
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for in_channels, out_channels in itertools.pairwise(channels):
            self.convs.append(StyledConv(in_channels, out_channels, dim, upsample=True))
            self.convs.append(StyledConv(out_channels, out_channels, dim, upsample=False))
            self.to_rgbs.append(ToRGB(out_channels, dim, upsample=True))

    @property
    def n_latent(self) -> int:
        return self.config.n_latent

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """Z ``[batch, style_dim]`` to W through the mapping network."""
        return self.style(z)

    def forward(
        self,
        w_plus: torch.Tensor,
        *,
        noise_mode: Literal["const", "random"] = "const",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Render W+ ``[batch, n_latent, style_dim]`` to RGB ``[batch, 3, size, size]`` in
        about ``[-1, 1]``.

        ``noise_mode="const"`` uses the stored ``noises`` (deterministic, as e4e's inference
        does); ``"random"`` draws fresh noise from ``generator``.
        """
        expected = (self.n_latent, self.config.style_dim)
        if w_plus.ndim != 3 or tuple(w_plus.shape[1:]) != expected:
            raise ValueError(
                f"W+ must be [batch, {expected[0]}, {expected[1]}] for this {self.config.size}-px "
                f"generator, got {list(w_plus.shape)}"
            )
        if noise_mode not in ("const", "random"):
            raise ValueError(f"noise_mode must be 'const' or 'random', got {noise_mode!r}")
        batch = w_plus.shape[0]
        w_plus = w_plus.to(self.input.input.dtype)
        noises = [getattr(self.noises, f"noise_{i}") for i in range(self.config.num_layers)]
        if noise_mode == "random":
            noises = [
                torch.randn(n.shape, generator=generator, device=n.device, dtype=n.dtype)
                for n in noises
            ]

        out = self.conv1(self.input(batch), w_plus[:, 0], noises[0])
        skip = self.to_rgb1(out, w_plus[:, 1])
        layers = zip(
            self.convs[::2], self.convs[1::2], noises[1::2], noises[2::2], self.to_rgbs, strict=True
        )
        for i, (up_conv, conv, up_noise, noise, to_rgb) in enumerate(layers):
            row = 1 + 2 * i
            out = up_conv(out, w_plus[:, row], up_noise)
            out = conv(out, w_plus[:, row + 1], noise)
            skip = to_rgb(out, w_plus[:, row + 2], skip)
        return skip
