"""Per-row identity: one batch of [identity on, identity off] equals the two separate runs, with
the FaceID LoRA (SD1.5, SDXL) and with InstantID's IdentityNet (SDXL)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from portrait_helpers import condition, generate, unit_embeds

#: Largest difference between a row of the batch and its separate run (CPU, fp32).
ROW_TOLERANCE = 1e-5


def _latents(pipe, seed: int) -> torch.Tensor:
    size = 64 // pipe.vae_scale_factor
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, pipe.unet.config.in_channels, size, size, generator=generator)


def _identity(pipe) -> dict:
    kwargs = {"identity_embeds": unit_embeds(2), "identity_scale": 0.8}
    if getattr(pipe, "identitynet", None) is not None:
        kwargs["keypoint_image"] = condition(3)
    return kwargs


@pytest.mark.parametrize("name", ["sd15_faceid", "sdxl_faceid", "sdxl_instantid"])
def test_rows_on_and_off_equal_their_separate_runs(name, request):
    pipe = request.getfixturevalue(name)
    first, second = _latents(pipe, 1), _latents(pipe, 2)
    identity = _identity(pipe)
    both = generate(
        pipe,
        num_images_per_prompt=2,
        latents=torch.cat([first, second]),
        identity_rows=[True, False],
        **identity,
    )
    with_identity = generate(pipe, latents=first, **identity)
    without = generate(pipe, latents=second)
    assert np.abs(both[0] - with_identity[0]).max() < ROW_TOLERANCE
    assert np.abs(both[1] - without[0]).max() < ROW_TOLERANCE
    # identity does change the image: the rows differ from the other choice
    assert np.abs(with_identity[0] - generate(pipe, latents=first)[0]).max() > 1e-3


def test_all_rows_on_is_the_batch_with_identity(sd15_faceid):
    latents = torch.cat([_latents(sd15_faceid, 1), _latents(sd15_faceid, 2)])
    identity = _identity(sd15_faceid)
    every = generate(sd15_faceid, num_images_per_prompt=2, latents=latents, **identity)
    rows = generate(
        sd15_faceid,
        num_images_per_prompt=2,
        latents=latents,
        identity_rows=[True, True],
        **identity,
    )
    np.testing.assert_array_equal(rows, every)
    none = generate(
        sd15_faceid,
        num_images_per_prompt=2,
        latents=latents,
        identity_rows=[False, False],
        **identity,
    )
    np.testing.assert_array_equal(
        none, generate(sd15_faceid, num_images_per_prompt=2, latents=latents)
    )


@pytest.mark.parametrize("name", ["sd15_faceid", "sdxl_instantid"])
def test_identity_rows_input_errors(name, request):
    pipe = request.getfixturevalue(name)
    with pytest.raises(ValueError, match="`identity_rows` was given without `identity_embeds`"):
        generate(pipe, identity_rows=[True])
    with pytest.raises(ValueError, match="has 1 values but this call generates 2 images"):
        generate(pipe, num_images_per_prompt=2, identity_rows=[True], **_identity(pipe))
    with pytest.raises(ValueError, match="must be a list of bools"):
        generate(pipe, identity_rows="yes", **_identity(pipe))
