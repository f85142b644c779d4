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
loads them and registering ``identity_attn`` re-installs the processors. Identity tokens reach
the UNet as ``cross_attention_kwargs={"identity_tokens": tokens}``, never inside the prompt
embeddings.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from numbers import Real

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.loaders.unet_loader_utils import _maybe_expand_lora_scales

from adapters.attention import IdentityAttention, IdentityAttnProcessor
from adapters.checkpoint import load_state_dict
from adapters.formats import (
    FACEID,
    FACEID_PLUSV2,
    INSTANTID,
    IdentityAdapterError,
    attention_layers,
    inspect_checkpoint,
    match_unet,
    split_checkpoint,
)
from adapters.projections import FaceIDPlusProjection, FaceIDProjection, IdentityResampler

logger = logging.getLogger(__name__)

PROJECTIONS = {
    FACEID: FaceIDProjection,
    FACEID_PLUSV2: FaceIDPlusProjection,
    INSTANTID: IdentityResampler,
}
COMPONENTS = ("identity_projection", "identity_attn")
#: Largest tolerated deviation of an identity embedding's L2 norm from 1 (fp16/bf16 rounding).
UNIT_NORM_TOLERANCE = 1e-2


class IdentityAdapterMixin:
    """Identity adapters (IP-Adapter-FaceID, FaceID-PlusV2, InstantID) for diffusers pipelines.

    ``load_identity_adapter`` / ``set_identity_scale`` / ``unload_identity_adapter`` and
    ``encode_identity``. Works beside diffusers' own IP-Adapter (``load_ip_adapter`` and its
    scale/unload methods are wrapped so both sets of processors coexist) and beside peft LoRA.
    """

    @property
    def identity_family(self) -> str | None:
        """The loaded adapter's family (``faceid-sd15``, ``faceid-plusv2-sd15``,
        ``faceid-sdxl``, ``faceid-plusv2-sdxl``, ``instantid``), or ``None``."""
        component = getattr(self, "identity_attn", None)
        return None if component is None else component.config.family

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
        layers = attention_layers(self.unet)
        sdxl = self.unet.config.addition_embed_type == "text_time"
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
            torch.nn.Module.to(component, device=self.unet.device, dtype=self.unet.dtype).eval()
        # Both raise here, before anything changes, on an unsupported processor or a bad scale.
        self._identity_processors_for(attention)
        scales = self._layer_scales(scale)

        if self.identity_family is not None:
            logger.info("replacing the loaded %s identity adapter", self.identity_family)
        self.register_modules(identity_projection=projection, identity_attn=attention)
        for name, processor in self._installed_identity_processors().items():
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
        A layer at 0 is exactly the UNet without the adapter.
        """
        processors = self._installed_identity_processors()
        if not processors:
            raise IdentityAdapterError(
                "no identity adapter is loaded: call load_identity_adapter(...) first"
            )
        scales = self._layer_scales(scale)
        for name, processor in processors.items():
            processor.scale = scales[name]

    def unload_identity_adapter(self) -> None:
        """Put back the UNet's previous attention processors and drop both components."""
        if self.identity_family is None:
            logger.info("no identity adapter to unload")
            return
        self.register_modules(identity_projection=None, identity_attn=None)

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
        """Identity tokens for ``cross_attention_kwargs={"identity_tokens": tokens}``.

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
        if raw and family == INSTANTID:
            embeds = references.mean(dim=0, keepdim=True)
        else:
            if raw:
                references = torch.nn.functional.normalize(references, dim=-1)
            embeds = _normalised_mean(references)
            if family == INSTANTID:
                embeds = embeds * math.sqrt(config.id_embed_dim)
        embeds = embeds.to(device=projection.device, dtype=projection.dtype)
        batch = torch.cat([torch.zeros_like(embeds), embeds])

        if isinstance(projection, FaceIDPlusProjection):
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
        """``DiffusionPipeline.register_modules``; registering ``identity_attn`` (re)installs
        or removes the identity processors on the UNet."""
        super().register_modules(**kwargs)
        if "identity_attn" in kwargs or ("unet" in kwargs and hasattr(self, "identity_attn")):
            self._sync_identity_processors()

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """``DiffusionPipeline.save_pretrained`` with the UNet saved without identity weights
        (they are saved once, in ``identity_attn/``)."""
        with self._identity_processors_detached():
            super().save_pretrained(save_directory, *args, **kwargs)

    def load_ip_adapter(self, *args, **kwargs) -> None:
        """diffusers' ``load_ip_adapter``; a loaded identity adapter stays on top of it."""
        with self._identity_processors_detached():
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
        with self._identity_processors_detached():
            super().set_ip_adapter_scale(scale)

    def unload_ip_adapter(self) -> None:
        """diffusers' ``unload_ip_adapter``; a loaded identity adapter stays."""
        with self._identity_processors_detached():
            super().unload_ip_adapter()

    def _check_identity_pipeline_class(self) -> None:
        cls = type(self)
        expected, _ = cls._get_signature_keys(self)
        missing = [name for name in COMPONENTS if name not in expected]
        if missing:
            raise TypeError(
                f"{cls.__name__}.__init__ must accept {', '.join(f'{n}=None' for n in missing)} "
                f"and list {missing} in _optional_components, so that save_pretrained, "
                "from_pretrained and CPU offload see the identity adapter"
            )
        if cls.__mro__.index(IdentityAdapterMixin) > cls.__mro__.index(DiffusionPipeline):
            raise TypeError(
                f"list IdentityAdapterMixin before DiffusionPipeline in {cls.__name__}'s bases"
            )

    def _layer_scales(self, scale: float | dict) -> dict[str, float]:
        """Each attention processor's scale; dicts are expanded as diffusers' IP-Adapter does."""
        names = list(self.unet.attn_processors)
        if not isinstance(scale, dict):
            _check_scale(scale)
            return dict.fromkeys(names, float(scale))
        _check_block_names(self.unet, scale)
        expanded = _maybe_expand_lora_scales(self.unet, [scale], default_scale=0.0)[0]
        for value in expanded.values():
            _check_scale(value)
        scales = {}
        for name in names:
            matches = [value for block, value in expanded.items() if name.startswith(f"{block}.")]
            scales[name] = float(matches[-1]) if matches else 0.0
        return scales

    def _installed_identity_processors(self) -> dict[str, IdentityAttnProcessor]:
        return {
            name: processor
            for name, processor in self.unet.attn_processors.items()
            if isinstance(processor, IdentityAttnProcessor)
        }

    def _base_processors(self) -> dict[str, object]:
        return {
            name: processor.base_processor
            if isinstance(processor, IdentityAttnProcessor)
            else processor
            for name, processor in self.unet.attn_processors.items()
        }

    def _identity_processors_for(
        self, component: IdentityAttention, scales: Mapping[str, float] | None = None
    ) -> dict[str, IdentityAttnProcessor]:
        """Processors wrapping the current ones (or what they wrap) with ``component``'s weights."""
        layers = attention_layers(self.unet)
        names = [layer.name for layer in layers]
        if names != list(component.config.processor_names):
            raise IdentityAdapterError(
                f"identity_attn was built for a UNet with {len(component.config.processor_names)}"
                f" attention layers, this UNet has {len(names)} (first differing: "
                f"{next((n for n in names if n not in component.config.processor_names), '-')}); "
                "load the adapter again on this pipeline"
            )
        current = self.unet.attn_processors
        processors = {}
        for layer in layers:
            processor = current[layer.name]
            scale = (scales or {}).get(layer.name, 1.0)
            if isinstance(processor, IdentityAttnProcessor):
                processor, scale = processor.base_processor, processor.scale
            processors[layer.name] = IdentityAttnProcessor(
                processor, component.layer(layer.index), scale
            )
        return processors

    def _sync_identity_processors(self) -> None:
        unet = getattr(self, "unet", None)
        if unet is None:
            return
        component = getattr(self, "identity_attn", None)
        if component is not None:
            unet.set_attn_processor(self._identity_processors_for(component))
        elif self._installed_identity_processors():
            unet.set_attn_processor(self._base_processors())

    @contextmanager
    def _identity_processors_detached(self) -> Iterator[None]:
        """Run with the UNet's own processors in place, then wrap whatever is there again."""
        component = getattr(self, "identity_attn", None)
        installed = self._installed_identity_processors() if component is not None else {}
        if not installed:
            yield
            return
        scales = {name: processor.scale for name, processor in installed.items()}
        self.unet.set_attn_processor(self._base_processors())
        try:
            yield
        finally:
            self.unet.set_attn_processor(self._identity_processors_for(component, scales))


def _check_scale(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"identity scale must be a finite number, got {value!r}")


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


def _check_block_names(unet: torch.nn.Module, scale: dict) -> None:
    """Refuse block names diffusers' expansion would drop silently (blocks without attention)."""
    unknown = sorted(set(scale) - {"down", "mid", "up"})
    if unknown:
        raise ValueError(f"identity scale keys must be 'down', 'mid' and 'up', got {unknown}")
    for part, blocks in (("down", unet.down_blocks), ("up", unet.up_blocks)):
        if not isinstance(scale.get(part), dict):
            continue
        with_attention = [f"block_{i}" for i, b in enumerate(blocks) if hasattr(b, "attentions")]
        for block in scale[part]:
            if block not in with_attention:
                raise ValueError(
                    f"identity scale for {part}.{block}: this UNet's {part} blocks with attention "
                    f"are {with_attention}"
                )


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
