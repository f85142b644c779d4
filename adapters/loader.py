"""``IdentityAdapterMixin``: load, scale, unload and encode identity adapters on a pipeline.

A pipeline that mixes it in lists it *before* ``DiffusionPipeline`` and accepts the two
components it registers, as diffusers' IP-Adapter pipelines accept ``image_encoder``::

    class PortraitPipeline(IdentityAdapterMixin, DiffusionPipeline, StableDiffusionMixin, ...):
        model_cpu_offload_seq = "text_encoder->identity_projection->unet->vae"
        _optional_components = [..., "identity_projection", "identity_attn"]

        def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, ...,
                     identity_projection=None, identity_attn=None):
            super().__init__()
            self.register_modules(..., identity_projection=identity_projection,
                                  identity_attn=identity_attn)

``identity_projection`` (embedding -> tokens) and ``identity_attn`` (the per-layer
``to_k_ip``/``to_v_ip``/LoRA weights, shared with the processors installed on the UNet) are
ordinary components: ``save_pretrained`` writes them (and a clean UNet), ``from_pretrained``
loads them and registering ``identity_attn`` re-installs the identity contribution.

The identity adapter is one named contribution (``"identity"``) of the attention stack
(:mod:`adapters.stack`); other techniques are added, listed and removed by name with
``add_attention_contribution`` / ``attention_contributions`` / ``remove_attention_contribution``
and every loader verb leaves the others in place. A pipeline builds each denoiser call's
``cross_attention_kwargs`` with :meth:`IdentityAdapterMixin.attention_call_kwargs`: identity
tokens, this call's scale and the rows with identity on reach the stack in one
``AttentionCallState`` under ``"portrait"``, never inside the prompt embeddings.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline

from adapters.attention import (
    IDENTITY,
    IdentityAttention,
    IdentityAttnProcessor,
    IdentityContribution,
)
from adapters.checkpoint import load_state_dict
from adapters.formats import (
    ARCHITECTURES,
    Architecture,
    IdentityAdapterError,
    family_architecture,
    inspect_checkpoint,
    match_unet,
    split_checkpoint,
)
from adapters.layout import (
    AttentionLayer,
    attention_layers,
    check_components,
    check_scale,
    denoiser,
    layer_scales,
)
from adapters.stack import (
    STATE_KEY,
    AttentionCallState,
    Contribution,
    ContributionInput,
    PortraitAttnProcessor,
)

logger = logging.getLogger(__name__)

#: Architecture name -> the projection class that loads its ``image_proj``.
PROJECTIONS = {architecture.name: architecture.projection for architecture in ARCHITECTURES}
COMPONENTS = ("identity_projection", "identity_attn")
#: Largest tolerated deviation of an identity embedding's L2 norm from 1 (fp16/bf16 rounding).
UNIT_NORM_TOLERANCE = 1e-2


ADAPTER_COMPONENTS = ("identity_projection", "identity_attn", "wplus_projection", "wplus_attn")
"""The adapters' components, typed ``ModelMixin`` in the pipelines' signatures."""


class IdentityAdapterMixin:
    """Identity adapters (IP-Adapter-FaceID, FaceID-PlusV2, InstantID) for diffusers pipelines.

    ``load_identity_adapter`` / ``set_identity_scale`` / ``unload_identity_adapter``,
    ``encode_identity`` and ``attention_call_kwargs``; the attention stack's
    ``add_attention_contribution`` / ``remove_attention_contribution`` /
    ``attention_contributions``. Works beside diffusers' own IP-Adapter (``load_ip_adapter`` and
    its scale/unload methods are wrapped so its processors stay the stack's base) and beside
    peft LoRA. The denoiser is ``pipe.unet`` (or ``pipe.transformer``).
    """

    @classmethod
    def from_pipe(cls, pipeline, **kwargs: Any):
        """diffusers' ``from_pipe``, also handing over the identity and W+ adapters' components
        (diffusers hands over a model only when its class is the one the signature names), so
        a derived pipeline shares them."""
        accepted = inspect.signature(cls.__init__).parameters
        for name in ADAPTER_COMPONENTS:
            if name in accepted:
                kwargs.setdefault(name, getattr(pipeline, name, None))
        return super().from_pipe(pipeline, **kwargs)

    @property
    def identity_family(self) -> str | None:
        """The loaded adapter's family (``faceid-sd15``, ``faceid-plusv2-sd15``,
        ``faceid-sdxl``, ``faceid-plusv2-sdxl``, ``instantid``), or ``None``."""
        component = getattr(self, "identity_attn", None)
        return None if component is None else component.config.family

    @property
    def identity_architecture(self) -> Architecture | None:
        """The loaded adapter's :class:`~adapters.formats.Architecture` (e.g. whether it takes
        CLIP features: ``takes_clip_features``), or ``None``."""
        family = self.identity_family
        return None if family is None else family_architecture(family)

    def load_identity_adapter(
        self, pretrained: str | os.PathLike | Mapping, *, scale: float | dict = 1.0
    ) -> None:
        """Load a published identity adapter checkpoint unmodified.

        Args:
            pretrained: a ``.bin``/``.safetensors`` file (read without unpickling code) or an
                already-loaded state dict, nested (``{"image_proj": ..., "ip_adapter": ...}``)
                or flat with ``image_proj.``/``ip_adapter.`` prefixes.
            scale: identity strength, a float or a per-block dict as for
                :meth:`set_identity_scale`.

        The family is read from key names and shapes and every weight is checked against this
        pipeline's UNet before anything changes; a mismatch (an SDXL adapter on an SD1.5 UNet,
        a truncated file, ...) raises :class:`IdentityAdapterError` naming the expected and the
        found shapes. A loaded adapter is replaced.

        FaceID checkpoints carry a rank-128 LoRA of every attention layer, trained together
        with the identity branch; it is applied exactly as the reference implementation does
        (added to ``to_q/to_k/to_v/to_out``), on the layers and steps where identity is on (a
        layer at scale 0, or a call without identity tokens, is the untouched base model). Do
        not also load the separate ``*_lora.safetensors`` (that is the same LoRA for WebUIs).
        FaceID-Plus V1 and V2 files share one layout; both load as V2 (shortcut on).
        """
        self._check_identity_pipeline_class()
        if isinstance(pretrained, Mapping):
            source, state_dict = "identity adapter state dict", pretrained
        else:
            source, state_dict = str(pretrained), load_state_dict(pretrained)
        image_proj, ip_adapter = split_checkpoint(state_dict, source)
        spec = inspect_checkpoint(image_proj, ip_adapter, source)
        model = denoiser(self)
        layers = attention_layers(model)
        sdxl = getattr(model.config, "addition_embed_type", None) == "text_time"
        spec = match_unet(spec, image_proj, ip_adapter, layers, sdxl=sdxl, source=source)

        projection = PROJECTIONS[spec.architecture](**spec.projection_config)
        projection.load_state_dict(image_proj, strict=True)
        attention = IdentityAttention(
            family=spec.family,
            processor_names=[layer.name for layer in layers],
            hidden_sizes=[layer.hidden_size for layer in layers],
            context_dims=[layer.context_dim for layer in layers],
            cross_attention=[layer.is_cross_attention for layer in layers],
            lora_rank=spec.lora_rank,
        )
        attention.load_state_dict(ip_adapter, strict=True)
        for component in (projection, attention):
            # nn.Module.to: ModelMixin.to warns about fp32-pinned modules even when there are none
            torch.nn.Module.to(component, device=model.device, dtype=model.dtype).eval()
        # Both raise here, before anything changes, on an unsupported processor or a bad scale.
        scales = self._layer_scales(scale)
        self._stack_processors(self._with_identity(attention, scales))

        if self.identity_family is not None:
            logger.info("replacing the loaded %s identity adapter", self.identity_family)
        self.register_modules(identity_projection=projection, identity_attn=attention)
        for name, processor in self._identity_processors().items():
            processor.scale = scales[name]
        logger.info(
            "loaded %s identity adapter from %s: %d tokens into %d cross-attention layers%s",
            spec.family,
            source,
            spec.num_tokens,
            len(spec.ip_layers),
            f", FaceID LoRA rank {spec.lora_rank} on {len(spec.lora_layers)} layers"
            if spec.lora_rank
            else "",
        )

    def set_identity_scale(self, scale: float | dict) -> None:
        """Set the identity strength: one float, or per block like ``set_ip_adapter_scale``.

        A dict such as ``{"down": 0.0, "mid": 0.5, "up": {"block_0": [0.0, 1.0, 1.0]}}`` sets
        each transformer block's layers (self- and cross-attention); blocks it leaves out get 0.
        A layer at 0 is exactly the UNet without the adapter. Other contributions are untouched.
        """
        processors = self._identity_processors()
        if not processors:
            raise IdentityAdapterError(
                "no identity adapter is loaded: call load_identity_adapter(...) first"
            )
        scales = self._layer_scales(scale)
        for name, processor in processors.items():
            processor.scale = scales[name]

    def unload_identity_adapter(self) -> None:
        """Drop both components and the identity contribution; other contributions stay, and a
        layer left with none gets its previous processor back."""
        if self.identity_family is None:
            logger.info("no identity adapter to unload")
            return
        self.register_modules(identity_projection=None, identity_attn=None)

    def check_identity_rows(self, identity_rows: Sequence[bool] | None, *, num_images: int) -> None:
        """Raise unless ``identity_rows`` is ``None`` or one bool per generated image."""
        if identity_rows is None:
            return
        rows = identity_rows.tolist() if hasattr(identity_rows, "tolist") else identity_rows
        if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
            rows = None
        if rows is None or not all(isinstance(row, bool) for row in rows):
            raise ValueError(
                "`identity_rows` must be a list of bools, one per generated image (True: with "
                f"the identity), got {identity_rows!r}"
            )
        if len(rows) != num_images:
            raise ValueError(
                f"`identity_rows` has {len(rows)} values but this call generates {num_images} "
                "images (prompts x num_images_per_prompt); pass one bool per image"
            )

    def attention_call_kwargs(
        self,
        cross_attention_kwargs: dict[str, Any] | None,
        *,
        identity_tokens: torch.Tensor | None = None,
        identity_scale: float | dict | None = None,
        identity_rows: Sequence[bool] | None = None,
        extra_inputs: Mapping[str, ContributionInput] | None = None,
    ) -> dict[str, Any] | None:
        """The denoiser's ``cross_attention_kwargs`` for one call, with the identity inputs.

        Args:
            cross_attention_kwargs: the caller's (e.g. ``{"scale": 0.5}`` for LoRA, or an
                ``AttentionCallState`` under ``"portrait"`` with other contributions' inputs);
                kept, never changed in place.
            identity_tokens: ``encode_identity``'s tokens (``None``: no identity this call).
            identity_scale: this call's identity scale, as ``set_identity_scale`` takes it;
                the pipeline's scale is not changed. ``None`` keeps it.
            identity_rows: one bool per generated image: which images get the identity (the
                FaceID LoRA included, and every ``extra_inputs`` term that names no rows of its
                own, such as W+); under classifier-free guidance each negative row follows its
                image. ``None``: every image.
            extra_inputs: other contributions' inputs for this call, by contribution name (e.g.
                the W+ adapter's ``"wplus"``).

        Returns:
            ``cross_attention_kwargs`` plus ``"portrait"``: an ``AttentionCallState`` with the
            identity's and ``extra_inputs``' ``ContributionInput``; unchanged without either.
        """
        extra_inputs = dict(extra_inputs or {})
        if IDENTITY in extra_inputs:
            raise ValueError(
                f"{IDENTITY!r} is the identity adapter's input: pass `identity_tokens`, not "
                "`extra_inputs`"
            )
        if identity_tokens is None:
            if identity_scale is not None or identity_rows is not None:
                raise ValueError("`identity_scale` and `identity_rows` need identity tokens")
            if not extra_inputs:
                return cross_attention_kwargs
        kwargs = dict(cross_attention_kwargs or {})
        state = kwargs.get(STATE_KEY)
        if state is None:
            state = AttentionCallState()
        elif not isinstance(state, AttentionCallState):
            raise TypeError(
                f"cross_attention_kwargs[{STATE_KEY!r}] must be an AttentionCallState, got "
                f"{type(state).__name__}"
            )
        rows = None
        if identity_tokens is not None and identity_rows is not None:
            rows = self._denoiser_rows(identity_rows, len(identity_tokens))
        for name, inputs in extra_inputs.items():
            if rows is not None and inputs.rows is None:
                inputs = replace(inputs, rows=rows)
            state = state.with_input(name, inputs)
        if identity_tokens is not None:
            scale = identity_scale
            if isinstance(identity_scale, dict):
                scale = self._layer_scales(identity_scale)
            elif identity_scale is not None:
                check_scale(identity_scale, "identity scale")
            inputs = ContributionInput(tokens=identity_tokens, scale=scale, rows=rows)
            state = state.with_input(IDENTITY, inputs)
        kwargs[STATE_KEY] = state
        return kwargs

    def identity_row_mask(
        self, identity_rows: Sequence[bool] | None, *, batch_size: int, device: torch.device
    ) -> torch.Tensor | None:
        """``[batch_size, 1, 1, 1]`` bool mask of the denoiser rows with identity on.

        For what runs outside the attention stack on identity (InstantID's IdentityNet): its
        residuals times this mask are zero on identity-off rows, so those rows are exactly a
        run without it. ``None`` when every row has identity.
        """
        if identity_rows is None or all(identity_rows):
            return None
        rows = self._denoiser_rows(identity_rows, batch_size)
        return torch.tensor(rows, device=device).view(-1, 1, 1, 1)

    # -- the attention stack: contributions by name --------------------------------------------

    def attention_contributions(self) -> list[str]:
        """Names of the contributions stacked on the denoiser's attention layers, in order."""
        names: dict[str, None] = {}
        for _, contributions in self._stack().values():
            names.update(dict.fromkeys(c.name for c in contributions))
        return list(names)

    def add_attention_contribution(
        self,
        contribution: Contribution | Mapping[str, Contribution],
        *,
        layers: Iterable[str] | Callable[[AttentionLayer], bool] | None = None,
    ) -> None:
        """Stack a contribution on attention layers, after those already there in its stages.

        Args:
            contribution: one :class:`~adapters.stack.Contribution` for every chosen layer, or a
                dict of layer name -> contribution (one name for all, e.g. per-layer weights).
            layers: with one contribution, the layers: ``attn_processors`` names, or a test on
                each :class:`~adapters.layout.AttentionLayer`; ``None`` for every layer.

        Its name must be new (``remove_attention_contribution`` first to replace one); the
        identity adapter's ``"identity"`` is added by ``load_identity_adapter``.
        """
        stack = self._stack()
        per_layer = self._contribution_layers(contribution, layers, stack)
        name = next(iter(per_layer.values())).name
        if name == IDENTITY:
            raise ValueError(
                f"{IDENTITY!r} is the identity adapter's contribution: load it with "
                "load_identity_adapter(...)"
            )
        if name in self.attention_contributions():
            raise ValueError(
                f"an attention contribution named {name!r} is already stacked; remove it first "
                f"with remove_attention_contribution({name!r})"
            )
        for layer_name, item in per_layer.items():
            stack[layer_name][1].append(item)
        self._install(stack)

    def remove_attention_contribution(self, name: str) -> None:
        """Remove a contribution from every layer (``"identity"``: ``unload_identity_adapter``)."""
        names = self.attention_contributions()
        if name not in names:
            raise ValueError(f"no attention contribution named {name!r}; stacked: {names}")
        if name == IDENTITY:
            self.unload_identity_adapter()
            return
        stack = {
            layer: (base, [c for c in contributions if c.name != name])
            for layer, (base, contributions) in self._stack().items()
        }
        self._install(stack)

    @torch.no_grad()
    def encode_identity(
        self,
        identity_embeds: torch.Tensor,
        *,
        num_images: int,
        do_classifier_free_guidance: bool,
        clip_image_embeds: torch.Tensor | None = None,
        negative_clip_image_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Identity tokens for :meth:`attention_call_kwargs` (and InstantID's IdentityNet).

        Args:
            identity_embeds: ``[num_refs, 512]`` (or ``[512]``) ArcFace embeddings, one row
                per reference photo, a tensor or a numpy array: unit-norm (insightface's
                ``face.normed_embedding``) or raw (``face.embedding``).
            num_images: images generated in this call (prompts x images per prompt).
            do_classifier_free_guidance: prepend the negative tokens.
            clip_image_embeds: FaceID-PlusV2 only: CLIP ViT-H penultimate hidden states of the
                aligned face crops, ``[num_refs, 257, 1280]``
                (``image_encoder(pixels, output_hidden_states=True).hidden_states[-2]``).
            negative_clip_image_embeds: FaceID-PlusV2 only: the same for a black image, as the
                reference uses for the negative tokens; zeros if not given.

        Returns:
            ``[num_images, N, cross_attention_dim]``, or ``[2 * num_images, ...]`` with the
            negatives first under classifier-free guidance; dtype and device of the projection.

        Several references are combined into one identity: the normalised mean of their
        embeddings (and, for PlusV2, the mean of their CLIP features), so the token count stays
        the one the adapter was trained with. Negative tokens are the projection of a zero
        embedding, as in IP-Adapter. InstantID was trained on insightface's raw
        ``face.embedding`` (components roughly standard-normal), so its unit-norm input is
        rescaled to norm ``sqrt(512)`` ~ 22.6, the typical raw norm; raw embeddings go in as they
        are (their mean), as InstantID's reference pipeline feeds ``face.embedding``. FaceID's
        references feed unit-norm embeddings: raw ones are normalised first. The tokens never
        require grad (the projection runs without autograd).
        """
        projection = getattr(self, "identity_projection", None)
        if projection is None:
            raise IdentityAdapterError(
                "no identity adapter is loaded: call load_identity_adapter(...) first"
            )
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be a positive int, got {num_images!r}")
        config, family = projection.config, self.identity_family
        references, raw = _references(identity_embeds, config.id_embed_dim, family)
        architecture = self.identity_architecture
        if raw and architecture.trained_on_raw_embeddings:
            embeds = references.mean(dim=0, keepdim=True)  # fed as the reference feeds them
        else:
            if raw:
                references = torch.nn.functional.normalize(references, dim=-1)
            embeds = architecture.projection_inputs(_normalised_mean(references))
        embeds = embeds.to(device=projection.device, dtype=projection.dtype)
        batch = torch.cat([torch.zeros_like(embeds), embeds])

        if architecture.takes_clip_features:
            clip = _mean_clip(clip_image_embeds, len(references), config, "clip_image_embeds")
            if negative_clip_image_embeds is None:
                negative = torch.zeros_like(clip)
            else:
                negative = _mean_clip(
                    negative_clip_image_embeds, None, config, "negative_clip_image_embeds"
                )
            clip = torch.cat([negative, clip]).to(device=projection.device, dtype=projection.dtype)
            negative_tokens, tokens = projection(batch, clip).chunk(2)
        else:
            if clip_image_embeds is not None or negative_clip_image_embeds is not None:
                raise IdentityAdapterError(
                    f"CLIP image features are used by FaceID-PlusV2 only, not by {family}"
                )
            negative_tokens, tokens = projection(batch).chunk(2)

        tokens = tokens.expand(num_images, -1, -1)
        if do_classifier_free_guidance:
            tokens = torch.cat([negative_tokens.expand(num_images, -1, -1), tokens])
        return tokens.contiguous()

    # -- diffusers integration: components, saving, diffusers' IP-Adapter -------------------

    def register_modules(self, **kwargs) -> None:
        """``DiffusionPipeline.register_modules``; registering ``identity_attn`` (or a new
        denoiser) puts the identity contribution on, or takes it off, the attention stack."""
        super().register_modules(**kwargs)
        changed = {"identity_attn", "unet", "transformer"} & set(kwargs)
        if changed and hasattr(self, "identity_attn"):
            self._sync_identity()

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """``DiffusionPipeline.save_pretrained`` with the denoiser saved without the stack (the
        identity weights are saved once, in ``identity_attn/``; other contributions are not
        components and are not saved)."""
        with self._attention_stack_detached():
            super().save_pretrained(save_directory, *args, **kwargs)

    def load_ip_adapter(self, *args, **kwargs) -> None:
        """diffusers' ``load_ip_adapter``; its processors become the stack's base processors."""
        with self._attention_stack_detached():
            super().load_ip_adapter(*args, **kwargs)

    def set_ip_adapter_scale(self, scale) -> None:
        """diffusers' ``set_ip_adapter_scale``, reaching the IP-Adapter processors we wrap.

        Without diffusers' IP-Adapter but with an identity adapter, it sets the identity scale,
        as InstantID's reference pipeline does (``set_identity_scale`` is our name for it).
        """
        if getattr(self.unet, "encoder_hid_proj", None) is None:
            if self.identity_family is None:
                raise IdentityAdapterError(
                    "set_ip_adapter_scale: no IP-Adapter or identity adapter is loaded; load one "
                    "with load_ip_adapter(...) or load_identity_adapter(...)"
                )
            self.set_identity_scale(scale)
            return
        with self._attention_stack_detached():
            super().set_ip_adapter_scale(scale)

    def unload_ip_adapter(self) -> None:
        """diffusers' ``unload_ip_adapter``; the stacked contributions stay."""
        with self._attention_stack_detached():
            super().unload_ip_adapter()

    def _check_identity_pipeline_class(self) -> None:
        check_components(self, COMPONENTS, "identity adapter")
        cls = type(self)
        if cls.__mro__.index(IdentityAdapterMixin) > cls.__mro__.index(DiffusionPipeline):
            raise TypeError(
                f"list IdentityAdapterMixin before DiffusionPipeline in {cls.__name__}'s bases"
            )

    def _layer_scales(self, scale: float | dict) -> dict[str, float]:
        return layer_scales(denoiser(self), scale, what="identity scale")

    def _denoiser_rows(self, identity_rows: Sequence[bool], batch_size: int) -> tuple[bool, ...]:
        """One flag per denoiser row: the images' flags, twice under CFG (negatives first)."""
        rows = identity_rows.tolist() if hasattr(identity_rows, "tolist") else identity_rows
        rows = tuple(bool(row) for row in rows)
        if batch_size % len(rows) or batch_size // len(rows) not in (1, 2):
            raise ValueError(
                f"`identity_rows` has {len(rows)} values for a denoiser batch of {batch_size} "
                "rows; pass one bool per generated image"
            )
        return rows * (batch_size // len(rows))

    def _stack(self) -> dict[str, tuple[object, list[Contribution]]]:
        """Each attention layer's base processor and contributions, as installed now."""
        stack = {}
        for name, processor in denoiser(self).attn_processors.items():
            if isinstance(processor, PortraitAttnProcessor):
                stack[name] = (processor.base_processor, list(processor.contributions))
            else:
                stack[name] = (processor, [])
        return stack

    def _stack_processors(
        self, stack: Mapping[str, tuple[object, list[Contribution]]]
    ) -> dict[str, object]:
        """One processor per layer for ``stack``: a ``PortraitAttnProcessor`` on every layer
        (so each accepts the call state) while anything is stacked, else the base processors.
        Raises ``TypeError`` on a base processor a stack cannot hold."""
        if not any(contributions for _, contributions in stack.values()):
            return {name: base for name, (base, _) in stack.items()}
        processors = {}
        for name, (base, contributions) in stack.items():
            identity = next((c for c in contributions if c.name == IDENTITY), None)
            others = [c for c in contributions if c is not identity]
            if identity is None:
                processors[name] = PortraitAttnProcessor(base, others, layer_name=name)
            else:
                processors[name] = IdentityAttnProcessor(
                    base, identity.layer, identity.scale, contributions=others, layer_name=name
                )
        return processors

    def _install(self, stack: Mapping[str, tuple[object, list[Contribution]]]) -> None:
        denoiser(self).set_attn_processor(self._stack_processors(stack))

    def _identity_processors(self) -> dict[str, IdentityAttnProcessor]:
        return {
            name: processor
            for name, processor in denoiser(self).attn_processors.items()
            if isinstance(processor, IdentityAttnProcessor)
        }

    def _with_identity(
        self, component: IdentityAttention, scales: Mapping[str, float] | None = None
    ) -> dict[str, tuple[object, list[Contribution]]]:
        """The current stack with ``component``'s identity contribution on every layer, at
        ``scales`` (default: the scales of the identity contribution it replaces, else 1)."""
        layers = attention_layers(denoiser(self))
        names = [layer.name for layer in layers]
        expected = list(component.config.processor_names)
        if names != expected:
            raise IdentityAdapterError(
                f"identity_attn was built for a UNet with {len(expected)} attention layers, this "
                f"UNet has {len(names)} (first differing: "
                f"{next((n for n in names if n not in expected), '-')}); "
                "load the adapter again on this pipeline"
            )
        stack = self._stack()
        for layer in layers:
            base, contributions = stack[layer.name]
            old = next((c for c in contributions if c.name == IDENTITY), None)
            scale = 1.0 if old is None else old.scale
            if scales is not None:
                scale = scales[layer.name]
            others = [c for c in contributions if c is not old]
            identity = IdentityContribution(component.layer(layer.index), scale)
            stack[layer.name] = (base, [identity, *others])
        return stack

    def _sync_identity(self) -> None:
        """Put the registered ``identity_attn`` on the stack, or take the identity off it."""
        if all(getattr(self, name, None) is None for name in ("unet", "transformer")):
            return
        component = getattr(self, "identity_attn", None)
        if component is not None:
            self._install(self._with_identity(component))
        elif self._identity_processors():
            stack = {
                name: (base, [c for c in contributions if c.name != IDENTITY])
                for name, (base, contributions) in self._stack().items()
            }
            self._install(stack)

    def _contribution_layers(
        self,
        contribution: Contribution | Mapping[str, Contribution],
        layers: Iterable[str] | Callable[[AttentionLayer], bool] | None,
        stack: Mapping[str, object],
    ) -> dict[str, Contribution]:
        """Layer name -> contribution for ``add_attention_contribution``, checked."""
        if isinstance(contribution, Mapping):
            if layers is not None:
                raise ValueError("pass `layers` with one contribution, not with a per-layer dict")
            per_layer = dict(contribution)
        elif callable(layers):
            chosen = [layer.name for layer in attention_layers(denoiser(self)) if layers(layer)]
            per_layer = dict.fromkeys(chosen, contribution)
        else:
            chosen = list(stack) if layers is None else list(layers)
            per_layer = dict.fromkeys(chosen, contribution)
        if not per_layer:
            raise ValueError("no attention layer chosen for the contribution")
        unknown = [name for name in per_layer if name not in stack]
        if unknown:
            raise ValueError(
                f"unknown attention layers {unknown[:3]}; names are those of "
                f"{type(denoiser(self)).__name__}.attn_processors, e.g. {next(iter(stack))!r}"
            )
        bad = [type(c).__name__ for c in per_layer.values() if not isinstance(c, Contribution)]
        if bad:
            raise TypeError(f"attention contributions must be Contribution objects, got {bad[0]}")
        names = {c.name for c in per_layer.values()}
        if len(names) != 1:
            raise ValueError(f"one contribution name per call, got {sorted(names)}")
        return per_layer

    @contextmanager
    def _attention_stack_detached(self) -> Iterator[None]:
        """Run with the base processors in place, then stack the same contributions on whatever
        processors are there afterwards (e.g. diffusers' new IP-Adapter processors)."""
        stack = self._stack()
        if not any(contributions for _, contributions in stack.values()):
            yield
            return
        denoiser(self).set_attn_processor({name: base for name, (base, _) in stack.items()})
        try:
            yield
        finally:
            current = self._stack()
            self._install({name: (current[name][0], stack[name][1]) for name in stack})


def _references(embeds, dim: int, family: str | None) -> tuple[torch.Tensor, bool]:
    """``[num_refs, dim]`` float32 reference embeddings, checked, and whether they are raw
    (insightface's ``face.embedding``) rather than unit-norm."""
    if isinstance(embeds, np.ndarray) and np.issubdtype(embeds.dtype, np.floating):
        embeds = torch.from_numpy(np.array(embeds))
    if not isinstance(embeds, torch.Tensor) or not embeds.is_floating_point():
        raise IdentityAdapterError(
            f"identity embeddings must be a float tensor or numpy array, got "
            f"{type(embeds).__name__}"
            + (f" of {embeds.dtype}" if isinstance(embeds, (torch.Tensor, np.ndarray)) else "")
        )
    if embeds.ndim == 1:
        embeds = embeds.unsqueeze(0)
    if embeds.ndim != 2 or embeds.shape[0] == 0:
        raise IdentityAdapterError(
            f"identity embeddings must be [num_refs, {dim}], got {list(embeds.shape)}"
        )
    if embeds.shape[1] != dim:
        hint = (
            "ArcFace embeddings (insightface buffalo_l/antelopev2): use the profile's 'arcface' "
            "embeddings, not 128-d SFace/dlib ones"
            if dim == 512
            else "embeddings of the recognizer it was trained with (the model set's "
            "identity_encoder)"
        )
        raise IdentityAdapterError(
            f"identity embeddings are {embeds.shape[1]}-d, the {family} adapter takes {dim}-d "
            + hint
        )
    embeds = embeds.detach().float()
    norms = embeds.norm(dim=1)
    if not torch.isfinite(embeds).all() or (norms == 0).any():
        raise IdentityAdapterError(
            "identity embeddings must be finite and non-zero; got norms "
            f"[{', '.join(f'{n:.3g}' for n in norms[:4].tolist())}]"
        )
    unit = (norms - 1).abs() <= UNIT_NORM_TOLERANCE
    if unit.any() and not unit.all():
        shown = ", ".join(f"{n:.3g}" for n in norms[:4].tolist())
        raise IdentityAdapterError(
            f"identity embeddings mix unit-norm and raw rows (norms [{shown}]); pass all "
            "face.normed_embedding or all face.embedding"
        )
    return embeds, not bool(unit.all())


def _normalised_mean(embeds: torch.Tensor) -> torch.Tensor:
    """``[1, dim]``: the references' mean direction."""
    mean = embeds.mean(dim=0, keepdim=True)
    length = mean.norm()
    if length < 1e-6:
        raise IdentityAdapterError("the reference embeddings cancel out: their mean is zero")
    return mean / length


def _mean_clip(
    features: torch.Tensor | None, num_refs: int | None, config, name: str
) -> torch.Tensor:
    """``[1, tokens, clip_dim]``: the mean CLIP features of the references."""
    if features is None:
        raise IdentityAdapterError(
            f"FaceID-PlusV2 needs {name}: CLIP ViT-H penultimate hidden states of the aligned "
            "face crops, [num_refs, 257, 1280] "
            "(image_encoder(pixels, output_hidden_states=True).hidden_states[-2])"
        )
    expected = f"[{num_refs or 'num_refs'}, tokens, {config.clip_embed_dim}]"
    if (
        features.ndim != 3
        or features.shape[-1] != config.clip_embed_dim
        or (num_refs is not None and features.shape[0] != num_refs)
    ):
        raise IdentityAdapterError(
            f"{name} must be {expected} (one row per reference), got {list(features.shape)}"
        )
    return features.float().mean(dim=0, keepdim=True)
