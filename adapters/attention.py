"""Decoupled identity cross-attention: the attention processor and its weights component.

:class:`IdentityAttention` holds a published ``ip_adapter`` state dict key for key (child
``"1"`` holds ``1.to_k_ip.weight`` ...), so it saves and loads like any diffusers component.
:class:`IdentityAttnProcessor` wraps a layer's previous processor and borrows that layer's
weights from the component: identity off (no tokens, or scale 0) calls the previous processor
untouched; identity on computes

    to_out(attn(q, k_text, v_text) [+ diffusers IP-Adapter terms] + scale * attn(q, k_id, v_id))

with ``k_id = to_k_ip(identity_tokens)``, ``v_id = to_v_ip(identity_tokens)`` and, for FaceID
checkpoints, the published LoRA added to ``to_q/to_k/to_v/to_out`` as the reference does
(``attn.to_q(h) + to_q_lora(h)``; folded into a cached copy of the projection weight while
identity is on, or added beside a peft-wrapped projection so the user's LoRA still applies).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.image_processor import IPAdapterMaskProcessor
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    IPAdapterAttnProcessor,
    IPAdapterAttnProcessor2_0,
    IPAdapterXFormersAttnProcessor,
    XFormersAttnProcessor,
)
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from adapters.formats import LORA_PROJECTIONS

#: Processors computing plain attention, which an identity processor may wrap.
PLAIN_PROCESSORS = (AttnProcessor, AttnProcessor2_0, XFormersAttnProcessor)
#: diffusers' IP-Adapter processors, whose image branches keep working under ours.
IP_ADAPTER_PROCESSORS = (
    IPAdapterAttnProcessor,
    IPAdapterAttnProcessor2_0,
    IPAdapterXFormersAttnProcessor,
)


class LoRALinear(nn.Module):
    """A published FaceID LoRA pair: ``up(down(x))`` (keys ``down.weight``, ``up.weight``)."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        self._folded: tuple[tuple, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x.to(self.down.weight.dtype))).to(x.dtype)

    def folded(self, base: torch.Tensor) -> torch.Tensor:
        """``base + up @ down``: the projection weight with this LoRA folded in, cached.

        One matmul per projection instead of three; the cache is rebuilt whenever the base
        weight or the LoRA weights change (in place or replaced) and is never saved.
        """
        key = tuple(
            (w.data_ptr(), w._version, w.dtype, w.device, w.shape)
            for w in (base, self.down.weight, self.up.weight)
        )
        if self._folded is None or self._folded[0] != key:
            delta = self.up.weight.float() @ self.down.weight.float()
            self._folded = (key, (base.float() + delta).to(base.dtype))
        return self._folded[1]


class IdentityAttnLayer(nn.Module):
    """One attention layer's published weights: ``to_k_ip``/``to_v_ip`` and/or FaceID LoRA."""

    def __init__(
        self, hidden_size: int, context_dim: int, *, cross_attention: bool, lora_rank: int | None
    ):
        super().__init__()
        self.to_k_ip = nn.Linear(context_dim, hidden_size, bias=False) if cross_attention else None
        self.to_v_ip = nn.Linear(context_dim, hidden_size, bias=False) if cross_attention else None
        self.has_lora = lora_rank is not None
        if lora_rank is not None:
            inputs = {"to_q": hidden_size, "to_k": context_dim, "to_v": context_dim}
            for proj in LORA_PROJECTIONS:
                lora = LoRALinear(inputs.get(proj, hidden_size), hidden_size, lora_rank)
                self.add_module(f"{proj}_lora", lora)

    def project(self, proj: str, linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``attn.<proj>(x)`` plus this layer's FaceID LoRA term, if it has one.

        A plain ``nn.Linear`` gets the LoRA folded into its weight (one matmul); a wrapped one
        (e.g. a peft LoRA layer) runs as is, with the LoRA term added beside it.
        """
        if not self.has_lora:
            return linear(x)
        lora = getattr(self, f"{proj}_lora")
        if type(linear) is nn.Linear:
            return F.linear(x, lora.folded(linear.weight), linear.bias)
        return linear(x) + lora(x)


class IdentityAttention(ModelMixin, ConfigMixin):
    """A UNet's identity-adapter attention weights, keyed like the published ``ip_adapter`` dict.

    The config records the UNet's attention processors (names, widths, which are
    cross-attention) so the processors can be re-installed after ``from_pretrained``; layers
    without weights (self-attention of an adapter without LoRA) have no child.
    """

    @register_to_config
    def __init__(
        self,
        family: str,
        processor_names: list[str],
        hidden_sizes: list[int],
        context_dims: list[int],
        cross_attention: list[bool],
        lora_rank: int | None = None,
    ):
        super().__init__()
        layers = zip(hidden_sizes, context_dims, cross_attention, strict=True)
        for index, (hidden, context, cross) in enumerate(layers):
            if cross or lora_rank is not None:
                layer = IdentityAttnLayer(
                    hidden, context, cross_attention=cross, lora_rank=lora_rank
                )
                self.add_module(str(index), layer)

    def layer(self, index: int) -> IdentityAttnLayer | None:
        return self._modules.get(str(index))


class IdentityAttnProcessor(nn.Module):
    """Adds identity tokens to an attention layer through decoupled cross-attention.

    Args:
        base_processor: the processor it replaces, called as is while identity is off and put
            back by ``unload_identity_adapter``; one of diffusers' plain or IP-Adapter processors.
        layer: this layer's weights from :class:`IdentityAttention` (``None``: nothing to add).
        scale: weight of the identity attention; 0 makes the layer exactly the base processor,
            FaceID LoRA included.

    Called with ``identity_tokens`` ``[batch, num_tokens, cross_attention_dim]`` (from
    ``cross_attention_kwargs``). When diffusers' IP-Adapter is loaded too,
    ``encoder_hidden_states`` is diffusers' ``(text, [image_embeds, ...])`` tuple and its image
    terms are added as ``IPAdapterAttnProcessor2_0`` adds them (masks included).
    """

    def __init__(
        self,
        base_processor: object,
        layer: IdentityAttnLayer | None,
        scale: float = 1.0,
    ):
        super().__init__()
        if not isinstance(base_processor, PLAIN_PROCESSORS + IP_ADAPTER_PROCESSORS):
            raise TypeError(
                f"cannot add identity attention on top of {type(base_processor).__name__}; "
                "supported: diffusers' AttnProcessor2_0/AttnProcessor/XFormersAttnProcessor and "
                "IP-Adapter processors (reset others with unet.set_default_attn_processor())"
            )
        self.base_processor = base_processor
        self.layer = layer
        self.scale = scale

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | tuple | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        identity_tokens: torch.Tensor | None = None,
        ip_adapter_masks: torch.Tensor | list | None = None,
    ) -> torch.Tensor:
        if identity_tokens is None or self.scale == 0 or self.layer is None:
            extra = {} if ip_adapter_masks is None else {"ip_adapter_masks": ip_adapter_masks}
            return self.base_processor(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, **extra
            )
        return self._attention(
            attn,
            hidden_states,
            encoder_hidden_states,
            attention_mask,
            temb,
            identity_tokens,
            ip_adapter_masks,
        )

    def _attention(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | tuple | None,
        attention_mask: torch.Tensor | None,
        temb: torch.Tensor | None,
        identity_tokens: torch.Tensor,
        ip_adapter_masks: torch.Tensor | list | None,
    ) -> torch.Tensor:
        # Mirrors diffusers' AttnProcessor2_0 step for step, plus the LoRA and identity terms.
        layer = self.layer
        image_embeds = None
        if isinstance(encoder_hidden_states, tuple):
            if not isinstance(self.base_processor, IP_ADAPTER_PROCESSORS):
                raise ValueError(
                    "encoder_hidden_states is diffusers' IP-Adapter (text, image_embeds) tuple, "
                    "but this layer has no IP-Adapter loaded"
                )
            encoder_hidden_states, image_embeds = encoder_hidden_states
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = mask.view(batch_size, attn.heads, -1, mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = layer.project("to_q", attn.to_q, hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = layer.project("to_k", attn.to_k, encoder_hidden_states)
        value = layer.project("to_v", attn.to_v, encoder_hidden_states)

        head_dim = key.shape[-1] // attn.heads
        query = _split_heads(query, attn.heads, head_dim)
        key = _split_heads(key, attn.heads, head_dim)
        value = _split_heads(value, attn.heads, head_dim)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        hidden_states = _merge_heads(hidden_states).to(query.dtype)

        if image_embeds is not None:
            hidden_states = _add_ip_adapter_terms(
                self.base_processor, hidden_states, query, image_embeds, ip_adapter_masks, attn
            )
        if layer.to_k_ip is not None:
            hidden_states = hidden_states + self.scale * self._identity_term(
                attn, query, identity_tokens
            )

        hidden_states = layer.project("to_out", attn.to_out[0], hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(
                batch_size, channel, height, width
            )
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _identity_term(
        self, attn: Attention, query: torch.Tensor, identity_tokens: torch.Tensor
    ) -> torch.Tensor:
        batch, width = query.shape[0], self.layer.to_k_ip.in_features
        if identity_tokens.ndim != 3 or identity_tokens.shape[0] != batch:
            raise ValueError(
                f"identity_tokens must be [batch={batch}, num_tokens, {width}] to match this "
                f"UNet call, got {list(identity_tokens.shape)}; with classifier-free guidance "
                "pass encode_identity(..., do_classifier_free_guidance=True)'s negatives-first "
                "tokens"
            )
        if identity_tokens.shape[-1] != width:
            raise ValueError(
                f"identity_tokens are {identity_tokens.shape[-1]}-d, this layer's to_k_ip takes "
                f"{width}-d tokens; encode them with this pipeline's encode_identity"
            )
        tokens = identity_tokens.to(query.dtype)
        head_dim = query.shape[-1]
        key = _split_heads(self.layer.to_k_ip(tokens), attn.heads, head_dim)
        value = _split_heads(self.layer.to_v_ip(tokens), attn.heads, head_dim)
        out = F.scaled_dot_product_attention(query, key, value)
        return _merge_heads(out).to(query.dtype)


def _split_heads(x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    return x.view(x.shape[0], -1, heads, head_dim).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


def _add_ip_adapter_terms(
    processor: IPAdapterAttnProcessor2_0,
    hidden_states: torch.Tensor,
    query: torch.Tensor,
    image_embeds: list[torch.Tensor],
    masks: torch.Tensor | list | None,
    attn: Attention,
) -> torch.Tensor:
    """diffusers' IP-Adapter image terms, as ``IPAdapterAttnProcessor2_0.__call__`` adds them."""
    batch_size, heads, _, head_dim = query.shape
    if masks is None:
        masks = [None] * len(processor.scale)
    elif not isinstance(masks, list):
        masks = list(masks.unsqueeze(1))
    if not len(masks) == len(processor.scale) == len(image_embeds):
        raise ValueError(
            f"Length of ip_adapter_masks array ({len(masks)}) must match length of self.scale "
            f"array ({len(processor.scale)}) and number of ip_hidden_states ({len(image_embeds)})"
        )
    for embeds, scale, to_k_ip, to_v_ip, mask in zip(
        image_embeds, processor.scale, processor.to_k_ip, processor.to_v_ip, masks, strict=True
    ):
        scales = scale if isinstance(scale, list) else [scale]
        if all(s == 0 for s in scales):
            continue
        if mask is None:
            key = _split_heads(to_k_ip(embeds), heads, head_dim)
            value = _split_heads(to_v_ip(embeds), heads, head_dim)
            out = _merge_heads(F.scaled_dot_product_attention(query, key, value))
            hidden_states = hidden_states + scale * out.to(query.dtype)
            continue
        if not isinstance(scale, list):
            scales = [scale] * mask.shape[1]
        for i in range(mask.shape[1]):
            key = _split_heads(to_k_ip(embeds[:, i, :, :]), heads, head_dim)
            value = _split_heads(to_v_ip(embeds[:, i, :, :]), heads, head_dim)
            out = _merge_heads(F.scaled_dot_product_attention(query, key, value)).to(query.dtype)
            mask_downsample = IPAdapterMaskProcessor.downsample(
                mask[:, i, :, :], batch_size, out.shape[1], out.shape[2]
            ).to(dtype=query.dtype, device=query.device)
            hidden_states = hidden_states + scales[i] * (out * mask_downsample)
    return hidden_states
