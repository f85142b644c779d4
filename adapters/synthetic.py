"""Random-weight identity adapters in the exact published layouts, for tests and tiny model sets.

``write_checkpoint`` writes the files a user would download (``ip-adapter-faceid_sd15.bin``,
InstantID's ``ip-adapter.bin`` ...) for a given UNet: published key names, published shapes for
that UNet's widths and layer order. For the published base models (768-d SD1.5, 2048-d SDXL) the
sizes are the published ones; for other (tiny) UNets the perceivers' internal width shrinks to
keep the files small, as their configs are read from the shapes anyway.
``write_identitynet`` writes InstantID's IdentityNet: a diffusers ControlNet of that UNet.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch

from adapters.formats import (
    ARCFACE_DIM,
    FACEID,
    FACEID_PLUSV2,
    INSTANTID,
    AdapterSpec,
    image_proj_layout,
    ip_adapter_layout,
)
from adapters.formats import architecture as find_architecture
from adapters.layout import attention_layers

#: family -> (architecture, made for SDXL-layout UNets)
FAMILIES = {
    "faceid-sd15": (FACEID, False),
    "faceid-sdxl": (FACEID, True),
    "faceid-plusv2-sd15": (FACEID_PLUSV2, False),
    "faceid-plusv2-sdxl": (FACEID_PLUSV2, True),
    "instantid": (INSTANTID, True),
}
#: The published base models' UNet configs (stable-diffusion-v1-5, stable-diffusion-xl-base-1.0),
#: for random-weight stand-ins of the full-size architectures (benchmarks, shape checks).
SD15_UNET = {
    "sample_size": 64,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SDXL_UNET = {
    "sample_size": 128,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "use_linear_projection": True,
    "cross_attention_dim": 2048,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
#: The SD1.5 / SDXL VAE (same architecture; SDXL's scaling factor is 0.13025).
SD15_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

#: InstantID's IdentityNet condition encoder (diffusers' ControlNet default): 3 downsamplings.
IDENTITYNET_CONDITION_CHANNELS = (16, 32, 96, 256)


def published_config(architecture: str, token_dim: int, id_embed_dim: int = ARCFACE_DIM) -> dict:
    """The projection config the published checkpoint of ``architecture`` has for this width.

    ``id_embed_dim`` other than 512 gives a FaceID projection for another recognizer's
    embeddings (the tiny set's takes SFace's 128-d ones); InstantID always takes 512.
    """
    return find_architecture(architecture).published_config(token_dim, id_embed_dim)


def published_layout(
    family: str, *, unet: torch.nn.Module, id_embed_dim: int = ARCFACE_DIM
) -> dict[str, dict[str, tuple]]:
    """``{"image_proj": {key: shape}, "ip_adapter": {key: shape}}`` of ``family`` for ``unet``."""
    if family not in FAMILIES:
        known = ", ".join(FAMILIES)
        raise ValueError(f"unknown identity adapter family {family!r}; known: {known}")
    name, for_sdxl = FAMILIES[family]
    sdxl = unet.config.addition_embed_type == "text_time"
    if sdxl != for_sdxl:
        kind = "an SDXL" if for_sdxl else "an SD1.5"
        raise ValueError(f"{family} is made for {kind}-layout UNet; this UNet is not one")
    layers = attention_layers(unet)
    token_dim = next(layer.context_dim for layer in layers if layer.is_cross_attention)
    architecture = find_architecture(name)
    config = architecture.published_config(token_dim, id_embed_dim)
    lora_rank = architecture.published_lora_rank
    spec = AdapterSpec(
        architecture=name,
        token_dim=token_dim,
        num_tokens=config["num_tokens"],
        ip_layers=tuple(layer.index for layer in layers if layer.is_cross_attention),
        lora_layers=tuple(layer.index for layer in layers) if lora_rank else (),
        lora_rank=lora_rank,
        projection_config=config,
    )
    return {
        "image_proj": image_proj_layout(spec),
        "ip_adapter": ip_adapter_layout(layers, lora_rank=lora_rank),
    }


def synthetic_state_dict(
    family: str, *, unet: torch.nn.Module, seed: int = 0, id_embed_dim: int = ARCFACE_DIM
) -> dict[str, dict[str, torch.Tensor]]:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` of random weights for ``unet``."""
    layout = published_layout(family, unet=unet, id_embed_dim=id_embed_dim)
    generator = torch.Generator().manual_seed(seed)
    return {half: _random(shapes, generator) for half, shapes in layout.items()}


def write_checkpoint(
    family: str,
    path: str | Path,
    *,
    unet: torch.nn.Module,
    seed: int = 0,
    fmt: Literal["bin", "safetensors"] = "bin",
    id_embed_dim: int = ARCFACE_DIM,
) -> Path:
    """Write a random ``family`` checkpoint for ``unet``; return its path.

    ``bin``: the published nested ``{"image_proj": ..., "ip_adapter": ...}`` pickle of tensors;
    ``safetensors``: the published flat ``image_proj.*`` / ``ip_adapter.*`` keys.
    """
    path = Path(path)
    if path.suffix != f".{fmt}":
        raise ValueError(f"a {fmt} checkpoint path must end in .{fmt}, got {path.name}")
    state_dict = synthetic_state_dict(family, unet=unet, seed=seed, id_embed_dim=id_embed_dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "bin":
        torch.save(state_dict, path)
    else:
        from safetensors.torch import save_file

        flat = {f"{half}.{k}": v for half, d in state_dict.items() for k, v in d.items()}
        save_file(flat, str(path))
    return path


def randomize_zero_convs(controlnet: torch.nn.Module, *, seed: int, std: float) -> None:
    """Give a ControlNet's zero-initialised convolutions small random weights.

    A trained ControlNet's are no longer zero; random ones give a random-weight net an effect
    that depends on its condition image, so tests can see it.
    """
    zero_initialised = [
        controlnet.controlnet_cond_embedding.conv_out,
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
    ]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in zero_initialised:
            for param in module.parameters():
                noise = torch.randn(param.shape, generator=generator, device="cpu")
                param.copy_(std * noise)


def write_identitynet(
    path: str | Path, unet: torch.nn.Module, seed: int = 0, *, vae_scale_factor: int = 8
) -> Path:
    """Write a random InstantID IdentityNet (``ControlNetModel.from_unet(unet)``) folder.

    Its cross-attention takes the identity tokens, so its width is the UNet's. The condition
    encoder downsamples the keypoint image by ``vae_scale_factor``: 8 as published (SDXL's VAE),
    2 for the tiny sets' VAE. The zero-initialised convolutions get small random weights too
    (:func:`randomize_zero_convs`).
    """
    from diffusers import ControlNetModel

    downsamplings = int(math.log2(vae_scale_factor))
    if 2**downsamplings != vae_scale_factor or not 1 <= downsamplings <= 3:
        raise ValueError(f"vae_scale_factor must be 2, 4 or 8, got {vae_scale_factor}")
    channels = IDENTITYNET_CONDITION_CHANNELS[: downsamplings + 1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        controlnet = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=channels, load_weights_from_unet=False
        )
    randomize_zero_convs(controlnet, seed=seed, std=0.05)
    path = Path(path)
    controlnet.save_pretrained(path, safe_serialization=True)
    return path


def _random(layout: dict[str, tuple[int, ...]], generator: torch.Generator) -> dict:
    """Weights of sane scale: LayerNorms near identity, linears ~ 1/sqrt(fan_in), small LoRA."""
    weights = {}
    for key in sorted(layout):
        shape = layout[key]
        noise = torch.randn(shape, generator=generator)
        if key == "latents":
            value = noise / math.sqrt(shape[-1])
        elif key.endswith(".bias"):
            value = 0.02 * noise
        elif len(shape) == 1:  # LayerNorm weight
            value = 1 + 0.1 * noise
        elif key.endswith("_lora.up.weight"):
            value = 0.1 * noise / math.sqrt(shape[1])
        else:
            value = noise / math.sqrt(shape[1])
        weights[key] = value
    return weights
