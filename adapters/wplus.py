"""The W+ adapter ("When StyleGAN Meets Stable Diffusion"): W+ tokens and their attention term.

Published layout (csxmli2016/w-plus-adapter, ``wplus_adapter.bin``): a dict with

- ``w_proj``: :class:`WProjection`, four bias-free linears over the W+ rows 0:4, 4:8, 8:12 and
  12:18 (``proj_0..3.weight``), each making one token of the text width, then a LayerNorm
  (``norm.weight``, ``norm.bias``); the negative tokens are the projection of a zero W+.
- ``wplus_adapter``: per cross-attention layer, keyed by its index in ``attn_processors``
  (``"1.to_q_wplus.weight"``, ``"1.to_k_wplus.weight"``, ``"1.to_v_wplus.weight"`` ...).

On each cross-attention layer, :class:`WPlusContribution` adds, before ``to_out``,

    scale * attn(to_q_wplus(text_attention), to_k_wplus(w_tokens), to_v_wplus(w_tokens))

where ``text_attention`` is that layer's attention over the text (heads merged), so it sits on
the stack as a :attr:`~adapters.stack.Stage.RESIDUAL_ATTENTION` term. Beside the identity
adapter without FaceID LoRA, the two terms are independent and add. The published pipeline sets
the scale to 0 for the first steps (:class:`WPlusSchedule`). The stage-1 release
(``wplus_adapter_stage1.bin``) has the same layout and loads the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from adapters.checkpoint import CheckpointError, load_state_dict
from adapters.layout import attention_layers
from adapters.stack import Contribution, ContributionInput, Stage, token_attention

#: The W+ adapter's contribution name in the attention stack and the call state.
WPLUS = "wplus"
#: Ends of the W+ row groups, one token each (published ``proj_index``).
WPLUS_ROW_GROUPS = (4, 8, 12, 18)
#: (start, end) of each group.
_ROW_SLICES = tuple(zip((0, *WPLUS_ROW_GROUPS[:-1]), WPLUS_ROW_GROUPS, strict=True))
#: Width of W (StyleGAN2 FFHQ).
W_DIM = 512


class WProjection(ModelMixin, ConfigMixin):
    """W+ ``[batch, 18, 512]`` to ``[batch, 4, cross_attention_dim]`` tokens (published
    ``WProjModel``: keys ``proj_0..3.weight``, ``norm.weight``, ``norm.bias``)."""

    @register_to_config
    def __init__(self, cross_attention_dim: int = 768, w_dim: int = W_DIM):
        super().__init__()
        for index, (start, end) in enumerate(_ROW_SLICES):
            linear = nn.Linear(w_dim * (end - start), cross_attention_dim, bias=False)
            self.add_module(f"proj_{index}", linear)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, w_plus: torch.Tensor) -> torch.Tensor:
        rows, width = WPLUS_ROW_GROUPS[-1], self.config.w_dim
        if w_plus.ndim != 3 or tuple(w_plus.shape[1:]) != (rows, width):
            raise ValueError(
                f"W+ must be [batch, {rows}, {width}] (e4e's encode), got {list(w_plus.shape)}"
            )
        w_plus = w_plus.to(self.norm.weight.dtype)
        tokens = [
            getattr(self, f"proj_{i}")(w_plus[:, start:end].flatten(1))
            for i, (start, end) in enumerate(_ROW_SLICES)
        ]
        return self.norm(torch.stack(tokens, dim=1))

    def encode(
        self, w_plus: torch.Tensor, *, do_classifier_free_guidance: bool = True
    ) -> torch.Tensor:
        """Tokens for a denoiser call: negatives (a zero W+, as published) first under CFG."""
        tokens = self(w_plus)
        if not do_classifier_free_guidance:
            return tokens
        return torch.cat([self(torch.zeros_like(w_plus)), tokens])


class WPlusAttnLayer(nn.Module):
    """One cross-attention layer's W+ weights: ``to_q_wplus``, ``to_k_wplus``, ``to_v_wplus``."""

    def __init__(self, hidden_size: int, context_dim: int):
        super().__init__()
        self.to_q_wplus = nn.Linear(hidden_size, hidden_size, bias=False)
        self.to_k_wplus = nn.Linear(context_dim, hidden_size, bias=False)
        self.to_v_wplus = nn.Linear(context_dim, hidden_size, bias=False)


class WPlusAttention(ModelMixin, ConfigMixin):
    """A UNet's W+ attention weights, keyed like the published ``wplus_adapter`` dict: child
    ``str(index)`` per cross-attention layer, ``index`` its place in ``attn_processors``.

    Its config also holds the pipeline's W+ schedule (``scale``, ``start``: see
    :class:`WPlusSchedule`), so a saved pipeline loads with the scale and start it was saved with.
    """

    @register_to_config
    def __init__(
        self,
        indices: list[int],
        hidden_sizes: list[int],
        context_dims: list[int],
        scale: float = 1.0,
        start: float = 0.0,
    ):
        super().__init__()
        WPlusSchedule(scale=scale, start=start)  # checks the start fraction
        for index, hidden, context in zip(indices, hidden_sizes, context_dims, strict=True):
            self.add_module(str(index), WPlusAttnLayer(hidden, context))

    @classmethod
    def for_denoiser(
        cls, model: nn.Module, *, scale: float = 1.0, start: float = 0.0
    ) -> WPlusAttention:
        """Empty weights for every cross-attention layer of ``model``."""
        layers = [layer for layer in attention_layers(model) if layer.is_cross_attention]
        return cls(
            indices=[layer.index for layer in layers],
            hidden_sizes=[layer.hidden_size for layer in layers],
            context_dims=[layer.context_dim for layer in layers],
            scale=scale,
            start=start,
        )

    @property
    def schedule(self) -> WPlusSchedule:
        return WPlusSchedule(scale=self.config.scale, start=self.config.start)

    def layer(self, index: int) -> WPlusAttnLayer | None:
        return self._modules.get(str(index))


class WPlusContribution(Contribution):
    """The W+ term on one cross-attention layer.

    Active in a call whose state holds ``ContributionInput(tokens=...)`` under ``"wplus"``:
    tokens ``[batch, 4, cross_attention_dim]`` from :meth:`WProjection.encode` (negatives first
    under CFG), at a non-zero scale.
    """

    def __init__(self, layer: WPlusAttnLayer, scale: float = 1.0):
        super().__init__(WPLUS, stages=[Stage.RESIDUAL_ATTENTION], scale=scale)
        self.layer = layer

    def is_active(self, inputs: ContributionInput | None, scale: float) -> bool:
        return inputs is not None and inputs.tokens is not None and scale != 0

    def residual_attention_term(
        self, attn: Attention, text_attention: torch.Tensor, inputs: ContributionInput | None
    ) -> torch.Tensor:
        tokens = inputs.tokens
        batch, width = text_attention.shape[0], self.layer.to_k_wplus.in_features
        if tokens.ndim != 3 or tokens.shape[0] != batch or tokens.shape[-1] != width:
            raise ValueError(
                f"W+ tokens must be [batch={batch}, 4, {width}] for this UNet call, got "
                f"{list(tokens.shape)}; with classifier-free guidance pass "
                "WProjection.encode(w_plus, do_classifier_free_guidance=True)'s tokens"
            )
        tokens = tokens.to(text_attention.dtype)
        query = self.layer.to_q_wplus(text_attention)
        head_dim = query.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        return token_attention(query, self.layer.to_k_wplus(tokens), self.layer.to_v_wplus(tokens))


@dataclass(frozen=True)
class WPlusSchedule:
    """The published scale schedule: W+ off for the first steps, then at ``scale``.

    ``start`` is the fraction of the denoising steps run without W+: step ``i`` of ``num_steps``
    takes 0 while ``i < round(start * num_steps)``. The published ``start_embed_step=k``
    (off while ``i <= k``) is ``start=(k + 1) / num_steps``.
    """

    scale: float = 1.0
    start: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.start <= 1.0:
            raise ValueError(
                f"W+ start must be a fraction of the steps in [0, 1], got {self.start}"
            )

    def started(self, step: int, num_steps: int) -> bool:
        """Whether W+ is on at step ``step`` of ``num_steps``."""
        return step >= round(self.start * num_steps)

    def scale_at(self, step: int, num_steps: int) -> float:
        return self.scale if self.started(step, num_steps) else 0.0


def read_wplus_adapter(source: str | Path | Mapping) -> dict[str, dict[str, torch.Tensor]]:
    """The published ``wplus_adapter.bin`` (``torch.load(weights_only=True)``) or its dict,
    checked to hold ``w_proj`` and ``wplus_adapter``."""
    name = "the W+ adapter state dict"
    if isinstance(source, str | Path):
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"W+ adapter {path} does not exist; place wplus_adapter.bin")
        source = load_state_dict(path)
    if not isinstance(source, Mapping) or not all(
        isinstance(source.get(k), Mapping) for k in ("w_proj", "wplus_adapter")
    ):
        found = sorted(source)[:6] if isinstance(source, Mapping) else type(source).__name__
        raise CheckpointError(
            f"{name} is not a W+ adapter: expected a dict with 'w_proj' and 'wplus_adapter' "
            f"(the published wplus_adapter.bin), found {found}"
        )
    return {"w_proj": dict(source["w_proj"]), "wplus_adapter": dict(source["wplus_adapter"])}


def wplus_modules(
    model: nn.Module, source: str | Path | Mapping, *, scale: float = 1.0, start: float = 0.0
) -> tuple[WProjection, WPlusAttention]:
    """The W+ projection and attention weights of ``wplus_adapter.bin`` for the denoiser
    ``model``, on its device and dtype.

    Every published key must be present with the shape this denoiser needs; nothing is
    installed (``WPlusAdapterMixin.load_wplus_adapter`` registers them on a pipeline).
    """
    checkpoint = read_wplus_adapter(source)
    parameter = next(model.parameters())
    attention = WPlusAttention.for_denoiser(model, scale=scale, start=start)
    if not attention.config.indices:
        raise ValueError(
            f"{type(model).__name__} has no cross-attention layers for the W+ adapter to act on"
        )
    proj_0 = checkpoint["w_proj"].get("proj_0.weight")
    # proj_0 reads W+ rows 0:4; a scaled-down W (tiny sets) has its own width
    w_dim = proj_0.shape[1] // WPLUS_ROW_GROUPS[0] if isinstance(proj_0, torch.Tensor) else W_DIM
    projection = WProjection(cross_attention_dim=attention.config.context_dims[0], w_dim=w_dim)
    for module, state, what in (
        (attention, checkpoint["wplus_adapter"], "wplus_adapter"),
        (projection, checkpoint["w_proj"], "w_proj"),
    ):
        _check_keys(module, state, what, source)
        module.load_state_dict(state, strict=True)
    for module in (attention, projection):
        # nn.Module.to: ModelMixin.to warns about fp32-pinned modules even when there are none
        nn.Module.to(module, device=parameter.device, dtype=parameter.dtype).eval()
    return projection, attention


def _check_keys(module: nn.Module, state: Mapping, what: str, source: object) -> None:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k} {found[k]} (expected {v})" for k, v in expected.items() if found.get(k, v) != v]
    if missing or unexpected or wrong:
        origin = source if isinstance(source, str | Path) else "the W+ adapter state dict"
        raise ValueError(
            f"{origin} does not fit this UNet in '{what}': missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, wrong shapes {wrong[:3]}; the published wplus_adapter.bin is "
            "for Stable Diffusion 1.5 (768-d text, 16 cross-attention layers)"
        )
