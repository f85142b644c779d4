"""``WPlusAdapterMixin``: load, scale, unload and feed the W+ adapter on a pipeline.

A pipeline mixes it in before :class:`~adapters.loader.IdentityAdapterMixin` (whose attention
stack it puts its term on) and accepts the two components it registers::

    class PortraitPipeline(WPlusAdapterMixin, IdentityAdapterMixin, DiffusionPipeline, ...):
        model_cpu_offload_seq = "text_encoder->...->wplus_projection->unet->vae"
        _optional_components = [..., "wplus_projection", "wplus_attn"]

        def __init__(self, ..., wplus_projection=None, wplus_attn=None):
            ...
            self.register_modules(..., wplus_projection=wplus_projection, wplus_attn=wplus_attn)

``wplus_projection`` (W+ -> 4 tokens) and ``wplus_attn`` (the per-layer ``to_{q,k,v}_wplus``
weights, shared with the ``"wplus"`` contributions on the UNet's cross-attention layers) are
ordinary components, as ``identity_projection``/``identity_attn`` are: ``save_pretrained``
writes them, ``from_pretrained`` loads them, and registering ``wplus_attn`` puts the W+
contribution on the stack (or takes it off). ``wplus_attn``'s config keeps the W+ scale and
start fraction, so a saved pipeline generates as it did.

A call feeds the W+ tokens through the attention call state: :meth:`encode_wplus` makes them
once per call, :meth:`wplus_call_inputs` gives them to ``attention_call_kwargs`` beside the
identity's, and :meth:`wplus_step_kwargs` turns the term off before the start fraction of the
steps (the published schedule).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adapters.layout import attention_layers, check_components, check_scale, denoiser
from adapters.stack import STATE_KEY, ContributionInput, PortraitAttnProcessor
from adapters.wplus import (
    W_DIM,
    WPLUS,
    WPLUS_ROW_GROUPS,
    WPlusAttention,
    WPlusContribution,
    WPlusSchedule,
    wplus_modules,
)

logger = logging.getLogger(__name__)

COMPONENTS = ("wplus_projection", "wplus_attn")


class WPlusAdapterMixin:
    """The W+ adapter (``wplus_adapter.bin`` of "When StyleGAN Meets Stable Diffusion") for an
    SD1.5 pipeline: ``load_wplus_adapter`` / ``set_wplus_scale`` / ``unload_wplus_adapter``,
    ``encode_wplus`` and the per-call inputs of its attention term. Works beside the identity
    adapter, each with its own scale; unloading one leaves the other."""

    @property
    def wplus_schedule(self) -> WPlusSchedule | None:
        """The loaded W+ adapter's scale and start fraction, or ``None`` without one."""
        component = getattr(self, "wplus_attn", None)
        return None if component is None else component.schedule

    def load_wplus_adapter(
        self,
        pretrained: str | os.PathLike | Mapping,
        *,
        scale: float = 1.0,
        start: float = 0.0,
    ) -> None:
        """Load the published ``wplus_adapter.bin`` (or ``wplus_adapter_stage1.bin``) unmodified.

        Args:
            pretrained: the file (read with ``torch.load(weights_only=True)``) or its dict with
                ``w_proj`` and ``wplus_adapter``.
            scale: the W+ term's strength (the published ``scale``).
            start: fraction of the denoising steps run without W+, as published (e.g. the
                published ``start_embed_step=k`` of ``n`` steps is ``start=(k + 1) / n``).

        Every weight is checked against this pipeline's UNet before anything changes; a loaded
        W+ adapter is replaced, other contributions (the identity adapter) stay.
        """
        check_components(self, COMPONENTS, "W+ adapter")
        check_scale(scale, "W+ scale")
        source = pretrained if isinstance(pretrained, Mapping) else Path(pretrained)
        projection, attention = wplus_modules(
            denoiser(self), source, scale=float(scale), start=float(start)
        )
        self._stack_processors(self._with_wplus(attention))  # raises before anything changes
        if getattr(self, "wplus_attn", None) is not None:
            logger.info("replacing the loaded W+ adapter")
        self.register_modules(wplus_projection=projection, wplus_attn=attention)
        logger.info(
            "loaded the W+ adapter into %d cross-attention layers (scale %s, start %s)",
            len(attention.config.indices),
            scale,
            start,
        )

    def set_wplus_scale(self, scale: float, *, start: float | None = None) -> None:
        """Set the W+ strength and, if given, the start fraction (both kept by save_pretrained).
        Scale 0 is exactly the pipeline without the adapter; the identity adapter is untouched."""
        component = getattr(self, "wplus_attn", None)
        if component is None:
            raise ValueError("no W+ adapter is loaded: call load_wplus_adapter(...) first")
        check_scale(scale, "W+ scale")
        start = component.config.start if start is None else float(start)
        WPlusSchedule(scale=float(scale), start=start)  # checks the start fraction
        component.register_to_config(scale=float(scale), start=start)
        for contribution in self._wplus_contributions():
            contribution.scale = float(scale)

    def unload_wplus_adapter(self) -> None:
        """Drop both W+ components and the W+ term; other contributions stay."""
        if getattr(self, "wplus_attn", None) is None:
            logger.info("no W+ adapter to unload")
            return
        self.register_modules(wplus_projection=None, wplus_attn=None)

    def remove_attention_contribution(self, name: str) -> None:
        """The stack's ``remove_attention_contribution``; ``"wplus"`` unloads the W+ adapter."""
        if name == WPLUS and getattr(self, "wplus_attn", None) is not None:
            self.unload_wplus_adapter()
            return
        super().remove_attention_contribution(name)

    # -- a call ----------------------------------------------------------------------------

    def check_wplus_inputs(self, wplus: Any, wplus_scale: float | None, *, batch_size: int) -> None:
        """Raise unless ``wplus`` fits this call and the pipeline has the W+ adapter."""
        if wplus is None:
            if wplus_scale is not None:
                raise ValueError(
                    "`wplus_scale` was given without `wplus`; pass the person's W+ too (e4e's "
                    "[18, 512] latent), or leave both unset"
                )
            return
        if getattr(self, "wplus_projection", None) is None:
            raise ValueError(
                "`wplus` needs the W+ adapter; load it first with "
                "`pipe.load_wplus_adapter(path)` (the published wplus_adapter.bin)"
            )
        if wplus_scale is not None:
            check_scale(wplus_scale, "`wplus_scale`")
        _wplus_batch(wplus, batch_size, self.wplus_projection.config.w_dim)

    @torch.no_grad()
    def encode_wplus(
        self,
        wplus: torch.Tensor | np.ndarray,
        *,
        batch_size: int,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
    ) -> torch.Tensor:
        """W+ tokens ``[num_images, 4, dim]`` for a call, the negatives (the projection of a
        zero W+, as published) first under classifier-free guidance.

        ``wplus``: ``[18, 512]`` or ``[1 or batch_size, 18, 512]``: one W+ for every prompt or
        one per prompt; each prompt's W+ serves its ``num_images_per_prompt`` images.
        """
        projection = getattr(self, "wplus_projection", None)
        if projection is None:
            raise ValueError("no W+ adapter is loaded: call load_wplus_adapter(...) first")
        w_plus = _wplus_batch(wplus, batch_size, projection.config.w_dim)
        repeats = num_images_per_prompt * (batch_size if len(w_plus) == 1 else 1)
        w_plus = w_plus.repeat_interleave(repeats, dim=0)
        w_plus = w_plus.to(device=projection.device, dtype=projection.dtype)
        return projection.encode(w_plus, do_classifier_free_guidance=do_classifier_free_guidance)

    @staticmethod
    def wplus_call_inputs(
        wplus_tokens: torch.Tensor | None, wplus_scale: float | None
    ) -> dict[str, ContributionInput]:
        """``attention_call_kwargs``' ``extra_inputs`` for the W+ term (empty without tokens).
        ``wplus_scale`` is this call's scale; ``None`` keeps the adapter's."""
        if wplus_tokens is None:
            return {}
        scale = None if wplus_scale is None else float(wplus_scale)
        return {WPLUS: ContributionInput(tokens=wplus_tokens, scale=scale)}

    def wplus_step_kwargs(
        self, cross_attention_kwargs: dict[str, Any] | None, *, step: int, num_steps: int
    ) -> dict[str, Any] | None:
        """The call's ``cross_attention_kwargs`` for denoising step ``step`` of ``num_steps``:
        with the W+ term at scale 0 before the adapter's start fraction, else unchanged."""
        schedule = self.wplus_schedule
        state = (cross_attention_kwargs or {}).get(STATE_KEY)
        inputs = None if state is None else state.inputs.get(WPLUS)
        if schedule is None or inputs is None:
            return cross_attention_kwargs
        if schedule.started(step, num_steps):
            return cross_attention_kwargs
        off = state.with_input(WPLUS, replace(inputs, scale=0.0))
        return {**cross_attention_kwargs, STATE_KEY: off}

    # -- diffusers integration -------------------------------------------------------------

    def register_modules(self, **kwargs) -> None:
        """Registering ``wplus_attn`` (or a new denoiser) puts the W+ term on, or takes it
        off, the attention stack."""
        super().register_modules(**kwargs)
        changed = {"wplus_attn", "unet", "transformer"} & set(kwargs)
        if changed and hasattr(self, "wplus_attn"):
            self._sync_wplus()

    def _wplus_contributions(self) -> list[WPlusContribution]:
        return [
            processor.contribution(WPLUS)
            for processor in denoiser(self).attn_processors.values()
            if isinstance(processor, PortraitAttnProcessor)
            and processor.contribution(WPLUS) is not None
        ]

    def _with_wplus(self, component: WPlusAttention | None) -> dict:
        """The current stack without the W+ term, plus ``component``'s on its layers."""
        stack = {
            name: (base, [c for c in contributions if c.name != WPLUS])
            for name, (base, contributions) in self._stack().items()
        }
        if component is None:
            return stack
        layers = {layer.index: layer for layer in attention_layers(denoiser(self))}
        config = component.config
        for index, hidden, context in zip(
            config.indices, config.hidden_sizes, config.context_dims, strict=True
        ):
            layer = layers.get(index)
            if layer is None or (layer.hidden_size, layer.context_dim) != (hidden, context):
                raise ValueError(
                    f"wplus_attn was built for another UNet: its layer {index} is "
                    f"{hidden} wide over {context}-d tokens, this UNet's is "
                    + (
                        "missing"
                        if layer is None
                        else f"{layer.hidden_size} over {layer.context_dim}-d"
                    )
                    + "; load the adapter again on this pipeline with load_wplus_adapter(...)"
                )
            contribution = WPlusContribution(component.layer(index), scale=config.scale)
            stack[layer.name][1].append(contribution)
        return stack

    def _sync_wplus(self) -> None:
        """Put the registered ``wplus_attn`` on the stack, or take the W+ term off it."""
        if all(getattr(self, name, None) is None for name in ("unet", "transformer")):
            return
        component = getattr(self, "wplus_attn", None)
        if component is None and not self._wplus_contributions():
            return
        self._install(self._with_wplus(component))


def _wplus_batch(wplus: Any, batch_size: int, width: int = W_DIM) -> torch.Tensor:
    """``wplus`` as float32 ``[1 or batch_size, 18, width]`` (512 published), checked."""
    rows = WPLUS_ROW_GROUPS[-1]
    if isinstance(wplus, np.ndarray) and np.issubdtype(wplus.dtype, np.floating):
        wplus = torch.from_numpy(np.array(wplus))
    if not isinstance(wplus, torch.Tensor) or not wplus.is_floating_point():
        found = type(wplus).__name__
        if isinstance(wplus, (torch.Tensor, np.ndarray)):
            found += f" of {wplus.dtype}"
        raise TypeError(
            f"`wplus` must be a float tensor or numpy array [{rows}, {width}] or "
            f"[batch, {rows}, {width}] (e4e's W+), got {found}"
        )
    if wplus.ndim == 2:
        wplus = wplus.unsqueeze(0)
    if wplus.ndim != 3 or tuple(wplus.shape[1:]) != (rows, width):
        raise ValueError(
            f"`wplus` must be [{rows}, {width}] or [batch, {rows}, {width}] (e4e's W+ of the "
            f"aligned face, e.g. the profile's), got {list(wplus.shape)}"
        )
    if wplus.shape[0] not in (1, batch_size):
        raise ValueError(
            f"`wplus` holds {wplus.shape[0]} W+ for {batch_size} prompts; pass one W+ for "
            "every prompt or one per prompt"
        )
    if not torch.isfinite(wplus).all():
        raise ValueError("`wplus` must be finite; it holds NaN or infinite values")
    return wplus.detach().float()
