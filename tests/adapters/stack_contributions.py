"""Two small contributions for the attention-stack tests: a FASA-like self-attention editor that
appends learned keys/values with a logits bias, and a decoupled cross-attention term."""

from __future__ import annotations

import torch
from torch import nn

from adapters.stack import Contribution, ContributionInput, Stage, token_attention


def _random(shape: tuple[int, ...], seed: int) -> nn.Parameter:
    generator = torch.Generator().manual_seed(seed)
    return nn.Parameter(torch.randn(shape, generator=generator) / shape[-1] ** 0.5)


class AppendedKeys(Contribution):
    """Self-attention editor: ``tokens`` learned keys/values appended, their logits + ``scale``."""

    def __init__(self, width: int, *, name: str = "appended", tokens: int = 3, seed: int = 0):
        super().__init__(name, stages=[Stage.SELF_ATTENTION])
        self.key = _random((tokens, width), seed)
        self.value = _random((tokens, width), seed + 1)

    def edit_self_attention(self, attn, query, key, value, bias, inputs, scale):
        batch, heads, queries, head_dim = query.shape
        extra_key = self.key.view(1, -1, heads, head_dim).transpose(1, 2).expand(batch, -1, -1, -1)
        extra_value = self.value.view(1, -1, heads, head_dim).transpose(1, 2)
        extra_value = extra_value.expand(batch, -1, -1, -1)
        length = key.shape[2]
        edited = torch.zeros(batch, 1, queries, length + extra_key.shape[2], dtype=query.dtype)
        edited[..., length:] = scale
        if bias is not None:
            edited[..., :length] = edited[..., :length] + bias
        key = torch.cat([key, extra_key.to(key.dtype)], dim=2)
        value = torch.cat([value, extra_value.to(value.dtype)], dim=2)
        return key, value, edited


class ExtraTokens(Contribution):
    """Decoupled cross-attention term over this call's ``tokens``, with its own ``to_k/to_v``."""

    def __init__(self, hidden: int, context: int, *, name: str = "extra", seed: int = 0):
        super().__init__(name, stages=[Stage.CROSS_ATTENTION])
        self.to_k = nn.Linear(context, hidden, bias=False)
        self.to_v = nn.Linear(context, hidden, bias=False)
        self.to_k.weight = _random((hidden, context), seed)
        self.to_v.weight = _random((hidden, context), seed + 1)

    def is_active(self, inputs: ContributionInput | None, scale: float) -> bool:
        return inputs is not None and inputs.tokens is not None and scale != 0

    def cross_attention_term(self, attn, query, inputs):
        tokens = inputs.tokens.to(query.dtype)
        return token_attention(query, self.to_k(tokens), self.to_v(tokens))


def self_attention_editors(layers) -> dict:
    """One :class:`AppendedKeys` per self-attention layer of ``attention_layers(...)``."""
    return {
        layer.name: AppendedKeys(layer.hidden_size, seed=layer.index)
        for layer in layers
        if not layer.is_cross_attention
    }


def cross_attention_terms(layers) -> dict:
    """One :class:`ExtraTokens` per cross-attention layer."""
    return {
        layer.name: ExtraTokens(layer.hidden_size, layer.context_dim, seed=layer.index)
        for layer in layers
        if layer.is_cross_attention
    }
