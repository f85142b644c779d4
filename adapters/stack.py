"""The attention stack: one processor per attention layer running named contributions in order.

Every technique that changes attention (the identity adapter and its FaceID LoRA today; W+,
attribute repair, multi-person terms next) is a :class:`Contribution` with a ``name`` and the
``stages`` it acts in. :class:`PortraitAttnProcessor` replaces a layer's diffusers processor
(kept as ``base_processor``) and runs, for the contributions active in this call:

1. **Projection modifiers** (:attr:`Stage.PROJECTION`, e.g. the FaceID LoRA): terms added to
   ``to_q``/``to_k``/``to_v`` (and to ``to_out`` in step 5). Folded into one cached weight when
   every row of the batch takes them and the projection is a plain ``nn.Linear``.
2. **Self-attention editors** (:attr:`Stage.SELF_ATTENTION`, e.g. FASA-like edits; on
   self-attention layers only): may append keys/values and add a bias or mask to the logits.
3. **Core attention**: ``softmax(q k^T + bias) v`` over the text (or the layer's own tokens),
   plus diffusers' own IP-Adapter image terms when ``base_processor`` is an IP-Adapter
   processor, exactly as ``IPAdapterAttnProcessor2_0`` adds them.
4. **Decoupled cross-attention terms** (:attr:`Stage.CROSS_ATTENTION`, e.g. identity):
   ``+ scale * mask * attn(q, k_c, v_c)`` each, with its scale, optional spatial mask and rows.
   Keys and values that depend only on the call's tokens and the weights
   (``token_keys_values``) are computed once per call and layer and kept in the call state,
   not once per denoising step.
   **Residual attention terms** (:attr:`Stage.RESIDUAL_ATTENTION`, e.g. W+) follow: terms
   computed from the text-attention output of step 3 (before any image term), added the same way.
5. **Output projection**: ``to_out`` (with the projection modifiers' ``to_out`` terms), dropout,
   residual and rescale as diffusers does.

Within a stage, contributions run in the order they were added, the identity adapter's first
whenever it was loaded. A layer where no contribution is active in a call runs
``base_processor`` untouched, bit for bit.

Per-call inputs arrive as one object, ``cross_attention_kwargs={"portrait": state}`` with an
:class:`AttentionCallState` holding a :class:`ContributionInput` per contribution name (tokens,
per-call scale, per-row switch, spatial mask), so a new contribution never changes a signature.
A contribution whose input names ``rows`` acts on those batch rows only; every other row gets
exactly what it would get without the contribution.

A new technique is one file with a :class:`Contribution` subclass, put on the layers it needs
with ``pipe.add_attention_contribution(...)`` (layer names and widths from
:mod:`adapters.layout`) and fed through its :class:`ContributionInput`; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import NamedTuple

import torch
import torch.nn.functional as F
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
from torch import nn

#: Processors computing plain attention, which a stack may hold as its base.
PLAIN_PROCESSORS = (AttnProcessor, AttnProcessor2_0, XFormersAttnProcessor)
#: diffusers' IP-Adapter processors, whose image terms keep working inside a stack.
IP_ADAPTER_PROCESSORS = (
    IPAdapterAttnProcessor,
    IPAdapterAttnProcessor2_0,
    IPAdapterXFormersAttnProcessor,
)
#: The ``cross_attention_kwargs`` key of the per-call state.
STATE_KEY = "portrait"


class Stage(IntEnum):
    """Where in a layer's attention a contribution acts; also the order they run in."""

    PROJECTION = 1
    SELF_ATTENTION = 2
    CROSS_ATTENTION = 3
    RESIDUAL_ATTENTION = 4


@dataclass(frozen=True)
class ContributionInput:
    """One contribution's inputs for one call.

    Attributes:
        tokens: conditioning tokens ``[batch, num_tokens, dim]`` (identity, W+ ...).
        scale: this call's scale: one float, or per attention layer name; ``None`` keeps the
            scale set on the pipeline (never changed by a call).
        rows: one bool per row of the denoiser's batch (CFG halves included): the rows it acts
            on; ``None`` for all.
        mask: spatial mask ``[1 or batch, 1, H, W]`` in ``[0, 1]`` on cross-attention terms.
    """

    tokens: torch.Tensor | None = None
    scale: float | Mapping[str, float] | None = None
    rows: tuple[bool, ...] | None = None
    mask: torch.Tensor | None = None


@dataclass
class AttentionCallState:
    """Everything the attention stack reads in one denoiser call, keyed by contribution name.

    Passed as ``cross_attention_kwargs={"portrait": state}``.
    """

    inputs: dict[str, ContributionInput] = field(default_factory=dict)
    _row_masks: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _keys_values: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def with_input(self, name: str, value: ContributionInput) -> AttentionCallState:
        """A copy with ``name``'s input set (the others kept)."""
        return replace(self, inputs={**self.inputs, name: value})

    def row_mask(self, rows: tuple[bool, ...], like: torch.Tensor) -> torch.Tensor:
        """``rows`` as a ``[batch]`` tensor on ``like``'s device and dtype, made once per call."""
        if torch.compiler.is_compiling():  # a cache lookup would specialise the graph
            return torch.tensor(rows, device=like.device, dtype=like.dtype)
        key = (rows, like.device, like.dtype)
        if key not in self._row_masks:
            self._row_masks[key] = torch.tensor(rows, device=like.device, dtype=like.dtype)
        return self._row_masks[key]

    def keys_values(
        self,
        contribution: Contribution,
        attn: Attention,
        inputs: ContributionInput | None,
        query: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``contribution.token_keys_values(attn, inputs, query)``, computed once per call.

        Kept per (contribution, layer) for the steps of one call. Reused only while the tokens
        object, the query's batch, dtype and device, and the weights it reads
        (``token_weights``: storage, in-place version, device) are the ones it was computed
        from, so offload moves, weights changed in place and a state reused across calls
        recompute it. Inside ``torch.compile`` it is computed in the graph (a lookup would
        specialise the graph on the cache's contents and recompile per call).
        """
        if torch.compiler.is_compiling():
            return contribution.token_keys_values(attn, inputs, query)
        return self._cached_keys_values(contribution, attn, inputs, query)

    def _cached_keys_values(self, contribution, attn, inputs, query):
        tokens = None if inputs is None else inputs.tokens
        stamp = (
            query.shape[0],
            query.dtype,
            query.device,
            None if tokens is None else tokens._version,
            tuple((w.data_ptr(), w._version, w.device) for w in contribution.token_weights()),
        )
        key = (id(contribution), id(attn))
        cached = self._keys_values.get(key)
        if cached is not None and cached[0] is tokens and cached[1] == stamp:
            return cached[2]
        keys_values = contribution.token_keys_values(attn, inputs, query)
        self._keys_values[key] = (tokens, stamp, keys_values)
        return keys_values


class Contribution(nn.Module):
    """A named change to attention layers; subclasses implement the hooks of their ``stages``.

    One object sits on one or more layers (its weights, if any, are submodules, so they move and
    offload with the denoiser). ``scale`` is its strength on that layer, overridden per call by
    :attr:`ContributionInput.scale`.

    Hooks (called only for the stages in ``stages``):

    - PROJECTION: ``projection_delta(proj, x)`` adds a term to ``attn.<proj>(x)`` for
      ``proj`` in ``to_q``, ``to_k``, ``to_v``, ``to_out`` (``None``: unchanged); with
      ``foldable``, ``folded_weight(proj, weight)`` returns ``weight`` with that term folded in.
    - SELF_ATTENTION: ``edit_self_attention(attn, query, key, value, bias, inputs, scale)``
      returns ``(key, value, bias)``; it may append keys/values (never change existing ones) and
      add to ``bias`` (``[batch, 1 or heads, queries, keys]`` additive logits, or ``None``).
    - CROSS_ATTENTION: ``token_keys_values(attn, inputs, query)`` returns keys and values
      ``[batch, num_tokens, inner_dim]`` that depend only on ``inputs`` and the weights (not on
      the query's values: ``query`` gives the batch, dtype and device); the stack computes them
      once per call and layer (again when one of ``token_weights()``, by default all its
      parameters, changes) and adds ``attn(q, k, v)``. Otherwise
      ``cross_attention_term(attn, query, inputs)`` returns the unscaled term
      ``[batch, queries, inner_dim]`` each step. ``None`` from either: nothing on this layer.
      The stack multiplies the term by the scale, the spatial mask and the rows.
    - RESIDUAL_ATTENTION: ``residual_attention_term(attn, text_attention, inputs)``, the same
      from the layer's text-attention output ``[batch, queries, inner_dim]`` (heads merged).
    """

    name: str
    foldable: bool = False  #: ``folded_weight`` gives this contribution's projection terms

    def __init__(self, name: str, *, stages: Sequence[Stage], scale: float = 1.0):
        super().__init__()
        if not name or not isinstance(name, str):
            raise ValueError(f"a contribution needs a non-empty name, got {name!r}")
        self.name = name
        self.stages = frozenset(stages)
        self.scale = scale

    def is_active(self, inputs: ContributionInput | None, scale: float) -> bool:
        """Whether it acts in this call (default: at a non-zero scale)."""
        return scale != 0

    def projection_delta(self, proj: str, x: torch.Tensor) -> torch.Tensor | None:
        return None

    def folded_weight(self, proj: str, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def edit_self_attention(
        self,
        attn: Attention,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        bias: torch.Tensor | None,
        inputs: ContributionInput | None,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return key, value, bias

    def token_keys_values(
        self, attn: Attention, inputs: ContributionInput | None, query: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None

    def token_weights(self) -> Iterable[torch.Tensor]:
        """The weights ``token_keys_values`` reads: a change to one recomputes them."""
        return self.parameters()

    def cross_attention_term(
        self, attn: Attention, query: torch.Tensor, inputs: ContributionInput | None
    ) -> torch.Tensor | None:
        return None

    def residual_attention_term(
        self, attn: Attention, text_attention: torch.Tensor, inputs: ContributionInput | None
    ) -> torch.Tensor | None:
        return None


class _Active(NamedTuple):
    """A contribution active in this call, with what the stack resolved for it."""

    contribution: Contribution
    inputs: ContributionInput | None
    scale: float
    rows: tuple[bool, ...] | None  #: ``None`` when every row takes it


class PortraitAttnProcessor(nn.Module):
    """One attention layer's stack: ``base_processor`` plus named contributions, run in order.

    Args:
        base_processor: the layer's diffusers processor (plain or IP-Adapter), called untouched
            when no contribution is active and put back when the stack is removed.
        contributions: what this layer runs; names must be unique.
        layer_name: the layer's ``attn_processors`` name, to read per-layer call scales.
    """

    def __init__(
        self,
        base_processor: object,
        contributions: Sequence[Contribution] = (),
        *,
        layer_name: str | None = None,
    ):
        super().__init__()
        if not isinstance(base_processor, PLAIN_PROCESSORS + IP_ADAPTER_PROCESSORS):
            raise TypeError(
                f"cannot stack attention contributions on {type(base_processor).__name__}; "
                "supported: diffusers' AttnProcessor2_0/AttnProcessor/XFormersAttnProcessor and "
                "IP-Adapter processors (reset others with unet.set_default_attn_processor(), and "
                "add techniques as contributions with pipe.add_attention_contribution(...))"
            )
        names = [c.name for c in contributions]
        if len(set(names)) != len(names):
            raise ValueError(f"contribution names must be unique on a layer, got {names}")
        self.base_processor = base_processor
        self.layer_name = layer_name
        self.contributions = nn.ModuleList(contributions)

    def contribution(self, name: str) -> Contribution | None:
        return next((c for c in self.contributions if c.name == name), None)

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | tuple | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        portrait: AttentionCallState | None = None,
        ip_adapter_masks: torch.Tensor | list | None = None,
    ) -> torch.Tensor:
        state = portrait if portrait is not None else AttentionCallState()
        active = self._active(state, batch=hidden_states.shape[0])
        if not active:
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
            ip_adapter_masks,
            state,
            active,
        )

    def _active(self, state: AttentionCallState, batch: int) -> list[_Active]:
        active = []
        for contribution in self.contributions:
            inputs = state.inputs.get(contribution.name)
            scale = self._scale(contribution, inputs)
            rows = None if inputs is None else inputs.rows
            if rows is not None:
                if len(rows) != batch:
                    raise ValueError(
                        f"rows for {contribution.name!r} has {len(rows)} values, this call's "
                        f"batch has {batch} rows (with classifier-free guidance: both halves)"
                    )
                if not any(rows):
                    continue
                rows = None if all(rows) else tuple(bool(r) for r in rows)
            if contribution.is_active(inputs, scale):
                active.append(_Active(contribution, inputs, scale, rows))
        return active

    def _scale(self, contribution: Contribution, inputs: ContributionInput | None) -> float:
        if inputs is None or inputs.scale is None:
            return contribution.scale
        if isinstance(inputs.scale, Mapping):
            return inputs.scale.get(self.layer_name, 0.0)
        return inputs.scale

    def _attention(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | tuple | None,
        attention_mask: torch.Tensor | None,
        temb: torch.Tensor | None,
        ip_adapter_masks: torch.Tensor | list | None,
        state: AttentionCallState,
        active: list[_Active],
    ) -> torch.Tensor:
        # Mirrors diffusers' AttnProcessor2_0 step for step, with the stages in between.
        image_embeds = None
        if isinstance(encoder_hidden_states, tuple):
            if not isinstance(self.base_processor, IP_ADAPTER_PROCESSORS):
                raise ValueError(
                    "encoder_hidden_states is diffusers' IP-Adapter (text, image_embeds) tuple, "
                    "but this layer has no IP-Adapter loaded"
                )
            encoder_hidden_states, image_embeds = encoder_hidden_states
        is_self_attention = encoder_hidden_states is None
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

        # 1. Projection modifiers
        modifiers = [a for a in active if Stage.PROJECTION in a.contribution.stages]
        query = _project("to_q", attn.to_q, hidden_states, modifiers)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = _project("to_k", attn.to_k, encoder_hidden_states, modifiers)
        value = _project("to_v", attn.to_v, encoder_hidden_states, modifiers)

        head_dim = key.shape[-1] // attn.heads
        query = _split_heads(query, attn.heads, head_dim)
        key = _split_heads(key, attn.heads, head_dim)
        value = _split_heads(value, attn.heads, head_dim)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # 2. Self-attention editors
        if is_self_attention:
            for item in active:
                if Stage.SELF_ATTENTION in item.contribution.stages:
                    key, value, attention_mask = _edit(
                        item, attn, query, key, value, attention_mask, state
                    )

        # 3. Core attention, with diffusers' IP-Adapter image terms
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        hidden_states = text_attention = _merge_heads(hidden_states).to(query.dtype)
        if image_embeds is not None:
            hidden_states = _add_ip_adapter_terms(
                self.base_processor, hidden_states, query, image_embeds, ip_adapter_masks, attn
            )

        # 4. Decoupled cross-attention terms, then residual terms of the text attention
        for item in active:
            if Stage.CROSS_ATTENTION in item.contribution.stages:
                keys_values = state.keys_values(item.contribution, attn, item.inputs, query)
                if keys_values is not None:
                    term = token_attention(query, *keys_values)
                else:
                    term = item.contribution.cross_attention_term(attn, query, item.inputs)
                hidden_states = _add_term(hidden_states, term, item, state)
        for item in active:
            if Stage.RESIDUAL_ATTENTION in item.contribution.stages:
                term = item.contribution.residual_attention_term(attn, text_attention, item.inputs)
                hidden_states = _add_term(hidden_states, term, item, state)

        # 5. Output projection
        hidden_states = _project("to_out", attn.to_out[0], hidden_states, modifiers)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(
                batch_size, channel, height, width
            )
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _add_term(
    hidden_states: torch.Tensor,
    term: torch.Tensor | None,
    item: _Active,
    state: AttentionCallState,
) -> torch.Tensor:
    """``hidden_states`` plus ``term`` times the item's scale, spatial mask and rows."""
    if term is None:
        return hidden_states
    term = item.scale * term
    if item.inputs is not None and item.inputs.mask is not None:
        term = term * _spatial_mask(item.inputs.mask, term)
    if item.rows is not None:
        term = term * state.row_mask(item.rows, term)[:, None, None]
    return hidden_states + term


def _project(
    proj: str, linear: nn.Module, x: torch.Tensor, modifiers: list[_Active]
) -> torch.Tensor:
    """``linear(x)`` with the modifiers' terms, each on its rows only."""
    if not modifiers:
        return linear(x)
    if all(item.rows is None for item in modifiers):
        return _apply(proj, linear, x, [item.contribution for item in modifiers])
    # Rows taking the same modifiers run together, each group as a batch of its own.
    flags = [
        tuple(item.rows is None or item.rows[row] for item in modifiers) for row in range(len(x))
    ]
    out = None
    for combination in dict.fromkeys(flags):
        index = torch.tensor([r for r, f in enumerate(flags) if f == combination], device=x.device)
        taken = [item.contribution for item, on in zip(modifiers, combination, strict=True) if on]
        y = _apply(proj, linear, x.index_select(0, index), taken)
        if out is None:
            out = y.new_empty((len(x), *y.shape[1:]))
        out.index_copy_(0, index, y)
    return out


def _apply(
    proj: str, linear: nn.Module, x: torch.Tensor, contributions: list[Contribution]
) -> torch.Tensor:
    """``linear(x)`` plus each contribution's term, folded into the weight when all can be."""
    if not contributions:
        return linear(x)
    if type(linear) is nn.Linear and all(c.foldable for c in contributions):
        weight = linear.weight
        for contribution in contributions:
            weight = contribution.folded_weight(proj, weight)
        return F.linear(x, weight, linear.bias)
    out = linear(x)
    for contribution in contributions:
        delta = contribution.projection_delta(proj, x)
        if delta is not None:
            out = out + delta
    return out


def _edit(
    item: _Active,
    attn: Attention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bias: torch.Tensor | None,
    state: AttentionCallState,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One self-attention editor; rows it is off for keep their keys and ignore appended ones."""
    length = key.shape[2]
    new_key, new_value, new_bias = item.contribution.edit_self_attention(
        attn, query, key, value, bias, item.inputs, item.scale
    )
    if new_key.shape[:2] != key.shape[:2] or new_key.shape[2] < length:
        raise ValueError(
            f"contribution {item.contribution.name!r} returned keys {list(new_key.shape)}; it "
            f"may append keys to {list(key.shape)}, not drop them or change batch or heads"
        )
    if item.rows is None:
        return new_key, new_value, new_bias
    on = state.row_mask(item.rows, key).bool()[:, None, None, None]
    head = (torch.where(on, new_key[:, :, :length], key), new_key[:, :, length:])
    new_key = torch.cat(head, dim=2)
    head = (torch.where(on, new_value[:, :, :length], value), new_value[:, :, length:])
    new_value = torch.cat(head, dim=2)
    if new_bias is None and new_key.shape[2] == length:
        return new_key, new_value, bias
    shape = (key.shape[0], 1, query.shape[2], new_key.shape[2])
    edited = torch.zeros(shape, dtype=query.dtype, device=query.device)
    edited = edited + (new_bias if new_bias is not None else 0)
    kept = torch.zeros((*shape[:3], length), dtype=query.dtype, device=query.device)
    kept = kept + (bias if bias is not None else 0)
    appended = new_key.shape[2] - length
    masked = kept.new_full((*kept.shape[:3], appended), float("-inf"))
    kept = torch.cat([kept, masked], dim=-1)
    return new_key, new_value, torch.where(on, edited, kept)


def _spatial_mask(mask: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """``[1 or batch, 1, H, W]`` mask as ``[batch, queries, 1]`` weights for this layer."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"a spatial mask must be [1 or batch, 1, H, W], got {list(mask.shape)}")
    batch, queries, _ = term.shape
    weights = IPAdapterMaskProcessor.downsample(mask[:, 0], batch, queries, 1)
    return weights.to(dtype=term.dtype, device=term.device)


def _split_heads(x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    return x.view(x.shape[0], -1, heads, head_dim).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


def token_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Split-head ``query`` ``[batch, heads, queries, head_dim]`` over ``[batch, n, inner]``
    keys and values: ``[batch, queries, inner]``, as a decoupled cross-attention term."""
    heads, head_dim = query.shape[1], query.shape[-1]
    key, value = _split_heads(key, heads, head_dim), _split_heads(value, heads, head_dim)
    return _merge_heads(F.scaled_dot_product_attention(query, key, value)).to(query.dtype)


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
