"""Validation during training: fixed-seed images with the current LoRA, scored for likeness.

The images come from a short denoising loop over the training modules themselves
(DPM-Solver++ with classifier-free guidance), not from a pipeline object, so a validation loads
and copies nothing (no image encoder or feature extractor), embeds its prompts once when the
text encoders are frozen, and stops between any two denoising steps when asked to.
A validation costs about ``K x N`` UNet forwards of a guided pair plus K decodes; measured
multiples of a training step are in BENCHMARKS.md (issue 15).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from studio.faces.analyzer import FaceAnalyzer
from studio.faces.encoders import IdentityEmbedding
from studio.families import get_family
from studio.fileio import atomic_write
from studio.scoring import IdentityScorer
from studio.training import cache as caching
from studio.training.config import TrainConfig
from studio.training.model import TrainingModels

logger = logging.getLogger(__name__)

VALIDATION_PROMPTS = (
    "a photo of {instance}, portrait, looking at the camera",
    "a close-up photo of {instance} smiling, natural light",
    "a photo of {instance} outdoors in a park, upper body",
    "a studio headshot of {instance}, professional lighting",
)
"""Cycled through for the K validation images; image ``i`` uses seed ``seed + i``."""

NEGATIVE_PROMPT = "blurry, deformed, disfigured, low quality, cartoon"


@dataclass(frozen=True)
class ValidationResult:
    """``similarity`` is the mean of the images' scores (0.0 for an image without a face)."""

    step: int
    scores: list[float]
    faces: list[int]

    @property
    def similarity(self) -> float:
        return sum(self.scores) / len(self.scores)

    @property
    def faces_found(self) -> bool:
        return any(self.faces)


@dataclass(frozen=True)
class Conditioning:
    """Prompt embeddings of the K images as guided pairs: K negatives, then K prompts."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None  # SDXL's pooled text embedding

    def to(self, device: torch.device) -> Conditioning:
        pooled = None if self.pooled is None else self.pooled.to(device)
        return Conditioning(self.hidden.to(device), pooled)


class Validator:
    """Generates the run's validation images and scores them against the reference face."""

    def __init__(
        self,
        models: TrainingModels,
        family: str,
        resolution: int,
        analyzer: FaceAnalyzer,
        reference: IdentityEmbedding,
        config: TrainConfig,
        stop: threading.Event | None = None,
    ) -> None:
        self.models = models
        self.family = family
        self.resolution = resolution
        self.scorer = IdentityScorer(analyzer, reference)
        self.config = config
        self.stop = stop or threading.Event()
        instance = f"{config.trigger} {config.class_word}"
        self.prompts = [
            VALIDATION_PROMPTS[i % len(VALIDATION_PROMPTS)].format(instance=instance)
            for i in range(config.validation_images)
        ]
        self._frozen: Conditioning | None = None

    @property
    def threshold(self) -> float:
        return self.scorer.threshold

    def conditioning(self) -> Conditioning:
        """The prompts' embeddings: once per run with frozen text encoders, else every time."""
        if self._frozen is not None:
            return self._frozen
        m, k = self.models, len(self.prompts)
        ids = caching.tokenize(m.tokenizers, [NEGATIVE_PROMPT] * k + self.prompts)
        with torch.no_grad():
            hidden, pooled = caching.encode_tokens(m.text_encoders, ids, self.family)
        conditioning = Conditioning(hidden, pooled)
        if not self.config.train_text_encoder:
            self._frozen = conditioning
        return conditioning

    @torch.no_grad()
    def generate(self, unet: torch.nn.Module) -> np.ndarray | None:
        """The K images (``uint8``, NHWC) with ``unet`` as it is now; ``None`` once stopped."""
        from diffusers import DPMSolverMultistepScheduler

        m, family = self.models, get_family(self.family)
        device = next(unet.parameters()).device
        scheduler = DPMSolverMultistepScheduler.from_config(m.noise_scheduler.config)
        m.vae.to(device)
        was_training = unet.training
        unet.eval()
        try:
            latents = denoise(
                unet,
                scheduler,
                self.conditioning().to(device),
                size=self.resolution // vae_scale_factor(m.vae),
                steps=self.config.validation_inference_steps,
                guidance=family.validation_guidance,
                seeds=[self.config.seed + i for i in range(len(self.prompts))],
                sdxl_resolution=self.resolution if family.pooled_text else None,
                stop=self.stop,
            )
            return None if latents is None else decode(m.vae, latents)
        finally:
            unet.train(was_training)
            m.vae.to("cpu")

    def run(self, unet: torch.nn.Module, out_dir: Path, step: int) -> ValidationResult | None:
        """Generate, save (``out_dir/NN.png``) and score the K validation images.

        Returns ``None`` (and saves nothing) when ``stop`` is set before the images are done.
        """
        logger.info("step %d: validating with %d image(s)", step, len(self.prompts))
        images = self.generate(unet)
        if images is None:
            logger.info("step %d: validation abandoned (stop requested)", step)
            return None
        from PIL import Image

        out_dir.mkdir(parents=True, exist_ok=True)
        scores, faces = [], []
        for i, rgb in enumerate(images):
            image = Image.fromarray(rgb)
            atomic_write(out_dir / f"{i:02d}.png", lambda fh, im=image: im.save(fh, format="PNG"))
            score = self.scorer.score(rgb)
            scores.append(round(score.similarity, 4))
            faces.append(score.faces)
        result = ValidationResult(step, scores, faces)
        logger.info(
            "step %d: identity similarity %.3f (%d of %d images with a face)",
            step,
            result.similarity,
            sum(1 for f in faces if f),
            len(faces),
        )
        return result


def vae_scale_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def denoise(
    unet: torch.nn.Module,
    scheduler,
    conditioning: Conditioning,
    *,
    size: int,
    steps: int,
    guidance: float,
    seeds: list[int],
    sdxl_resolution: int | None,
    stop: threading.Event,
) -> torch.Tensor | None:
    """Latents of ``len(seeds)`` images, guided; ``None`` if ``stop`` is set between steps."""
    device = conditioning.hidden.device
    shape = (1, unet.config.in_channels, size, size)
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    scheduler.set_timesteps(steps, device=device)
    latents = torch.cat(noise).to(device) * scheduler.init_noise_sigma
    extra = {}
    if sdxl_resolution is not None:
        pairs = conditioning.hidden.shape[0]
        extra["added_cond_kwargs"] = {
            "text_embeds": conditioning.pooled,
            "time_ids": caching.sdxl_time_ids(sdxl_resolution, pairs).to(device),
        }
    for t in scheduler.timesteps:
        if stop.is_set():
            return None
        pair = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        pred = unet(pair, t, conditioning.hidden, **extra).sample
        uncond, cond = pred.float().chunk(2)
        latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents).prev_sample
    return latents


def decode(vae, latents: torch.Tensor) -> np.ndarray:
    """VAE-decode in float32 (the SDXL VAE overflows in half precision) to ``uint8`` NHWC."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latents = latents.float() / vae.config.scaling_factor + shift
    with torch.autocast(latents.device.type, enabled=False):
        pixels = vae.decode(latents).sample
    pixels = (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    return (pixels * 255).round().to(torch.uint8).cpu().numpy()
