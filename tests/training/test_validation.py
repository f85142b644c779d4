"""Validation images are the ones a user of the stock diffusers pipeline gets with the LoRA."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from studio.settings import load_settings
from studio.train_lora import parse_args, train_command
from studio.training.validation import NEGATIVE_PROMPT, VALIDATION_PROMPTS

pytestmark = pytest.mark.slow


def test_validation_draws_what_the_stock_pipeline_draws_with_the_trained_lora(
    tiny_env, tmp_path, faces_dir
):
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline

    from studio.models.tiny import built_path

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(faces_dir / "person_a_1.jpg", photos)
    out = tiny_env / "run"
    argv = ["--photos", str(photos), "--out", str(out), "--models", "tiny", "--steps", "2"]
    argv += ["--lr", "1e-2", "--validation-images", "2", "--validation-inference-steps", "3"]
    assert train_command(parse_args(argv), load_settings()) == 0

    # Random weights draw no face, so the exported LoRA is the last step's: the one validated.
    base = built_path(Path(os.environ["STUDIO_MODELS_DIR"]), "tiny-sd15")
    pipe = StableDiffusionPipeline.from_pretrained(
        base, safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        DDPMScheduler.from_pretrained(base, subfolder="scheduler").config
    )
    pipe.load_lora_weights(out)
    pipe.set_progress_bar_config(disable=True)
    prompts = [p.format(instance="ohwx person") for p in VALIDATION_PROMPTS[:2]]
    expected = pipe(
        prompts,
        negative_prompt=[NEGATIVE_PROMPT] * 2,
        num_inference_steps=3,
        guidance_scale=7.0,
        width=64,
        height=64,
        generator=[torch.Generator().manual_seed(i) for i in range(2)],
        output_type="np",
    ).images
    for i in range(2):
        got = np.asarray(Image.open(out / f"validation/step-000002/{i:02d}.png"), dtype=float)
        np.testing.assert_allclose(got, np.round(expected[i] * 255), atol=2)
