"""PortraitInpaintPipeline on the tiny SD1.5 set: derived with from_pipe it shares every weight,
repaints only the masked latents, and reads the identity and the ControlNet condition there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from portrait_helpers import condition, load_pipeline, make_controlnet, unit_embeds

from adapters import write_checkpoint
from pipelines import PortraitInpaintPipeline, PortraitPipeline, PortraitXLInpaintPipeline
from studio.models.tiny import built_path

SIZE = 64


@pytest.fixture(scope="module")
def base(tiny_models_dir, tmp_path_factory) -> PortraitPipeline:
    path = built_path(tiny_models_dir, "tiny-sd15")
    plain = load_pipeline(PortraitPipeline, path)
    pipe = load_pipeline(PortraitPipeline, path, controlnet=make_controlnet(plain.unet, seed=2))
    checkpoint = tmp_path_factory.mktemp("faceid") / "faceid-sd15.bin"
    pipe.load_identity_adapter(write_checkpoint("faceid-sd15", checkpoint, unet=pipe.unet))
    return pipe


@pytest.fixture(scope="module")
def inpaint(base) -> PortraitInpaintPipeline:
    pipe = PortraitInpaintPipeline.from_pipe(base)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def photo(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def square_mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 16:48] = 255
    return mask


def run(pipe, mask: np.ndarray, seed: int = 0, **kwargs) -> np.ndarray:
    kwargs = {
        "prompt": "a photo of a person",
        "image": photo(),
        "mask_image": mask,
        "strength": 0.9,
        "num_inference_steps": 4,
        "guidance_scale": 5.0,
        "identity_embeds": unit_embeds(2, seed=1),
        "output_type": "np",
        **kwargs,
    }
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images[0]


def test_from_pipe_shares_every_weight_and_leaves_the_base_working(base, inpaint):
    for name in ("unet", "vae", "text_encoder", "controlnet", "identity_projection"):
        assert getattr(inpaint, name) is getattr(base, name)
    assert inpaint.identity_attn is base.identity_attn
    images = base(
        "a photo",
        num_inference_steps=2,
        identity_embeds=unit_embeds(1),
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert images.shape == (1, SIZE, SIZE, 3) and np.isfinite(images).all()


def test_only_the_masked_part_depends_on_identity_and_condition(inpaint):
    mask = square_mask()
    first = run(inpaint, mask)
    assert np.array_equal(first, run(inpaint, mask))  # seeded
    other_identity = run(inpaint, mask, identity_embeds=unit_embeds(2, seed=7))
    with_pose = run(inpaint, mask, control_image=condition(3))
    for other in (other_identity, with_pose):
        difference = np.abs(other - first).mean(axis=2)
        assert difference[20:44, 20:44].mean() > 10 * max(difference[:8, :].mean(), 1e-4)
    # With nothing masked every latent is the photo's: identity and prompt change nothing.
    empty = np.zeros_like(mask)
    kept = run(inpaint, empty)
    assert np.allclose(
        kept, run(inpaint, empty, identity_embeds=unit_embeds(2, seed=7), prompt="x")
    )


def test_strength_runs_that_fraction_of_the_steps_and_is_checked(inpaint):
    seen = []
    inpaint.scheduler.set_timesteps(10)
    original = inpaint.unet.forward

    def count(*args, **kwargs):
        seen.append(1)
        return original(*args, **kwargs)

    inpaint.unet.forward = count
    try:
        run(inpaint, square_mask(), num_inference_steps=10, strength=0.3)
    finally:
        inpaint.unet.forward = original
    assert len(seen) == 3
    for strength in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"`strength` must be in \(0, 1\]"):
            run(inpaint, square_mask(), strength=strength)
    with pytest.raises(ValueError, match="leaves no denoising step"):
        run(inpaint, square_mask(), num_inference_steps=2, strength=0.2)


def test_the_sdxl_twin_inpaints_with_instantid(sdxl_instantid):
    pipe = PortraitXLInpaintPipeline.from_pipe(sdxl_instantid)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet is sdxl_instantid.unet and pipe.identitynet is sdxl_instantid.identitynet
    assert pipe.identity_attn is sdxl_instantid.identity_attn
    mask = square_mask()
    first = run(pipe, mask, keypoint_image=condition(4))
    for other in (
        run(pipe, mask, keypoint_image=condition(4), identity_embeds=unit_embeds(2, seed=7)),
        run(pipe, mask, keypoint_image=condition(5)),
    ):
        difference = np.abs(other - first).mean(axis=2)
        assert difference[20:44, 20:44].mean() > 10 * max(difference[:8, :].mean(), 1e-4)
    empty = np.zeros_like(mask)
    kept = run(pipe, empty, keypoint_image=condition(4))
    changed = run(pipe, empty, keypoint_image=condition(5), identity_embeds=unit_embeds(2, seed=7))
    assert np.allclose(kept, changed)
