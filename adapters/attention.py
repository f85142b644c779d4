"""Decoupled identity cross-attention: the identity contribution and its weights component.

:class:`IdentityAttention` holds a published ``ip_adapter`` state dict key for key (child
``"1"`` holds ``1.to_k_ip.weight`` ...), so it saves and loads like any diffusers component.
:class:`IdentityContribution` is the ``"identity"`` contribution of a layer's attention stack
(:mod:`adapters.stack`), borrowing that layer's weights from the component: identity off (no
tokens, or scale 0) leaves the layer untouched; identity on computes

    to_out(attn(q, k_text, v_text) [+ diffusers IP-Adapter terms] + scale * attn(q, k_id, v_id))

with ``k_id = to_k_ip(identity_tokens)``, ``v_id = to_v_ip(identity_tokens)`` and, for FaceID
checkpoints, the published LoRA added to ``to_q/to_k/to_v/to_out`` as the reference does
(``attn.to_q(h) + to_q_lora(h)``; folded into a cached copy of the projection weight while
every row has identity on, or added beside a peft-wrapped projection so the user's LoRA still
applies). :class:`IdentityAttnProcessor` is a layer's stack with the identity contribution in
it, as ``load_identity_adapter`` installs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from adapters.formats import LORA_PROJECTIONS
from adapters.stack import (
    AttentionCallState,
    Contribution,
    ContributionInput,
    PortraitAttnProcessor,
    Stage,
)

#: The identity adapter's contribution name in the attention stack and the call state.
IDENTITY = "identity"


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
        weight or the LoRA weights change (in place or replaced) and is never saved. Inside
        ``torch.compile`` the sum is part of the graph (a cache keyed on storage would break
        the graph and recompile).
        """
        if torch.compiler.is_compiling():
            delta = self.up.weight.float() @ self.down.weight.float()
            return (base.float() + delta).to(base.dtype)
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


class IdentityContribution(Contribution):
    """The identity adapter on one attention layer: FaceID LoRA and decoupled cross-attention.

    Args:
        layer: this layer's weights from :class:`IdentityAttention` (``None``: nothing to add,
            as on InstantID's self-attention layers).
        scale: weight of the identity attention; 0 makes the layer exactly the base model,
            FaceID LoRA included.

    Active in a call whose state holds ``ContributionInput(tokens=...)`` under ``"identity"``:
    tokens ``[batch, num_tokens, cross_attention_dim]`` (negatives first under CFG). Its keys
    and values ``to_k_ip(tokens)``, ``to_v_ip(tokens)`` are computed once per call (see
    :meth:`adapters.stack.AttentionCallState.keys_values`).
    """

    foldable = True

    def __init__(self, layer: IdentityAttnLayer | None, scale: float = 1.0):
        stages = []
        if layer is not None and layer.has_lora:
            stages.append(Stage.PROJECTION)
        if layer is not None and layer.to_k_ip is not None:
            stages.append(Stage.CROSS_ATTENTION)
        super().__init__(IDENTITY, stages=stages, scale=scale)
        self.layer = layer

    def is_active(self, inputs: ContributionInput | None, scale: float) -> bool:
        has_tokens = inputs is not None and inputs.tokens is not None
        return has_tokens and scale != 0 and self.layer is not None

    def folded_weight(self, proj: str, weight: torch.Tensor) -> torch.Tensor:
        return getattr(self.layer, f"{proj}_lora").folded(weight)

    def projection_delta(self, proj: str, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.layer, f"{proj}_lora")(x)

    def token_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layer.to_k_ip.weight, self.layer.to_v_ip.weight

    def token_keys_values(
        self, attn: Attention, inputs: ContributionInput | None, query: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        identity_tokens = inputs.tokens
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
        return self.layer.to_k_ip(tokens), self.layer.to_v_ip(tokens)


class IdentityAttnProcessor(PortraitAttnProcessor):
    """A layer's attention stack with the identity adapter's contribution, first in its stages.

    Args:
        base_processor: the layer's diffusers processor (plain or IP-Adapter), called as is
            while no contribution is active and put back by ``unload_identity_adapter`` when
            nothing else is stacked.
        layer: this layer's weights from :class:`IdentityAttention` (``None``: nothing to add).
        scale: weight of the identity attention; 0 makes the layer exactly the base processor,
            FaceID LoRA included.
        contributions: the layer's other contributions (see :mod:`adapters.stack`).

    Takes the identity tokens from the ``portrait`` call state or, as a shorthand, as
    ``identity_tokens`` ``[batch, num_tokens, cross_attention_dim]``. When diffusers' IP-Adapter
    is loaded too, ``encoder_hidden_states`` is diffusers' ``(text, [image_embeds, ...])`` tuple
    and its image terms are added as ``IPAdapterAttnProcessor2_0`` adds them (masks included).
    """

    def __init__(
        self,
        base_processor: object,
        layer: IdentityAttnLayer | None,
        scale: float = 1.0,
        *,
        contributions: Sequence[Contribution] = (),
        layer_name: str | None = None,
    ):
        identity = IdentityContribution(layer, scale)
        super().__init__(base_processor, (identity, *contributions), layer_name=layer_name)

    @property
    def identity(self) -> IdentityContribution:
        return self.contributions[0]

    @property
    def layer(self) -> IdentityAttnLayer | None:
        return self.identity.layer

    @property
    def scale(self) -> float:
        return self.identity.scale

    @scale.setter
    def scale(self, value: float) -> None:
        self.identity.scale = value

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | tuple | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        portrait: AttentionCallState | None = None,
        identity_tokens: torch.Tensor | None = None,
        ip_adapter_masks: torch.Tensor | list | None = None,
    ) -> torch.Tensor:
        if identity_tokens is not None:
            state = portrait if portrait is not None else AttentionCallState()
            inputs = state.inputs.get(IDENTITY, ContributionInput())
            portrait = state.with_input(IDENTITY, replace(inputs, tokens=identity_tokens))
        return super().__call__(
            attn,
            hidden_states,
            encoder_hidden_states,
            attention_mask,
            temb,
            portrait=portrait,
            ip_adapter_masks=ip_adapter_masks,
        )
