"""e4e (encoder4editing): photo to StyleGAN2 W+, loading the published ``e4e_ffhq_encode.pt``.

:class:`Encoder4Editing` is omertov/encoder4editing's encoder key for key: an IR-SE50 body
(``input_layer``, ``body.0..23`` ``bottleneck_IR_SE`` units), one ``GradualStyleBlock`` per W+
row (``styles.N``: rows 0-2 from the 16-px features, 3-6 from the FPN's 32-px, the rest from its
64-px features, built with ``latlayer1/2``), producing ``w0`` repeated over the rows plus a
delta per later row. :class:`E4E` adds ``latent_avg`` and the decoder
(:class:`~adapters.stylegan2.StyleGAN2Generator`).

:func:`load_e4e` reads the published file unmodified with ``torch.load(weights_only=True)``: a
dict with ``state_dict`` (``encoder.*`` / ``decoder.*``), ``opts`` (a plain dict) and
``latent_avg`` ``[18, 512]``. Models are built on the meta device and take the checkpoint's
tensors, so nothing is allocated twice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from adapters.checkpoint import CheckpointError, load_state_dict
from adapters.stylegan2 import EqualLinear, StyleGAN2Config, StyleGAN2Generator

#: Units per IR-SE50 stage, and the stages' published widths.
IR_SE50_UNITS = (3, 4, 14, 3)
IR_SE50_WIDTHS = (64, 128, 256, 512)
#: Side of the aligned face e4e encodes (an FFHQ crop, RGB in ``[-1, 1]``).
E4E_INPUT_SIZE = 256
#: W+ rows fed by the coarse (16-px) and middle (32-px) features; later rows by the 64-px ones.
COARSE_ROWS, MIDDLE_ROWS = 3, 7
#: SE reduction of the bottleneck units.
SE_REDUCTION = 16


@dataclass(frozen=True)
class E4EConfig:
    """Encoder shape: IR-SE50 stage widths and the number of W+ rows (``2 log2(size) - 2``)."""

    widths: tuple[int, int, int, int] = IR_SE50_WIDTHS
    n_styles: int = 18

    @property
    def style_dim(self) -> int:
        return self.widths[-1]

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> E4EConfig:
        """Read the shape from an encoder state dict (``encoder.`` prefix removed)."""
        if "input_layer.0.weight" not in state:
            raise KeyError("not an e4e encoder: no input_layer.0.weight")
        starts = _stage_starts()
        widths = tuple(int(state[f"body.{i}.res_layer.1.weight"].shape[0]) for i in starts)
        n_styles = sum(1 for k in state if k.startswith("styles.") and k.endswith("linear.weight"))
        return cls(widths=widths, n_styles=n_styles)


class SEModule(nn.Module):
    """Squeeze-and-excitation (keys ``fc1.weight``, ``fc2.weight``)."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(weights))))


class BottleneckIRSE(nn.Module):
    """An IR-SE unit: ``shortcut_layer`` plus ``res_layer`` (BN, conv, PReLU, conv, BN, SE)."""

    def __init__(self, in_channels: int, depth: int, stride: int):
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut_layer(x) + self.res_layer(x)


def ir_se50_stem_and_body(widths) -> tuple[nn.Sequential, nn.Sequential]:
    """The IR-SE50 ``input_layer`` and ``body`` (pSp's ``Backbone(50, 'ir_se')``) for stage
    ``widths``, in the published module names: e4e's encoder and the ArcFace recognizer share
    them."""
    first = widths[0]
    stem = nn.Sequential(
        nn.Conv2d(3, first, 3, 1, 1, bias=False), nn.BatchNorm2d(first), nn.PReLU(first)
    )
    units, in_channels = [], first
    for depth, count in zip(widths, IR_SE50_UNITS, strict=True):
        units.append(BottleneckIRSE(in_channels, depth, 2))
        units += [BottleneckIRSE(depth, depth, 1) for _ in range(count - 1)]
        in_channels = depth
    return stem, nn.Sequential(*units)


class GradualStyleBlock(nn.Module):
    """Strided 3x3 convolutions down to 1 px, then an equalised linear: one W+ row."""

    def __init__(self, channels: int, style_dim: int, spatial: int):
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(channels if index == 0 else style_dim, style_dim, 3, 2, 1)]
            layers += [nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(style_dim, style_dim)
        self.style_dim = style_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).reshape(-1, self.style_dim))


class Encoder4Editing(nn.Module):
    """e4e's encoder: a 256-px aligned face in ``[-1, 1]`` to W+ offsets ``[batch, n, dim]``
    (before ``latent_avg`` is added)."""

    def __init__(self, config: E4EConfig | None = None):
        super().__init__()
        config = config or E4EConfig()
        self.config = config
        self.input_layer, self.body = ir_se50_stem_and_body(config.widths)
        dim = config.style_dim
        self.styles = nn.ModuleList(
            GradualStyleBlock(dim, dim, 16 if i < COARSE_ROWS else 32 if i < MIDDLE_ROWS else 64)
            for i in range(config.n_styles)
        )
        self.latlayer1 = nn.Conv2d(config.widths[2], dim, 1)
        self.latlayer2 = nn.Conv2d(config.widths[1], dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        starts = _stage_starts()
        fine_end, middle_end = starts[2] - 1, starts[3] - 1
        x = self.input_layer(x)
        for index, unit in enumerate(self.body):
            x = unit(x)
            if index == fine_end:
                fine = x
            elif index == middle_end:
                middle = x
        coarse = x

        w0 = self.styles[0](coarse)
        rows = [w0]
        features = coarse
        for index in range(1, len(self.styles)):
            if index == COARSE_ROWS:
                features = middle_features = _upsample_add(coarse, self.latlayer1(middle))
            elif index == MIDDLE_ROWS:
                features = _upsample_add(middle_features, self.latlayer2(fine))
            rows.append(w0 + self.styles[index](features))
        return torch.stack(rows, dim=1)


class E4E(nn.Module):
    """The published e4e: encoder, ``latent_avg`` and the StyleGAN2 decoder.

    ``encode`` maps aligned faces to W+, ``render`` maps W+ to images, both in ``[-1, 1]``.
    """

    def __init__(self, encoder_config: E4EConfig, decoder_config: StyleGAN2Config):
        super().__init__()
        if encoder_config.n_styles != decoder_config.n_latent:
            raise ValueError(
                f"the encoder makes {encoder_config.n_styles} W+ rows, the "
                f"{decoder_config.size}-px decoder takes {decoder_config.n_latent}"
            )
        self.encoder = Encoder4Editing(encoder_config)
        self.decoder = StyleGAN2Generator(decoder_config)
        shape = (decoder_config.n_latent, decoder_config.style_dim)
        self.register_buffer("latent_avg", torch.zeros(shape))

    def encode(self, faces: torch.Tensor) -> torch.Tensor:
        """Aligned FFHQ crops ``[batch, 3, 256, 256]`` in ``[-1, 1]`` to W+ ``[batch, n, dim]``."""
        if faces.ndim != 4 or faces.shape[1] != 3:
            raise ValueError(f"faces must be [batch, 3, H, W] RGB, got {list(faces.shape)}")
        if faces.shape[-2:] != (E4E_INPUT_SIZE, E4E_INPUT_SIZE):
            raise ValueError(
                f"e4e encodes {E4E_INPUT_SIZE}-px FFHQ crops, got {list(faces.shape[-2:])}; "
                "align with studio.faces.align.align_ffhq_quad(image, points, 256)"
            )
        offsets = self.encoder(faces.to(self.latent_avg))
        return offsets + self.latent_avg

    def render(self, w_plus: torch.Tensor, **kwargs) -> torch.Tensor:
        """W+ to images ``[batch, 3, size, size]`` (see :meth:`StyleGAN2Generator.forward`)."""
        return self.decoder(w_plus, **kwargs)


def read_e4e_checkpoint(path: str | Path) -> dict:
    """Load ``e4e_ffhq_encode.pt`` (or a file of the same layout) safely and check its kind.

    Returns the dict with ``state_dict``, ``opts`` and ``latent_avg``. Raises a
    :class:`~adapters.checkpoint.CheckpointError` naming the file when it cannot be read with
    ``weights_only=True`` or is not an e4e file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"e4e checkpoint {path} does not exist; place e4e_ffhq_encode.pt")
    checkpoint = load_state_dict(path)
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(
            f"{path} is not an e4e checkpoint: expected a dict with 'state_dict' "
            f"(encoder.* / decoder.*), 'opts' and 'latent_avg'; found {sorted(checkpoint)[:8]}"
        )
    state = checkpoint["state_dict"]
    for prefix in ("encoder.", "decoder."):
        if not any(k.startswith(prefix) for k in state):
            raise CheckpointError(
                f"{path} is not an e4e checkpoint: its state_dict has no {prefix}* weights "
                "(a pSp, StyleGAN-only or ReStyle file has a different layout)"
            )
    opts = checkpoint.get("opts", {})
    if not isinstance(opts, dict):
        raise CheckpointError(f"{path}: 'opts' must be a plain dict, got {type(opts).__name__}")
    encoder_type = opts.get("encoder_type", "Encoder4Editing")
    if encoder_type != "Encoder4Editing":
        raise CheckpointError(
            f"{path} holds a {encoder_type} encoder; only Encoder4Editing (e4e) is supported"
        )
    if not isinstance(checkpoint.get("latent_avg"), torch.Tensor):
        raise CheckpointError(f"{path} has no 'latent_avg' tensor; e4e adds it to every W+")
    return checkpoint


def load_e4e(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> E4E:
    """The published e4e from ``path``, every key checked against the published layout."""
    checkpoint = read_e4e_checkpoint(path)
    state = checkpoint["state_dict"]
    encoder_state = _section(state, "encoder.")
    decoder_state = _section(state, "decoder.")
    try:
        encoder_config = E4EConfig.from_state_dict(encoder_state)
        decoder_config = StyleGAN2Config.from_state_dict(decoder_state)
    except (KeyError, ValueError) as error:
        raise ValueError(f"{path} is not a complete e4e checkpoint: {error}") from error
    with torch.device("meta"):
        model = E4E(encoder_config, decoder_config)
    latent_avg = checkpoint["latent_avg"]
    if latent_avg.ndim == 1:
        latent_avg = latent_avg.expand(decoder_config.n_latent, -1).clone()
    full = {f"encoder.{k}": v for k, v in encoder_state.items()}
    full |= {f"decoder.{k}": v for k, v in decoder_state.items()}
    full["latent_avg"] = latent_avg
    check_state_dict(model.state_dict(), full, path)
    model.load_state_dict(full, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def check_state_dict(
    expected: Mapping[str, torch.Tensor],
    found: Mapping[str, torch.Tensor],
    path: str | Path,
    layout: str = "the published e4e layout",
    fix: str = "Use the unmodified e4e_ffhq_encode.pt",
) -> None:
    """Raise ``ValueError`` naming ``path``, ``layout`` and the first differences when ``found``
    does not have exactly ``expected``'s keys and shapes."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [
        f"{k} {list(found[k].shape)} (expected {list(v.shape)})"
        for k, v in expected.items()
        if k in found and tuple(found[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys, e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, e.g. {', '.join(unexpected[:3])}")
    if wrong:
        problems.append(f"{len(wrong)} wrong shapes, e.g. {'; '.join(wrong[:3])}")
    if problems:
        raise ValueError(f"{path} does not match {layout}: {'; '.join(problems)}. {fix}")


def _section(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _stage_starts() -> tuple[int, ...]:
    """Index of each IR-SE50 stage's first unit in ``body``."""
    starts, total = [], 0
    for count in IR_SE50_UNITS:
        starts.append(total)
        total += count
    return tuple(starts)


def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """FPN merge: ``x`` bilinearly resized to ``y`` (corners aligned), plus ``y``."""
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y
