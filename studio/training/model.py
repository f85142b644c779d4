"""The trainable model: a model set's components, frozen, with peft LoRA layers added."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from studio.models.catalog import ModelSet
from studio.models.resolver import ModelResolver
from studio.settings import Settings

logger = logging.getLogger(__name__)

UNET_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
"""UNet attention projections that get LoRA layers (the diffusers DreamBooth-LoRA choice)."""

TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass
class TrainingModels:
    """What training and validation need from the base model.

    ``tokenizers`` and ``text_encoders`` have one entry for SD1.5 and two for SDXL.
    """

    family: str
    base: Path
    tokenizers: list[Any]
    text_encoders: list[torch.nn.Module]
    vae: torch.nn.Module
    unet: torch.nn.Module
    noise_scheduler: Any


def load_models(model_set: ModelSet, settings: Settings) -> TrainingModels:
    """Load the set's base pipeline components in float32 on the CPU, frozen."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    base = ModelResolver(settings).resolve(model_set, "base")
    family = model_set.base_family
    encoder_classes = [CLIPTextModel, CLIPTextModelWithProjection]
    tokenizers = [AutoTokenizer.from_pretrained(base, subfolder=n) for n in family.tokenizers]
    text_encoders = [
        cls.from_pretrained(base, subfolder=n)
        for cls, n in zip(encoder_classes, family.text_encoders, strict=False)
    ]
    models = TrainingModels(
        family=model_set.family,
        base=base,
        tokenizers=tokenizers,
        text_encoders=text_encoders,
        vae=AutoencoderKL.from_pretrained(base, subfolder="vae"),
        unet=UNet2DConditionModel.from_pretrained(base, subfolder="unet"),
        noise_scheduler=DDPMScheduler.from_pretrained(base, subfolder="scheduler"),
    )
    for module in (models.vae, models.unet, *models.text_encoders):
        module.requires_grad_(False)
        module.eval()
    return models


def add_lora(
    models: TrainingModels, rank: int, alpha: float, *, text_encoder: bool
) -> list[torch.nn.Module]:
    """Add LoRA layers (B starts at zero, so training starts from the base model).

    Returns the modules that now have trainable parameters: the UNet, then the text encoders
    when ``text_encoder`` is set.
    """
    from peft import LoraConfig, inject_adapter_in_model

    models.unet.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=alpha,
            init_lora_weights="gaussian",
            target_modules=list(UNET_TARGETS),
        )
    )
    trained = [models.unet]
    if text_encoder:
        # peft directly: transformers' own add_adapter wants a newer peft than diffusers pins.
        for encoder in models.text_encoders:
            config = LoraConfig(
                r=rank,
                lora_alpha=alpha,
                init_lora_weights="gaussian",
                target_modules=list(TEXT_ENCODER_TARGETS),
            )
            inject_adapter_in_model(config, encoder)
            trained.append(encoder)
    return trained


def lora_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]
