"""The pipeline host: the one place that builds, caches, offloads and unloads pipelines.

- :func:`build_pipeline` loads a model set's pipeline from its folders (``generate`` uses it
  bare, the studio with the identity adapter and pose ControlNet);
- :class:`PipelineHost` keeps one model set's identity pipeline loaded, the LoRAs on it, and
  the pipelines derived from it with diffusers' ``from_pipe`` (they share every weight), and
  falls back to model CPU offload when the GPU runs out of memory.

Built pipelines get the settings' speed and memory choices (:mod:`studio.speed`): offload mode,
regional compilation (once per load: later requests, with other prompts, seeds or identities,
reuse the compiled blocks), VAE tiling per request size and the attention kernel.

A derived pipeline is a kind registered with :func:`register_derived`: a function from the
base family to a pipeline class (``inpaint`` is built in; face swap or repair register theirs).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from studio.errors import ConfigError, StudioError
from studio.families import BaseFamily, family_of_folder
from studio.models.catalog import ModelSet
from studio.models.resolver import ModelResolver
from studio.settings import Settings
from studio.speed import attention_backend, compile_denoiser, fit_vae, place

logger = logging.getLogger(__name__)

WPLUS_ADAPTER = "wplus_adapter"
"""The catalog component of a set's W+ adapter (loaded before offload and compilation)."""
OFFLOAD_NOTE = "the GPU ran out of memory, so models now move to the GPU only while used"

DERIVED: dict[str, Callable[[BaseFamily], type]] = {}
"""Derived pipeline kinds: each maps a base family to the pipeline class built with from_pipe."""


def register_derived(kind: str, pipeline_class: Callable[[BaseFamily], type]) -> None:
    """Make ``host.derived(kind)`` build ``pipeline_class(family).from_pipe(pipeline)``."""
    DERIVED[kind] = pipeline_class


register_derived("inpaint", BaseFamily.inpaint_pipeline_class)


def build_pipeline(model_set: ModelSet, settings: Settings, *, identity: bool = True):
    """Load the set's base pipeline onto the configured device and dtype, placed with the
    settings' offload mode and compiled when ``settings.compile``.

    With ``identity`` the family's identity adapter is loaded, its pose ControlNet (when the
    set has one) is attached, and the set's W+ adapter is loaded when its file is here.
    """
    family = model_set.base_family
    resolver = ModelResolver(settings)
    base = resolver.resolve(model_set, "base")
    found = family_of_folder(base)
    if found is not family:
        raise ConfigError(
            f"model set {model_set.name!r} is catalogued as {family.title}, but {base} holds "
            f"a {found.title} model; correct the set's family"
        )
    dtype = settings.torch_dtype()
    kwargs: dict[str, Any] = {"dtype": dtype, **family.pipeline_options}
    if identity and family.control_component in model_set.components:
        from diffusers import ControlNetModel

        kwargs[family.control_argument] = ControlNetModel.from_pretrained(
            resolver.resolve(model_set, family.control_component), dtype=dtype
        )
    pipe = family.pipeline_class().from_pretrained(base, **kwargs)
    if identity:
        pipe.load_identity_adapter(resolver.resolve(model_set, family.adapter_component))
        if resolver.available(model_set, WPLUS_ADAPTER):
            pipe.load_wplus_adapter(resolver.resolve(model_set, WPLUS_ADAPTER))
    pipe.set_progress_bar_config(leave=False)
    place(pipe, settings.offload, settings.torch_device())
    if settings.compile:
        compile_denoiser(pipe, backend=settings.compile_backend)
    return pipe


def run_pipeline(pipe, settings: Settings, **call: Any):
    """``pipe(**call)`` with the VAE fitted to the requested size and the attention kernel set."""
    fit_vae(pipe, width=call.get("width"), height=call.get("height"), mode=settings.vae_tiling)
    with attention_backend(settings.attention_backend):
        return pipe(**call)


@dataclass(frozen=True)
class ActiveLora:
    """A LoRA to have on the pipeline: adapter name, file or folder (or hub repo), strength."""

    adapter: str
    source: str
    weight_name: str | None = None
    scale: float = 1.0


@dataclass
class _Hosted:
    model_set: ModelSet
    pipe: Any
    derived: dict[str, Any] = field(default_factory=dict)
    loras: tuple[ActiveLora, ...] = ()
    offloaded: bool = False
    grouped: bool = False
    """Group offloading is on (from the settings); it never falls back to model offload."""
    hooked: Any = None
    """With offload on, the pipeline whose offload hooks the shared modules carry."""


class PipelineHost:
    """One model set's identity pipeline, its LoRAs and its derived pipelines, built on first use.

    ``compile`` overrides ``settings.compile``. Not thread-safe: callers hold their GPU lock
    around every call.
    """

    def __init__(self, settings: Settings, *, compile: bool | None = None) -> None:
        if compile is not None:
            settings = replace(settings, compile=compile)
        self.settings = settings
        self._hosted: _Hosted | None = None

    @property
    def model_set(self) -> ModelSet | None:
        """The set whose pipeline is loaded, ``None`` when none is."""
        return self._hosted.model_set if self._hosted else None

    @property
    def loras(self) -> tuple[ActiveLora, ...]:
        return self._hosted.loras if self._hosted else ()

    @property
    def offloaded(self) -> bool:
        """Models live on the CPU between uses (model or group offload)."""
        return bool(self._hosted and (self._hosted.offloaded or self._hosted.grouped))

    def pipeline(self, model_set: ModelSet):
        """The set's identity pipeline; loading another set unloads the previous one first."""
        if self._hosted is None or self._hosted.model_set.name != model_set.name:
            self.unload()
            pipe = build_pipeline(model_set, self.settings)
            offload = self.settings.offload
            self._hosted = _Hosted(
                model_set,
                pipe,
                offloaded=offload == "model",
                grouped=offload == "group",
                hooked=pipe if offload == "model" else None,
            )
        return self._ready(self._hosted.pipe)

    def derived(self, kind: str):
        """A pipeline of a registered kind sharing the loaded pipeline's weights (``from_pipe``)."""
        hosted = self._require()
        if kind not in hosted.derived:
            if kind not in DERIVED:
                raise StudioError(
                    f"no derived pipeline {kind!r} is registered; known: {', '.join(DERIVED)}"
                )
            cls = DERIVED[kind](hosted.model_set.base_family)
            pipe = cls.from_pipe(hosted.pipe, dtype=hosted.pipe.dtype)
            pipe.set_progress_bar_config(leave=False)
            hosted.derived[kind] = pipe
        return self._ready(hosted.derived[kind])

    def use_loras(self, wanted: tuple[ActiveLora, ...]) -> None:
        """Have exactly these LoRAs active on the loaded pipeline, reloading only on change."""
        hosted = self._require()
        if hosted.loras == wanted:
            return
        if hosted.loras:
            hosted.pipe.unload_lora_weights()
            hosted.loras = ()
        for lora in wanted:
            try:
                hosted.pipe.load_lora_weights(
                    lora.source, weight_name=lora.weight_name, adapter_name=lora.adapter
                )
            except (OSError, ValueError) as exc:
                raise StudioError(f"LoRA {lora.source} cannot be loaded: {exc}") from exc
        if wanted:
            hosted.pipe.set_adapters(
                [lora.adapter for lora in wanted], adapter_weights=[lora.scale for lora in wanted]
            )
        hosted.loras = wanted

    def run(self, pipe, **call: Any) -> tuple[list, str | None]:
        """Call ``pipe``; on GPU out-of-memory free memory and retry once with CPU offload.

        Returns the images and a note for the user when offload was switched on.
        """
        try:
            return run_pipeline(pipe, self.settings, **call).images, None
        except torch.OutOfMemoryError:
            if self.offloaded:
                raise _out_of_memory() from None
        logger.warning("GPU out of memory: retrying with model CPU offload")
        _free_memory()
        self._require().offloaded = True
        self._ready(pipe)
        try:
            images = run_pipeline(pipe, self.settings, **call).images
        except torch.OutOfMemoryError:
            raise _out_of_memory() from None
        return images, OFFLOAD_NOTE

    def unload(self) -> None:
        """Drop the loaded pipeline and its derived ones, and free their memory."""
        self._hosted = None
        _free_memory()

    def _require(self) -> _Hosted:
        if self._hosted is None:
            raise StudioError("no pipeline is loaded; generate a portrait first")
        return self._hosted

    def _ready(self, pipe):
        """With offload on, move the shared modules' offload hooks to ``pipe`` (each pipeline
        has its own order, so diffusers asks to re-apply offload on a from_pipe pipeline)."""
        hosted = self._hosted
        if hosted.offloaded and hosted.hooked is not pipe:
            pipe.enable_model_cpu_offload()
            hosted.hooked = pipe
        return pipe


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _out_of_memory() -> StudioError:
    _free_memory()
    return StudioError(
        "the GPU ran out of memory even with CPU offload; make fewer images "
        "at once, a smaller size, or use a smaller model set"
    )
