"""Foundation-aware self-attention (FASA, "Foundation Cures Personalization", FreeCure).

An identity model often loses attributes the prompt asked for (hair colour, glasses, ...) that
the base ("foundation") model, run with identity off from the same noise, still draws. FASA
takes them back without training: in chosen self-attention layers and denoising steps, each
personalized *conditional* row's queries attend to its own keys and values **and** to the
foundation row's, with ``+weight`` on the logits of foundation keys inside the attribute mask
and ``-inf`` outside it (the mask resized to the layer's token grid)::

    softmax([q k_own^T * s,  q k_found^T * s + (weight inside mask, -inf outside)]) [v_own; v_found]

Unconditional rows keep plain self-attention (the published ``style_fidelity=1``).

It is one contribution of the attention stack (:mod:`adapters.stack`), a
:attr:`~adapters.stack.Stage.SELF_ATTENTION` editor appending keys and values, so the identity
adapter (with its FaceID LoRA), the W+ term and diffusers' IP-Adapter keep running in the same
layers (the reference code replaces ``Attention.forward`` and bypasses them).

A repair records in one run and applies in the same or a second one, sharing one
:class:`FasaSession`:

1. **record** (pass 1): at the chosen (step, layer) pairs, the foundation conditional rows' keys
   and values are kept in the session (the last ``num_images`` rows of the batch, which is
   where the foundation's conditional rows are both in a batch ``[personalized, foundation]``
   and in a foundation-only call); :class:`AttentionMaps` records the foundation's
   cross-attention maps of attribute tokens, the fallback mask source.
2. **apply** (pass 2, personalized rows only): the editor appends the recorded keys/values of
   the masked tokens to the personalized conditional rows. An empty mask changes nothing.

A **live** session (an in-run repair) records no keys: its batch is ``[personalized,
foundation]`` throughout, and once :meth:`FasaSession.apply` gives the masks (mid-run), the
personalized conditional rows (the ``num_images`` rows before the last ``num_images``) take the
same step's foundation keys/values straight from the batch.

Published defaults (FreeCure's SDXL and SD1.x examples): every step; SDXL the last 20
transformer blocks' self-attention (the reference's attention-call indices 100-139: from
``up_blocks.0.attentions.1.transformer_blocks.6`` to the end), ``weight`` 1.5; SD1.x
``up_blocks.2`` and ``up_blocks.3`` (the last 6 of 16), ``weight`` 0.5. Other UNets take the same
share of their self-attention layers, counted from the end in call order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.image_processor import IPAdapterMaskProcessor
from diffusers.models.attention_processor import Attention
from torch import nn

from adapters.layout import AttentionLayer, attention_layers
from adapters.stack import Contribution, ContributionInput, Stage

#: FASA's contribution name in the attention stack and the call state.
FASA = "fasa"
#: The cross-attention map recorder's contribution name.
ATTENTION_MAPS = "fasa-maps"
#: Published (self-attention layers chosen, self-attention layers in all, weight) per family.
PUBLISHED = {"sdxl": (20, 70, 1.5), "sd1": (6, 16, 0.5)}
#: Side of the grid the cross-attention maps are averaged at.
MAP_SIDE = 32


@dataclass(frozen=True)
class FasaConfig:
    """Where and how strongly FASA acts.

    Attributes:
        layers: self-attention layer names (``attn_processors`` keys); ``None``: the published
            choice for the UNet (:func:`default_fasa_layers`).
        start: first step, as a fraction of the denoising steps (published: 0).
        end: end of the step range (exclusive), a fraction (published: 1).
        weight: ``w`` added to the logits of foundation keys inside the mask; ``None``: the
            published value for the UNet (SDXL 1.5, SD1.x 0.5).
    """

    layers: tuple[str, ...] | None = None
    start: float = 0.0
    end: float = 1.0
    weight: float | None = None

    def __post_init__(self):
        if not 0.0 <= self.start < self.end <= 1.0:
            raise ValueError(
                f"FASA step range must satisfy 0 <= start < end <= 1 (fractions of the steps), "
                f"got start={self.start}, end={self.end}"
            )
        if self.weight is not None and not math.isfinite(self.weight):
            raise ValueError(f"FASA weight must be a finite number, got {self.weight!r}")

    def step_range(self, num_steps: int) -> range:
        """The step indices FASA acts on in a run of ``num_steps``."""
        return range(round(self.start * num_steps), round(self.end * num_steps))


def is_sdxl(unet: nn.Module) -> bool:
    return getattr(unet.config, "addition_embed_type", None) == "text_time"


def self_attention_layers(unet: nn.Module) -> list[AttentionLayer]:
    """The self-attention layers in the order a forward pass calls them (down, mid, up)."""
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    layers = [layer for layer in attention_layers(unet) if not layer.is_cross_attention]
    return sorted(layers, key=lambda layer: (order.get(layer.name.split(".")[0], 3), layer.index))


def default_fasa_layers(unet: nn.Module) -> tuple[str, ...]:
    """The published layer choice: the last 20 of SDXL's 70 self-attention layers, the last 6
    of SD1.x's 16 (``up_blocks.2-3``); the same share, at least one, on other UNets."""
    layers = self_attention_layers(unet)
    chosen, total, _ = PUBLISHED["sdxl" if is_sdxl(unet) else "sd1"]
    count = chosen if len(layers) == total else max(1, round(len(layers) * chosen / total))
    return tuple(layer.name for layer in layers[-count:])


def default_fasa_weight(unet: nn.Module) -> float:
    return PUBLISHED["sdxl" if is_sdxl(unet) else "sd1"][2]


class FasaSession:
    """One repair's shared state: the step, the recorded foundation keys/values and maps.

    Args:
        num_images: images per run; their conditional rows are the last ``num_images`` rows of
            each denoiser batch.
        steps: the step indices FASA records and acts on.
        weight: ``w`` on the logits of masked foundation keys.
        layers: the self-attention layers (``attn_processors`` names) it records and acts on.
        live: the foundation rows stay in the batch (an in-run repair): nothing is recorded, and
            after :meth:`apply` the foundation keys/values come from the same call.
    """

    def __init__(
        self,
        *,
        num_images: int,
        steps: range,
        weight: float,
        layers: Sequence[str],
        live: bool = False,
    ):
        self.num_images = num_images
        self.live = live
        self.steps = steps
        self.layers = frozenset(layers)
        self.weight = float(weight)
        self.step = 0
        self.recording = True
        self.keys_values: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.masks: torch.Tensor | None = None
        self._grid_masks: dict[int, torch.Tensor] = {}
        self.maps = MapRecording()

    @property
    def acting(self) -> bool:
        """Whether this step is one FASA records or acts on."""
        return self.step in self.steps

    def apply(self, masks: torch.Tensor) -> None:
        """Act from now on with ``masks`` ``[num_images, 1, H, W]`` in ``[0, 1]`` (at image
        size; one per personalized image, the union of its attributes): pass 2 from its first
        step, or a live session from its next step."""
        if masks.ndim != 4 or masks.shape[:2] != (self.num_images, 1):
            raise ValueError(
                f"FASA masks must be [{self.num_images}, 1, H, W] (one per image), got "
                f"{list(masks.shape)}"
            )
        self.recording = False
        self.masks = masks
        self._grid_masks = {}
        if not self.live:
            self.step = 0

    def grid_mask(self, tokens: int) -> torch.Tensor:
        """``[num_images, tokens]`` bool: the masks on a layer's token grid, made once."""
        if tokens not in self._grid_masks:
            weights = IPAdapterMaskProcessor.downsample(
                self.masks[:, 0].float(), self.num_images, tokens, 1
            )
            self._grid_masks[tokens] = weights[..., 0] > 0.5
        return self._grid_masks[tokens]


@dataclass(frozen=True)
class FasaInput(ContributionInput):
    """FASA's input for one call: the :class:`ContributionInput` plus the repair's session.

    In pass 2 ``rows`` names the personalized conditional rows (the stack keeps every other row
    exactly as without FASA).
    """

    session: FasaSession | None = None


class FoundationAwareSelfAttention(Contribution):
    """FASA on one self-attention layer (``layer_name``: its key in the session's records).

    Put on every self-attention layer once; it acts only in calls carrying a session, on the
    session's layers and steps (elsewhere the layer is exactly as without it)."""

    def __init__(self, layer_name: str):
        super().__init__(FASA, stages=[Stage.SELF_ATTENTION])
        self.layer_name = layer_name

    def is_active(self, inputs: ContributionInput | None, scale: float) -> bool:
        session = getattr(inputs, "session", None)
        if session is None or scale == 0 or not session.acting:
            return False
        if self.layer_name not in session.layers:
            return False
        if session.recording:
            return not session.live
        return bool(session.masks.any())

    def edit_self_attention(self, attn, query, key, value, bias, inputs, scale):
        session: FasaSession = inputs.session
        n = session.num_images
        if session.recording:
            keep = (key[-n:].detach(), value[-n:].detach())
            session.keys_values[(session.step, self.layer_name)] = keep
            return key, value, bias
        batch = key.shape[0]
        if session.live:  # the foundation's conditional rows are the batch's last n
            found_key, found_value = key[-n:], value[-n:]
            target = slice(batch - 2 * n, batch - n)
        else:
            found_key, found_value = self._recorded(session, key)
            target = slice(batch - n, batch)
        inside = session.grid_mask(key.shape[2]).to(key.device)  # [n, tokens]
        tokens = inside.any(dim=0).nonzero()[:, 0]
        if tokens.numel() == 0:
            return key, value, bias
        appended_key = key.new_zeros((batch, key.shape[1], len(tokens), key.shape[3]))
        appended_value = value.new_zeros((batch, value.shape[1], len(tokens), value.shape[3]))
        appended_key[target] = found_key[:, :, tokens].to(key.dtype)
        appended_value[target] = found_value[:, :, tokens].to(value.dtype)
        logits = torch.full((batch, len(tokens)), float("-inf"), dtype=query.dtype)
        logits = logits.to(query.device)
        logits[target] = torch.where(inside[:, tokens], session.weight, float("-inf")).to(logits)
        own = query.new_zeros((batch, key.shape[2]))
        new_bias = torch.cat([own, logits], dim=1)[:, None, None, :]
        if bias is not None:
            own_bias = bias.expand(batch, -1, query.shape[2], -1)
            extra = new_bias[..., key.shape[2] :].expand(batch, own_bias.shape[1], -1, -1)
            new_bias = torch.cat([own_bias, extra], dim=-1)
        return torch.cat([key, appended_key], 2), torch.cat([value, appended_value], 2), new_bias

    def _recorded(self, session: FasaSession, key: torch.Tensor):
        recorded = session.keys_values.get((session.step, self.layer_name))
        if recorded is None:
            raise ValueError(
                f"FASA has no foundation keys for step {session.step} of {self.layer_name}; "
                "run pass 1 with the same steps and layers before pass 2"
            )
        if recorded[0].shape[1:] != key.shape[1:]:
            raise ValueError(
                f"foundation keys {list(recorded[0].shape)} at {self.layer_name} do not fit this "
                f"call's keys {list(key.shape)}; pass 2 must use pass 1's size"
            )
        return recorded


@dataclass
class MapRecording:
    """Cross-attention maps of attribute tokens, summed per token grid (``tokens`` -> sums)."""

    sums: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)

    def add(self, tokens: int, maps: Mapping[str, torch.Tensor]) -> None:
        sums = self.sums.setdefault(tokens, {})
        for name, value in maps.items():
            sums[name] = sums[name] + value if name in sums else value
        self.counts[tokens] = self.counts.get(tokens, 0) + 1

    def averaged(self, height: int, width: int) -> dict[str, torch.Tensor]:
        """Per attribute ``[num_images, MAP_SIDE, MAP_SIDE]``: the mean over steps and layers
        of the token grid nearest ``MAP_SIDE``² (the grid whose maps the published methods
        average), each resampled to ``MAP_SIDE`` square."""
        if not self.sums:
            return {}
        tokens = min(self.sums, key=lambda t: abs(math.log(t / MAP_SIDE**2)))
        out = {}
        for name, total in self.sums[tokens].items():
            grid = _grid(total / self.counts[tokens], height, width)  # [n, h, w]
            out[name] = F.interpolate(grid[:, None], (MAP_SIDE, MAP_SIDE), mode="bilinear")[:, 0]
        return out


@dataclass(frozen=True)
class MapInput(ContributionInput):
    """:class:`AttentionMaps`' input: ``tokens`` are the foundation's conditional prompt
    embeddings ``[num_images, length, dim]``; ``token_indices`` each attribute's positions."""

    session: FasaSession | None = None
    token_indices: Mapping[str, Sequence[int]] = field(default_factory=dict)


class AttentionMaps(Contribution):
    """Records, during pass 1, the foundation conditional rows' cross-attention probabilities of
    each attribute's tokens (mean over heads, summed over the attribute's tokens). Adds nothing."""

    def __init__(self):
        super().__init__(ATTENTION_MAPS, stages=[Stage.CROSS_ATTENTION])

    def is_active(self, inputs: ContributionInput | None, scale: float) -> bool:
        session = getattr(inputs, "session", None)
        return (
            session is not None
            and session.recording
            and inputs.tokens is not None
            and bool(inputs.token_indices)
        )

    def token_weights(self):
        return ()

    def cross_attention_term(self, attn: Attention, query: torch.Tensor, inputs: MapInput):
        session: FasaSession = inputs.session
        n = session.num_images
        text = inputs.tokens.to(device=query.device, dtype=query.dtype)
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        keys = attn.to_k(text)
        heads, head_dim = query.shape[1], query.shape[-1]
        keys = keys.view(n, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_k is not None:
            keys = attn.norm_k(keys)
        logits = query[-n:] @ keys.transpose(-1, -2) * attn.scale
        probs = logits.float().softmax(dim=-1).mean(dim=1)  # [n, queries, length]
        maps = {
            name: probs[..., list(indices)].sum(dim=-1).cpu()
            for name, indices in inputs.token_indices.items()
        }
        session.maps.add(query.shape[2], maps)
        return None


def _grid(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[n, tokens]`` maps as ``[n, h, w]`` with ``h / w`` the image's aspect."""
    tokens = maps.shape[1]
    for h in range(1, tokens + 1):
        if tokens % h == 0 and h * width >= (tokens // h) * height:
            return maps.view(maps.shape[0], h, tokens // h)
    return maps.view(maps.shape[0], 1, tokens)
