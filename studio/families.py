"""Base-model families (SD1.5, SDXL): one spec object each, the only place they differ.

Everything that depends on the family (pipeline class, sizes, text encoders, the identity
adapter's and the pose control's components, training and export details) is a field of
:class:`BaseFamily`; code elsewhere reads the field and never compares family names. A family
comes from the catalog (its ``family`` entry) or from a model folder's ``model_index.json``
(its ``_class_name``); a folder of any other pipeline (FLUX, SD3, ...) is refused.
A new family is one more :func:`register_family` call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from studio.errors import ConfigError


@dataclass(frozen=True)
class BaseFamily:
    """What the studio needs to know about one family of base models."""

    name: str
    """The catalog's name for the family (``sd15``, ``sdxl``), stored with LoRAs and runs."""
    title: str
    folder_classes: tuple[str, ...]
    """``model_index.json`` ``_class_name`` values of folders of this family."""
    pipeline: str
    """The studio pipeline class in :mod:`pipelines`."""
    inpaint_pipeline: str
    """The diffusers inpainting pipeline that shares this family's components."""
    default_size: int
    """Width and height the base model was trained at; also the training resolution."""
    text_encoders: tuple[str, ...]
    """Text encoder components; ``tokenizer`` + the same suffix names each one's tokenizer."""
    pooled_text: bool
    """The UNet takes the last encoder's pooled embedding and size ids (``added_cond_kwargs``)."""
    adapter_component: str
    """The catalog component of the identity adapter."""
    control_component: str
    """The catalog component of the pose ControlNet (the pipeline's ``control_argument``)."""
    control_argument: str
    pose_kind: str
    """What the pose condition draws (``mesh`` or ``kps``, see ``pose_condition``)."""
    pose_argument: str
    """The pipeline argument the pose condition image goes to."""
    pose_from_profile: bool
    """Without a pose reference, condition on the profile's own photo (InstantID does)."""
    validation_guidance: float
    kohya_base_version: str
    modelspec_architecture: str
    kohya_text_encoder_prefixes: Mapping[str, str]
    pipeline_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Extra ``from_pretrained`` / constructor arguments for this family's pipeline."""
    identity_inpaint_pipeline: str | None = None
    """The studio pipeline in :mod:`pipelines` that inpaints with the identity adapter and the
    pose control (face swap); ``None`` where the family has none yet."""

    @property
    def tokenizers(self) -> tuple[str, ...]:
        return tuple(name.replace("text_encoder", "tokenizer") for name in self.text_encoders)

    def pipeline_class(self) -> type:
        import pipelines

        return getattr(pipelines, self.pipeline)

    def identity_inpaint_pipeline_class(self) -> type:
        import pipelines

        if self.identity_inpaint_pipeline is None:
            raise ConfigError(
                f"identity inpainting (the diffusion face swap) is not available for "
                f"{self.title} yet; use an SD1.5 model set (e.g. --models sd15 or tiny), or "
                "--method inswapper"
            )
        return getattr(pipelines, self.identity_inpaint_pipeline)

    def inpaint_pipeline_class(self) -> type:
        import diffusers

        return getattr(diffusers, self.inpaint_pipeline)


BASE_FAMILIES: dict[str, BaseFamily] = {}
"""Registered families by name, in registration order."""


def register_family(family: BaseFamily) -> BaseFamily:
    BASE_FAMILIES[family.name] = family
    return family


SD15 = register_family(
    BaseFamily(
        name="sd15",
        title="Stable Diffusion 1.5",
        folder_classes=("StableDiffusionPipeline", "PortraitPipeline"),
        pipeline="PortraitPipeline",
        inpaint_pipeline="StableDiffusionInpaintPipeline",
        default_size=512,
        text_encoders=("text_encoder",),
        pooled_text=False,
        adapter_component="faceid",
        control_component="controlnet_face",
        control_argument="controlnet",
        pose_kind="mesh",
        pose_argument="control_image",
        pose_from_profile=False,
        validation_guidance=7.0,
        kohya_base_version="sd_v1",
        modelspec_architecture="stable-diffusion-v1/lora",
        kohya_text_encoder_prefixes=MappingProxyType({"text_encoder": "lora_te_"}),
        pipeline_options=MappingProxyType(
            {"safety_checker": None, "requires_safety_checker": False}
        ),
        identity_inpaint_pipeline="PortraitInpaintPipeline",
    )
)

SDXL = register_family(
    BaseFamily(
        name="sdxl",
        title="Stable Diffusion XL",
        folder_classes=("StableDiffusionXLPipeline", "PortraitXLPipeline"),
        pipeline="PortraitXLPipeline",
        inpaint_pipeline="StableDiffusionXLInpaintPipeline",
        default_size=1024,
        text_encoders=("text_encoder", "text_encoder_2"),
        pooled_text=True,
        adapter_component="instantid_adapter",
        control_component="instantid_controlnet",
        control_argument="identitynet",
        pose_kind="kps",
        pose_argument="keypoint_image",
        pose_from_profile=True,
        validation_guidance=5.0,
        identity_inpaint_pipeline="PortraitXLInpaintPipeline",
        kohya_base_version="sdxl_base_v1-0",
        modelspec_architecture="stable-diffusion-xl-v1-base/lora",
        kohya_text_encoder_prefixes=MappingProxyType(
            {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
        ),
    )
)


def family_names() -> tuple[str, ...]:
    return tuple(BASE_FAMILIES)


def get_family(name: str) -> BaseFamily:
    """The registered family called ``name``; unknown names are refused, listing the known."""
    try:
        return BASE_FAMILIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown model family {name!r}; use one of {', '.join(BASE_FAMILIES)}"
        ) from None


def folder_class(folder: Path) -> str:
    """The pipeline class a diffusers folder was saved from (its ``model_index.json``)."""
    try:
        return json.loads((folder / "model_index.json").read_text(encoding="utf-8"))["_class_name"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{folder}: not a diffusers pipeline folder (no readable model_index.json); "
            "pass a model set name or a folder saved with save_pretrained"
        ) from exc


def family_of_folder(folder: Path) -> BaseFamily:
    """The family of a diffusers folder, from its pipeline class; other pipelines are refused."""
    class_name = folder_class(folder)
    for family in BASE_FAMILIES.values():
        if class_name in family.folder_classes:
            return family
    supported = "; ".join(
        f"{f.title} ({', '.join(f.folder_classes)})" for f in BASE_FAMILIES.values()
    )
    raise ConfigError(
        f"{folder} holds a {class_name} model, which the studio does not support; "
        f"use a folder of a supported family: {supported}"
    )
