"""Validation during training: fixed-seed images with the current LoRA, scored for likeness."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from studio.faces.analyzer import FaceAnalyzer
from studio.faces.encoders import IdentityEmbedding
from studio.families import get_family
from studio.fileio import atomic_write
from studio.scoring import IdentityScorer
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
    ) -> None:
        self.models = models
        self.family = family
        self.resolution = resolution
        self.scorer = IdentityScorer(analyzer, reference)
        self.config = config
        instance = f"{config.trigger} {config.class_word}"
        self.prompts = [
            VALIDATION_PROMPTS[i % len(VALIDATION_PROMPTS)].format(instance=instance)
            for i in range(config.validation_images)
        ]

    @property
    def threshold(self) -> float:
        return self.scorer.threshold

    def pipeline(self, unet: torch.nn.Module):
        """An inference pipeline sharing the training modules (nothing is copied)."""
        from diffusers import DPMSolverMultistepScheduler

        from studio.host import assemble_pipeline

        m = self.models
        return assemble_pipeline(
            get_family(self.family),
            vae=m.vae,
            unet=unet,
            text_encoders=m.text_encoders,
            tokenizers=m.tokenizers,
            scheduler=DPMSolverMultistepScheduler.from_config(m.noise_scheduler.config),
        )

    @torch.no_grad()
    def run(self, unet: torch.nn.Module, out_dir: Path, step: int) -> ValidationResult:
        """Generate, save (``out_dir/NN.png``) and score the K validation images."""
        device = next(unet.parameters()).device
        borrowed = [self.models.vae]
        if not self.config.train_text_encoder:  # frozen encoders wait on the CPU meanwhile
            borrowed += self.models.text_encoders
        for module in borrowed:
            module.to(device)
        was_training = unet.training
        unet.eval()
        try:
            pipe = self.pipeline(unet)
            k = len(self.prompts)
            images = pipe(
                self.prompts,
                negative_prompt=[NEGATIVE_PROMPT] * k,
                num_inference_steps=self.config.validation_inference_steps,
                guidance_scale=get_family(self.family).validation_guidance,
                width=self.resolution,
                height=self.resolution,
                generator=[
                    torch.Generator("cpu").manual_seed(self.config.seed + i) for i in range(k)
                ],
            ).images
        finally:
            unet.train(was_training)
            for module in borrowed:
                module.to("cpu")
        out_dir.mkdir(parents=True, exist_ok=True)
        scores, faces = [], []
        for i, image in enumerate(images):
            atomic_write(out_dir / f"{i:02d}.png", lambda fh, im=image: im.save(fh, format="PNG"))
            score = self.scorer.score(image)
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
