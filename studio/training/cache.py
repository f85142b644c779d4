"""Tensors computed once per run: VAE latent distributions of the crops and prompt embeddings."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from studio.errors import ConfigError
from studio.families import get_family

logger = logging.getLogger(__name__)

ENCODE_BATCH = 4


@dataclass(frozen=True)
class LatentCache:
    """Per image, the VAE posterior's mean and std, already scaled for the UNet.

    ``sample(index, generator)`` draws ``mean + std * eps``, as a fresh VAE encode would.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __len__(self) -> int:
        return self.mean.shape[0]

    def sample(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mean, std = self.mean[index], self.std[index]
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return mean + std * eps


@dataclass(frozen=True)
class PromptCache:
    """Token ids per text encoder and, with the text encoders frozen, their embeddings."""

    token_ids: tuple[torch.Tensor, ...]
    hidden: torch.Tensor | None
    pooled: torch.Tensor | None


def to_pixels(images: Sequence[np.ndarray]) -> torch.Tensor:
    """RGB uint8 crops → a float batch in [-1, 1], NCHW."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return batch / 127.5 - 1.0


@torch.no_grad()
def encode_latents(
    vae, images: Sequence[np.ndarray], device: torch.device, stop: threading.Event | None = None
) -> LatentCache | None:
    """Encode crops with the VAE (float32; the SDXL VAE overflows in float16).

    Returns ``None`` when ``stop`` is set, checked before each batch of :data:`ENCODE_BATCH`.
    """
    vae.to(device)
    scale = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    means, stds = [], []
    for start in range(0, len(images), ENCODE_BATCH):
        if stop is not None and stop.is_set():
            return None
        pixels = to_pixels(images[start : start + ENCODE_BATCH]).to(device)
        dist = vae.encode(pixels).latent_dist
        means.append(((dist.mean - shift) * scale).cpu())
        stds.append((dist.std * scale).cpu())
    return LatentCache(torch.cat(means), torch.cat(stds))


def tokenize(tokenizers: Sequence, prompts: Sequence[str]) -> tuple[torch.Tensor, ...]:
    return tuple(
        tok(
            list(prompts),
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        for tok in tokenizers
    )


def encode_tokens(
    text_encoders: Sequence[torch.nn.Module], token_ids: Sequence[torch.Tensor], family: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompt embeddings as the family's UNet expects them (and SDXL's pooled embedding)."""
    if not get_family(family).pooled_text:
        (encoder,), (ids,) = text_encoders, token_ids
        return encoder(ids.to(encoder.device))[0], None
    hidden, pooled = [], None
    for encoder, ids in zip(text_encoders, token_ids, strict=True):
        out = encoder(ids.to(encoder.device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out[0]  # the last encoder's projected pooled output
    return torch.cat(hidden, dim=-1), pooled


@torch.no_grad()
def encode_prompts(
    tokenizers: Sequence,
    text_encoders: Sequence[torch.nn.Module],
    prompts: Sequence[str],
    family: str,
    *,
    frozen: bool,
) -> PromptCache:
    """Tokenize every prompt; with frozen text encoders also embed them once, on the CPU."""
    ids = tokenize(tokenizers, prompts)
    if not frozen:
        return PromptCache(ids, None, None)
    hidden, pooled = encode_tokens(text_encoders, ids, family)
    return PromptCache(ids, hidden.cpu(), None if pooled is None else pooled.cpu())


def sdxl_time_ids(resolution: int, batch: int) -> torch.Tensor:
    """SDXL's size conditioning for square, uncropped crops: original, crop corner, target."""
    ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=torch.float32)
    return ids.repeat(batch, 1)


MAX_CLASS_IMAGES = 200


def class_images(folder: Path, resolution: int) -> list[np.ndarray]:
    """Up to :data:`MAX_CLASS_IMAGES` readable images of ``folder``, centre-cropped and resized."""
    from PIL import Image

    from studio.images import ImageLoadError, iter_images, load_image

    folder = folder.expanduser()
    if not folder.is_dir():
        raise ConfigError(f"--class-images {folder} is not a folder; give a folder of photos")
    images = []
    for path in iter_images([folder]):
        if len(images) == MAX_CLASS_IMAGES:
            break
        try:
            rgb = load_image(path).rgb
        except ImageLoadError as exc:
            logger.warning("class image skipped: %s", exc)
            continue
        side = min(rgb.shape[:2])
        top, left = (rgb.shape[0] - side) // 2, (rgb.shape[1] - side) // 2
        square = Image.fromarray(rgb[top : top + side, left : left + side])
        images.append(np.asarray(square.resize((resolution, resolution), Image.Resampling.LANCZOS)))
    if not images:
        raise ConfigError(f"--class-images {folder}: no readable image in it")
    return images
