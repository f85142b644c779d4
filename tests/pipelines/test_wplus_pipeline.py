"""PortraitPipeline with the W+ adapter on the tiny SD1.5 set: scale 0 and start 1 are no adapter
exactly, W+ beside FaceID with separate scales, per-row with the identity, saving, the start
schedule, input errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from portrait_helpers import PROMPT, generate, unit_embeds

from adapters import write_checkpoint
from adapters.synthetic_wplus import wplus_adapter_state_dict
from adapters.wplus import WPLUS
from pipelines import PortraitPipeline
from studio.models.tiny import built_path

#: Smallest difference between images that should differ (uint8 is 1/255 ~ 4e-3).
CHANGED = 1e-3


@pytest.fixture(scope="module")
def sd15_path(tiny_models_dir):
    return built_path(tiny_models_dir, "tiny-sd15")


@pytest.fixture(scope="module")
def plain(sd15_path) -> PortraitPipeline:
    """The pipeline without adapters; tests build fresh copies and never change it."""
    pipe = PortraitPipeline.from_pretrained(sd15_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def plain_images(plain) -> np.ndarray:
    return generate(plain)


@pytest.fixture(scope="module")
def wplus_checkpoint(tmp_path_factory, plain):
    path = tmp_path_factory.mktemp("wplus") / "wplus_adapter.bin"
    torch.save(wplus_adapter_state_dict(plain.unet, seed=3), path)
    return path


@pytest.fixture(scope="module")
def faceid_checkpoint(tmp_path_factory, plain):
    path = tmp_path_factory.mktemp("faceid") / "ip-adapter-faceid_sd15.bin"
    return write_checkpoint("faceid-sd15", path, unet=plain.unet)


def fresh(plain: PortraitPipeline) -> PortraitPipeline:
    """A pipeline of ``plain``'s components with its own UNet, to load adapters on."""
    pipe = PortraitPipeline(**{**plain.components, "unet": copy.deepcopy(plain.unet)})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def w_plus(seed: int = 0, batch: int | None = None) -> torch.Tensor:
    shape = (18, 512) if batch is None else (batch, 18, 512)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def wplus_pipe(plain, wplus_checkpoint) -> PortraitPipeline:
    pipe = fresh(plain)
    pipe.load_wplus_adapter(wplus_checkpoint)
    return pipe


def test_loading_registers_the_components_and_the_term(wplus_pipe, wplus_checkpoint):
    checkpoint = torch.load(wplus_checkpoint, weights_only=True)
    assert wplus_pipe.attention_contributions() == [WPLUS]
    torch.testing.assert_close(
        wplus_pipe.wplus_projection.proj_2.weight, checkpoint["w_proj"]["proj_2.weight"]
    )
    assert {"wplus_projection", "wplus_attn"} <= set(wplus_pipe.components)
    chain = wplus_pipe.model_cpu_offload_seq.split("->")
    assert chain.index("wplus_projection") < chain.index("unet")
    assert "wplus_attn" not in chain  # its weights run inside the UNet's processors


def test_scale_zero_equals_no_adapter_exactly(wplus_pipe, plain_images):
    np.testing.assert_array_equal(
        generate(wplus_pipe, wplus=w_plus(), wplus_scale=0.0), plain_images
    )
    np.testing.assert_array_equal(generate(wplus_pipe), plain_images)
    wplus_pipe.set_wplus_scale(0.0)
    np.testing.assert_array_equal(generate(wplus_pipe, wplus=w_plus()), plain_images)


def test_wplus_changes_the_image_and_the_call_scale_is_restored(wplus_pipe, plain_images):
    full = generate(wplus_pipe, wplus=w_plus())
    assert np.abs(full - plain_images).max() > CHANGED
    assert np.abs(generate(wplus_pipe, wplus=w_plus(seed=1)) - full).max() > CHANGED
    half = generate(wplus_pipe, wplus=w_plus(), wplus_scale=0.5)
    assert np.abs(half - full).max() > CHANGED / 10
    np.testing.assert_array_equal(generate(wplus_pipe, wplus=w_plus()), full)
    # numpy, [1, 18, 512] and [18, 512] are the same W+
    np.testing.assert_array_equal(generate(wplus_pipe, wplus=w_plus().numpy()[None]), full)


def test_one_wplus_per_prompt(wplus_pipe):
    prompts = [PROMPT, "an oil painting"]
    shared = generate(wplus_pipe, prompt=prompts, num_images_per_prompt=2, wplus=w_plus())
    assert shared.shape == (4, 64, 64, 3)
    per_prompt = generate(
        wplus_pipe,
        prompt=prompts,
        num_images_per_prompt=2,
        wplus=torch.stack([w_plus(), w_plus(seed=1)]),
    )
    np.testing.assert_allclose(per_prompt[:2], shared[:2], atol=1e-5)
    assert np.abs(per_prompt[2:] - shared[2:]).max() > CHANGED


def test_wplus_and_faceid_together_with_separate_scales(
    plain, wplus_checkpoint, faceid_checkpoint, plain_images
):
    embeds, latent = unit_embeds(2), w_plus()
    faceid_only = fresh(plain)
    faceid_only.load_identity_adapter(faceid_checkpoint)
    identity_images = generate(faceid_only, identity_embeds=embeds)
    wplus_only = fresh(plain)
    wplus_only.load_wplus_adapter(wplus_checkpoint)
    wplus_images = generate(wplus_only, wplus=latent)

    both = fresh(plain)
    both.load_wplus_adapter(wplus_checkpoint)
    both.load_identity_adapter(faceid_checkpoint)
    assert both.attention_contributions() == ["identity", WPLUS]
    kwargs = {"identity_embeds": embeds, "wplus": latent}
    together = generate(both, **kwargs)
    assert np.abs(together - identity_images).max() > CHANGED
    assert np.abs(together - wplus_images).max() > CHANGED
    # Each scale reaches its own adapter only.
    np.testing.assert_array_equal(generate(both, **kwargs, wplus_scale=0.0), identity_images)
    np.testing.assert_array_equal(generate(both, **kwargs, identity_scale=0.0), wplus_images)
    off = generate(both, **kwargs, identity_scale=0.0, wplus_scale=0.0)
    np.testing.assert_array_equal(off, plain_images)

    # Unloading one leaves the other.
    both.unload_identity_adapter()
    assert both.attention_contributions() == [WPLUS] and both.wplus_attn is not None
    np.testing.assert_array_equal(generate(both, wplus=latent), wplus_images)
    both.load_identity_adapter(faceid_checkpoint)
    both.remove_attention_contribution(WPLUS)
    assert both.attention_contributions() == ["identity"]
    assert both.wplus_attn is None and both.wplus_projection is None
    np.testing.assert_array_equal(generate(both, identity_embeds=embeds), identity_images)


def test_save_and_load_round_trip_keeps_the_wplus_adapter(
    tmp_path, plain, wplus_checkpoint, faceid_checkpoint
):
    pipe = fresh(plain)
    pipe.load_identity_adapter(faceid_checkpoint)
    pipe.load_wplus_adapter(wplus_checkpoint, scale=0.7, start=0.5)
    kwargs = {"identity_embeds": unit_embeds(2), "wplus": w_plus()}
    expected = generate(pipe, **kwargs)
    pipe.save_pretrained(tmp_path)
    again = PortraitPipeline.from_pretrained(tmp_path)
    again.set_progress_bar_config(disable=True)
    assert again.attention_contributions() == ["identity", WPLUS]
    assert (again.wplus_schedule.scale, again.wplus_schedule.start) == (0.7, 0.5)
    np.testing.assert_array_equal(generate(again, **kwargs), expected)


def test_model_cpu_offload_keeps_the_image(plain, wplus_checkpoint):
    pipe = fresh(plain)
    pipe.load_wplus_adapter(wplus_checkpoint)
    expected = generate(pipe, wplus=w_plus())
    pipe.enable_model_cpu_offload(device="cpu")
    assert hasattr(pipe.wplus_projection, "_hf_hook")
    np.testing.assert_array_equal(generate(pipe, wplus=w_plus()), expected)


def test_start_schedule(wplus_pipe, plain_images):
    latent = w_plus()
    from_the_start = generate(wplus_pipe, wplus=latent)
    wplus_pipe.set_wplus_scale(1.0, start=1.0)
    np.testing.assert_array_equal(generate(wplus_pipe, wplus=latent), plain_images)
    wplus_pipe.set_wplus_scale(1.0, start=0.5)  # 2 steps: the first without W+
    second_step_only = generate(wplus_pipe, wplus=latent)
    assert np.abs(second_step_only - plain_images).max() > CHANGED / 10
    assert np.abs(second_step_only - from_the_start).max() > CHANGED / 10
    assert wplus_pipe.wplus_schedule.start == 0.5
    with pytest.raises(ValueError, match="fraction of the steps"):
        wplus_pipe.set_wplus_scale(1.0, start=1.5)


def test_wplus_input_errors(plain, wplus_pipe):
    with pytest.raises(ValueError, match="load_wplus_adapter"):
        generate(plain, wplus=w_plus())
    with pytest.raises(ValueError, match="load_wplus_adapter"):
        fresh(plain).set_wplus_scale(0.5)
    with pytest.raises(ValueError, match=r"`wplus` must be \[18, 512\] or \[batch, 18, 512\]"):
        generate(wplus_pipe, wplus=torch.zeros(14, 512))
    with pytest.raises(ValueError, match="`wplus` holds 3 W\\+ for 2 prompts"):
        generate(wplus_pipe, prompt=[PROMPT, PROMPT], wplus=w_plus(batch=3))
    with pytest.raises(TypeError, match="`wplus` must be a float tensor"):
        generate(wplus_pipe, wplus=np.zeros((18, 512), dtype=np.int64))
    with pytest.raises(ValueError, match="`wplus` must be finite"):
        generate(wplus_pipe, wplus=w_plus() * float("nan"))
    with pytest.raises(ValueError, match="`wplus_scale` was given without `wplus`"):
        generate(wplus_pipe, wplus_scale=0.5)
    with pytest.raises(ValueError, match="`wplus_scale` must be a finite number"):
        generate(wplus_pipe, wplus=w_plus(), wplus_scale=float("inf"))


def test_wplus_follows_the_identity_rows(plain, wplus_checkpoint, faceid_checkpoint):
    pipe = fresh(plain)
    pipe.load_wplus_adapter(wplus_checkpoint)
    pipe.load_identity_adapter(faceid_checkpoint)
    size = 64 // pipe.vae_scale_factor
    first, second = (
        torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(seed))
        for seed in (1, 2)
    )
    kwargs = {"identity_embeds": unit_embeds(2), "wplus": w_plus()}
    both = generate(
        pipe,
        num_images_per_prompt=2,
        latents=torch.cat([first, second]),
        identity_rows=[True, False],
        **kwargs,
    )
    with_both = generate(pipe, latents=first, **kwargs)
    without = generate(pipe, latents=second)  # the off row has neither identity nor W+
    assert np.abs(both[0] - with_both[0]).max() < 1e-5
    assert np.abs(both[1] - without[0]).max() < 1e-5
    assert np.abs(with_both[0] - generate(pipe, latents=first, wplus=w_plus())[0]).max() > CHANGED
