"""Where the attention layers of a pipeline's denoiser are, per backbone.

The one module that knows a backbone's attention layout: which model denoises (``pipe.unet``
or ``pipe.transformer``, as diffusers' PAG mixin finds it), its attention processors in
``attn_processors`` order with their widths, and how a per-block scale dict
(``{"down": ..., "mid": ..., "up": ...}``, as ``set_ip_adapter_scale`` takes it) maps onto
those layers. ``UNet2DConditionModel`` (SD1.5, SDXL) is the backbone supported today; a
transformer's layers are listed the same way, and its per-block scales are refused until a
layout for it is written here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.unet_loader_utils import _maybe_expand_lora_scales


@dataclass(frozen=True)
class AttentionLayer:
    """One attention processor of a denoiser, in ``attn_processors`` order."""

    index: int  #: position in ``attn_processors``: the published ``ip_adapter`` key prefix
    name: str  #: e.g. ``"mid_block.attentions.0.transformer_blocks.0.attn2.processor"``
    hidden_size: int  #: the attention's inner width: output of ``to_k`` and ``to_k_ip``
    context_dim: int  #: input width of ``to_k``: the text width for cross-attention
    is_cross_attention: bool


def denoiser(pipeline: object) -> torch.nn.Module:
    """The pipeline's denoising model: ``pipeline.unet``, else ``pipeline.transformer``."""
    for name in ("unet", "transformer"):
        model = getattr(pipeline, name, None)
        if model is not None:
            return model
    raise TypeError(
        f"{type(pipeline).__name__} has no `unet` or `transformer` to put attention "
        "contributions on"
    )


def attention_layers(model: torch.nn.Module) -> list[AttentionLayer]:
    """Every attention processor of ``model`` (a UNet or a transformer), in order."""
    layers = []
    for index, name in enumerate(model.attn_processors):
        attn = model.get_submodule(name.removesuffix(".processor"))
        layers.append(
            AttentionLayer(
                index=index,
                name=name,
                hidden_size=attn.inner_dim,
                context_dim=attn.cross_attention_dim,
                is_cross_attention=attn.is_cross_attention,
            )
        )
    return layers


def layer_scales(model: torch.nn.Module, scale: float | dict, *, what: str) -> dict[str, float]:
    """Each attention processor's scale from one float or a per-block dict.

    A dict such as ``{"down": 0.0, "mid": 0.5, "up": {"block_0": [0.0, 1.0, 1.0]}}`` is
    expanded as diffusers expands IP-Adapter scales: per transformer block, self- and
    cross-attention alike; blocks it leaves out get 0. ``what`` names the scale in errors.
    """
    names = list(model.attn_processors)
    if not isinstance(scale, dict):
        check_scale(scale, what)
        return dict.fromkeys(names, float(scale))
    if not isinstance(model, UNet2DConditionModel):
        raise ValueError(
            f"{what} per block is supported on UNets; give {type(model).__name__} one float"
        )
    _check_block_names(model, scale, what)
    expanded = _maybe_expand_lora_scales(model, [scale], default_scale=0.0)[0]
    for value in expanded.values():
        check_scale(value, what)
    scales = {}
    for name in names:
        matches = [value for block, value in expanded.items() if name.startswith(f"{block}.")]
        scales[name] = float(matches[-1]) if matches else 0.0
    return scales


def check_scale(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")


def _check_block_names(unet: UNet2DConditionModel, scale: dict, what: str) -> None:
    """Refuse block names diffusers' expansion would drop silently (blocks without attention)."""
    unknown = sorted(set(scale) - {"down", "mid", "up"})
    if unknown:
        raise ValueError(f"{what} keys must be 'down', 'mid' and 'up', got {unknown}")
    for part, blocks in (("down", unet.down_blocks), ("up", unet.up_blocks)):
        if not isinstance(scale.get(part), dict):
            continue
        with_attention = [f"block_{i}" for i, b in enumerate(blocks) if hasattr(b, "attentions")]
        for block in scale[part]:
            if block not in with_attention:
                raise ValueError(
                    f"{what} for {part}.{block}: this UNet's {part} blocks with attention "
                    f"are {with_attention}"
                )


def check_components(pipeline: Any, names: Sequence[str], adapter: str) -> None:
    """Raise unless ``pipeline``'s class accepts the components ``names`` (for ``adapter``), so
    that ``save_pretrained``, ``from_pretrained`` and CPU offload see them."""
    cls = type(pipeline)
    expected, _ = cls._get_signature_keys(pipeline)
    missing = [name for name in names if name not in expected]
    if missing:
        raise TypeError(
            f"{cls.__name__}.__init__ must accept {', '.join(f'{n}=None' for n in missing)} "
            f"and list {missing} in _optional_components, so that save_pretrained, "
            f"from_pretrained and CPU offload see the {adapter}"
        )
