"""Text-to-image generation on a model set's base pipeline (the identity stages build on it)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from studio.errors import StudioError
from studio.host import build_pipeline
from studio.limits import MAX_GUIDANCE, MAX_IMAGES, MAX_SEED, MAX_STEPS, check_range, check_side
from studio.models.catalog import ModelSet
from studio.outputs import GenerationRecord, save_image
from studio.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationRequest:
    """What the user asked for; ``None`` fields take the model set's defaults."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    num_images: int = 1
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None

    def with_defaults(self, model_set: ModelSet) -> GenerationRequest:
        d = model_set.defaults
        return GenerationRequest(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            seed=self.seed,
            num_images=self.num_images,
            steps=self.steps if self.steps is not None else int(d.get("steps", 30)),
            guidance=self.guidance if self.guidance is not None else float(d.get("guidance", 7.0)),
            width=self.width if self.width is not None else int(d.get("width", 512)),
            height=self.height if self.height is not None else int(d.get("height", 512)),
        )

    def validate(self) -> None:
        """Raise a :class:`StudioError` naming the first unusable field and its allowed range."""
        if not self.prompt.strip():
            raise StudioError("--prompt is empty; describe the image you want")
        check_range("--n", self.num_images, 1, MAX_IMAGES)
        check_range("--seed", self.seed, 0, MAX_SEED)
        if self.steps is not None:
            check_range("--steps", self.steps, 1, MAX_STEPS)
        if self.guidance is not None:
            check_range("--guidance", self.guidance, 0, MAX_GUIDANCE)
        for flag, value in (("--width", self.width), ("--height", self.height)):
            if value is not None:
                check_side(flag, value)


def load_pipeline(model_set: ModelSet, settings: Settings):
    """The set's base pipeline (no identity adapter) on the configured device and dtype."""
    return build_pipeline(model_set, settings, identity=False)


def run(pipe, model_set: ModelSet, request: GenerationRequest, out_dir: Path) -> list[Path]:
    """Generate ``request.num_images`` images (seed, seed+1, ...) and save each; return paths."""
    import torch

    request.validate()
    req = request.with_defaults(model_set)
    req.validate()
    seeds = [req.seed + i for i in range(req.num_images)]
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    images = pipe(
        prompt=[req.prompt] * len(seeds),
        negative_prompt=[req.negative_prompt] * len(seeds) if req.negative_prompt else None,
        num_inference_steps=req.steps,
        guidance_scale=req.guidance,
        width=req.width,
        height=req.height,
        generator=generators,
    ).images
    sampler = type(pipe.scheduler).__name__.removesuffix("Scheduler")
    paths = []
    for seed, image in zip(seeds, images, strict=True):
        record = GenerationRecord(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt,
            seed=seed,
            steps=req.steps,
            guidance=req.guidance,
            width=req.width,
            height=req.height,
            sampler=sampler,
            model_set=model_set.name,
        )
        paths.append(save_image(image, record, out_dir))
    return paths
