"""Shared helpers of the portrait pipeline tests: tiny runs, ControlNets, condition images."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from adapters.synthetic import randomize_zero_convs

PROMPT = "a studio portrait photo of a person"


def generate(pipe, seed: int = 0, **kwargs):
    """Two steps at 64x64 with classifier-free guidance; ``np`` images unless asked otherwise."""
    kwargs = {
        "prompt": PROMPT,
        "num_inference_steps": 2,
        "guidance_scale": 5.0,
        "output_type": "np",
        **kwargs,
    }
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


def make_controlnet(unet: UNet2DConditionModel, seed: int) -> ControlNetModel:
    """A ControlNet of ``unet`` whose zero-initialised convolutions are random, so it has effect."""
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    randomize_zero_convs(controlnet, seed=seed, std=0.1)
    return controlnet


def condition(seed: int, height: int = 64, width: int = 64) -> np.ndarray:
    """An RGB uint8 drawing, as the studio's condition images are."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def unit_embeds(num_refs: int, seed: int = 0) -> torch.Tensor:
    embeds = torch.randn(num_refs, 512, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(embeds, dim=-1)


def load_pipeline(cls, path, **components):
    """``cls.from_pretrained(path, **components)`` without progress bars."""
    pipe = cls.from_pretrained(path, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe
