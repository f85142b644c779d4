"""Attribute repair (FreeCure): the FASA contribution on the attention stack and the repair
pipelines derived from the tiny portrait pipelines (FaceID, InstantID, a profile LoRA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig
from portrait_helpers import condition, load_pipeline, unit_embeds

from adapters import write_checkpoint
from adapters.fasa import (
    FASA,
    FasaConfig,
    FasaInput,
    FasaSession,
    FoundationAwareSelfAttention,
    default_fasa_layers,
    self_attention_layers,
)
from pipelines import PortraitPipeline
from pipelines.repair import (
    PortraitRepairPipeline,
    PortraitRepairXLPipeline,
    attention_mask,
    otsu_threshold,
    x0_estimate,
)
from studio.models.tiny import built_path

PROMPT = "a photo of a person, red hair, round glasses"
ATTRIBUTES = {"hair": "red hair", "glasses": "round glasses"}
#: Largest difference between a batch row and its separate run (CPU, fp32).
ROW_TOLERANCE = 1e-5
#: Bounds on how far pass 2 moves pixels far outside the mask (images in [0, 1]): queries
#: everywhere may attend to the masked foundation keys, and the tiny random UNet's attention is
#: not semantically local, so the bounds are absolute: mean and largest change per pixel.
FAR_OUTSIDE_MEAN, FAR_OUTSIDE_MAX = 0.01, 0.05


def top_mask(size: int = 64, rows: int = 24) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[:rows] = True
    return mask


def given_top(personalized, foundation, names):
    """A mask function: the top 3/8 of the image for hair, the attention fallback for the
    others (masks at the images' size: the output's, or the previews' in the run)."""
    size = foundation[0].size[0]
    hair = top_mask(size, rows=size * 3 // 8)
    return [{"hair": hair, **{n: None for n in names if n != "hair"}} for _ in foundation]


def repair(pipe, steps: int = 3, **kwargs):
    kwargs = {
        "attributes": ATTRIBUTES,
        "mask_function": given_top,
        "num_inference_steps": steps,
        "guidance_scale": 5.0,
        "output_type": "np",
        "generator": torch.Generator().manual_seed(0),
        **kwargs,
    }
    return pipe(PROMPT, **kwargs)


def identity(pipe) -> dict:
    kwargs = {"identity_embeds": unit_embeds(1), "identity_scale": 0.8}
    if getattr(pipe, "identitynet", None) is not None:
        kwargs["keypoint_image"] = condition(3)
    return kwargs


def derived(pipe):
    cls = PortraitRepairXLPipeline if hasattr(pipe, "text_encoder_2") else PortraitRepairPipeline
    repair_pipe = cls.from_pipe(pipe)
    repair_pipe.set_progress_bar_config(disable=True)
    return repair_pipe


def plain(pipe, steps: int = 3, **kwargs):
    generator = torch.Generator().manual_seed(0)
    return pipe(
        PROMPT,
        num_inference_steps=steps,
        guidance_scale=5.0,
        output_type="np",
        generator=generator,
        **kwargs,
    ).images


# -- the contribution on the UNet ------------------------------------------------------------


def unet_call(pipe, session, *, batch: int, rows=None, identity_scale=None, seed: int = 0):
    """One UNet call on fixed random inputs with FASA's (and optionally identity's) inputs."""
    generator = torch.Generator().manual_seed(seed)
    unet = pipe.unet
    sample = torch.randn(1, unet.config.in_channels, 8, 8, generator=generator).expand(
        batch, -1, -1, -1
    )
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    tokens = None
    if identity_scale is not None:
        tokens = pipe.encode_identity(
            unit_embeds(1), num_images=batch, do_classifier_free_guidance=False
        )
    kwargs = pipe.attention_call_kwargs(
        None,
        identity_tokens=tokens,
        identity_scale=identity_scale,
        extra_inputs={FASA: FasaInput(session=session, rows=rows)},
    )
    return unet(
        sample, 500, encoder_hidden_states=text.expand(batch, -1, -1), cross_attention_kwargs=kwargs
    ).sample


@pytest.fixture
def fasa_on(sd15_faceid):
    """The FaceID pipeline with FASA stacked (as the first repair leaves it)."""
    derived(sd15_faceid)._stack_repair_contributions()
    return sd15_faceid, [layer.name for layer in self_attention_layers(sd15_faceid.unet)]


def recorded_session(pipe, layers, mask: np.ndarray) -> FasaSession:
    """Pass 1 on one UNet call (batch: [personalized, foundation]), then switched to pass 2."""
    session = FasaSession(num_images=1, steps=range(0, 1), weight=0.5, layers=layers)
    unet_call(pipe, session, batch=2, seed=1)
    session.apply(torch.from_numpy(mask)[None, None].float())
    return session


def test_fasa_with_an_empty_mask_is_plain_attention_exactly(fasa_on):
    pipe, layers = fasa_on
    session = recorded_session(pipe, layers, np.zeros((64, 64), dtype=bool))
    with_fasa = unet_call(pipe, session, batch=1, rows=(True,), identity_scale=0.8)
    without = unet_call(pipe, None, batch=1, identity_scale=0.8)
    torch.testing.assert_close(with_fasa, without, rtol=0, atol=0)


def test_fasa_changes_the_masked_rows_only(fasa_on):
    pipe, layers = fasa_on
    session = recorded_session(pipe, layers, top_mask())
    both = unet_call(pipe, session, batch=2, rows=(False, True))
    without = unet_call(pipe, None, batch=2)
    torch.testing.assert_close(both[0], without[0], rtol=0, atol=1e-6)  # row off: untouched
    assert (both[1] - without[1]).abs().max() > 1e-4


def test_identity_still_runs_under_fasa(fasa_on):
    pipe, layers = fasa_on
    session = recorded_session(pipe, layers, top_mask())
    strong = unet_call(pipe, session, batch=1, rows=(True,), identity_scale=1.0)
    weak = unet_call(pipe, session, batch=1, rows=(True,), identity_scale=0.2)
    no_fasa = unet_call(pipe, None, batch=1, identity_scale=1.0)
    assert (strong - weak).abs().max() > 1e-4  # identity's scale reaches the output
    assert (strong - no_fasa).abs().max() > 1e-4  # and FASA acts beside it


def test_pass_2_needs_pass_1_records(fasa_on):
    pipe, layers = fasa_on
    session = FasaSession(num_images=1, steps=range(0, 1), weight=0.5, layers=layers)
    session.apply(torch.ones(1, 1, 64, 64))
    with pytest.raises(ValueError, match="run pass 1 with the same steps and layers"):
        unet_call(pipe, session, batch=1, rows=(True,))


def test_a_live_session_takes_the_foundation_rows_of_the_same_call(fasa_on):
    """In-run FASA: batch ``[personalized, foundation]``; the personalized row attends to the
    foundation row's masked keys of this very call, the foundation row is left as it was."""
    pipe, layers = fasa_on
    session = FasaSession(num_images=1, steps=range(0, 1), weight=0.5, layers=layers, live=True)
    without = unet_call(pipe, None, batch=2, seed=2)
    recording = unet_call(pipe, session, batch=2, seed=2)
    torch.testing.assert_close(recording, without, rtol=0, atol=0)  # nothing kept, nothing done
    assert session.keys_values == {}
    session.apply(torch.from_numpy(top_mask())[None, None].float())
    assert session.step == 0  # a live session goes on from its step
    live = unet_call(pipe, session, batch=2, seed=2)
    torch.testing.assert_close(live[1], without[1], rtol=0, atol=1e-6)  # foundation untouched
    assert (live[0] - without[0]).abs().max() > 1e-4
    session.apply(torch.zeros(1, 1, 64, 64))
    torch.testing.assert_close(unet_call(pipe, session, batch=2, seed=2), without, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", ["DDIMScheduler", "EulerDiscreteScheduler"])
def test_x0_previews_match_the_schedulers_own_prediction(name, kind):
    import diffusers

    config = {"prediction_type": kind, "timestep_spacing": "leading"}
    if name == "DDIMScheduler":
        config["clip_sample"] = False  # as Stable Diffusion configures it
    scheduler = getattr(diffusers, name)(**config)
    scheduler.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator) * scheduler.init_noise_sigma
    prediction = torch.randn(2, 4, 8, 8, generator=generator)
    for t in scheduler.timesteps[:3]:
        model_input = scheduler.scale_model_input(latents, t)
        step = scheduler.step(prediction, t, latents)
        torch.testing.assert_close(
            x0_estimate(scheduler, model_input, t, prediction),
            step.pred_original_sample,
            rtol=1e-4,
            atol=1e-4,
        )
        latents = step.prev_sample


def test_published_layer_choice(sd15_faceid, sdxl_faceid):
    for pipe in (sd15_faceid, sdxl_faceid):
        layers = self_attention_layers(pipe.unet)
        chosen = default_fasa_layers(pipe.unet)
        assert chosen == tuple(layer.name for layer in layers[-len(chosen) :])
        assert all(".attn1." in name for name in chosen)
    assert FasaConfig(start=0.25, end=0.75).step_range(8) == range(2, 6)
    with pytest.raises(ValueError, match="0 <= start < end <= 1"):
        FasaConfig(start=0.5, end=0.5)


# -- the repair pipelines ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sd15_faceid", "sdxl_faceid", "sdxl_instantid"])
def test_repair_runs_both_branches_in_one_batch(name, request):
    pipe = request.getfixturevalue(name)
    out_plain = plain(pipe)
    out = repair(derived(pipe), **identity(pipe))
    assert out.foundation_mode == "batched"
    assert out.fasa_start == 0
    # the branches are the identity run and the plain run from the same noise
    np.testing.assert_allclose(
        out.personalized_images, plain(pipe, **identity(pipe)), atol=ROW_TOLERANCE
    )
    np.testing.assert_allclose(out.foundation_images, out_plain, atol=ROW_TOLERANCE)
    assert out.mask_sources == [{"hair": "given", "glasses": "attention"}]
    assert out.masks[0]["hair"].sum() == top_mask().sum()
    assert out.masks[0]["glasses"].shape == (64, 64)
    assert np.abs(out.images - out.personalized_images).max() > 1e-3
    # FASA stays stacked on the shared UNet, inert outside a repair
    assert pipe.attention_contributions() == ["identity", "fasa", "fasa-maps"]
    np.testing.assert_array_equal(plain(pipe), out_plain)


def count_unet_calls(pipe) -> list[int]:
    """Batch sizes of the UNet's calls from now on (the hook stays on the test's pipeline)."""
    sizes: list[int] = []
    pipe.unet.register_forward_hook(lambda module, args, output: sizes.append(len(args[0])))
    return sizes


@pytest.mark.parametrize("name", ["sd15_faceid", "sdxl_faceid", "sdxl_instantid"])
def test_an_in_run_repair_checks_previews_and_repairs_in_the_same_run(name, request):
    pipe = request.getfixturevalue(name)
    two_pass = repair(derived(pipe), steps=4, **identity(pipe))
    seen = []

    def masks(personalized, foundation, names):
        seen.append((len(personalized), len(foundation), personalized[0].size))
        return given_top(personalized, foundation, names)

    repair_pipe = derived(pipe)
    calls = count_unet_calls(repair_pipe)
    out = repair(repair_pipe, steps=4, check_step=0.5, mask_function=masks, **identity(pipe))
    assert calls == [4] * 4  # one run of [personalized, foundation] with CFG: no pass 2
    assert seen == [(1, 1, (32, 32))]  # the mask function saw both previews once, half size
    assert out.masks[0]["hair"].shape == (64, 64)  # resized to the output
    np.testing.assert_array_equal(out.masks[0]["hair"], top_mask())
    assert out.check_step == 2 and out.fasa_start == 2
    assert out.personalized_images is None  # repaired in the run: no unrepaired image
    assert out.mask_sources == [{"hair": "given", "glasses": "attention"}]
    # the foundation rows are those of the two-pass repair; the portrait is repaired
    np.testing.assert_allclose(out.foundation_images, two_pass.foundation_images, atol=1e-4)
    assert np.abs(out.images - two_pass.personalized_images).max() > 1e-3


def test_an_in_run_repair_with_nothing_missing_is_the_personalized_run(sd15_faceid):
    pipe = derived(sd15_faceid)
    two_pass = repair(pipe, steps=4, **identity(sd15_faceid))
    out = repair(
        pipe,
        steps=4,
        check_step=0.3,
        mask_function=lambda p, f, names: [{} for _ in f],
        **identity(sd15_faceid),
    )
    assert out.check_step == 1 and out.fasa_start is None
    np.testing.assert_allclose(out.images, two_pass.personalized_images, atol=ROW_TOLERANCE)
    np.testing.assert_array_equal(out.images, out.personalized_images)


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_an_in_run_repair_of_two_images_repairs_each_on_its_own_mask(sd15_faceid, guidance):
    """Two images per prompt, with and without CFG: each portrait row takes its own foundation
    row's keys in its own mask; the second image, with nothing missing, is left alone."""
    pipe = derived(sd15_faceid)
    previews = []

    def first_only(personalized, foundation, names):
        previews.append((len(personalized), len(foundation)))
        return [given_top(personalized, foundation, names)[0], {}]

    kwargs = {
        "steps": 4,
        "guidance_scale": guidance,
        "num_images_per_prompt": 2,
        **identity(sd15_faceid),
    }
    out = repair(pipe, check_step=0.5, mask_function=first_only, **kwargs)
    both = repair(pipe, check_step=0.5, mask_function=lambda p, f, n: [{}, {}], **kwargs)
    assert previews == [(2, 2)] and out.check_step == 2
    assert out.mask_sources[1] == {} and set(out.masks[0]) == {"hair", "glasses"}
    # repaired (without CFG's amplification FASA moves the tiny model's image less) ...
    assert np.abs(out.images[0] - both.images[0]).max() > 10 * ROW_TOLERANCE
    np.testing.assert_allclose(out.images[1], both.images[1], atol=ROW_TOLERANCE)  # untouched
    np.testing.assert_allclose(out.foundation_images, both.foundation_images, atol=1e-4)


@pytest.mark.parametrize("name", ["sd15_faceid", "sdxl_faceid"])
def test_previews_decode_as_the_pipeline_does(name, request):
    pipe = request.getfixturevalue(name)
    latents = pipe(
        PROMPT, num_inference_steps=2, output_type="latent", generator=torch.Generator()
    ).images
    decoded = pipe(PROMPT, num_inference_steps=2, output_type="np", generator=torch.Generator())
    repair_pipe = derived(pipe)
    np.testing.assert_allclose(
        repair_pipe._decode_preview(latents, downscale=1), decoded.images, atol=1e-5
    )
    assert repair_pipe._decode_preview(latents).shape == (1, 32, 32, 3)  # previews: half size


def test_repair_changes_far_outside_the_mask_less(sd15_faceid):
    pipe = derived(sd15_faceid)
    only_hair = lambda p, f, names: [{"hair": top_mask(rows=16)} for _ in f]  # noqa: E731
    out = repair(pipe, mask_function=only_hair, **identity(sd15_faceid))
    change = np.abs(out.images[0] - out.personalized_images[0]).mean(axis=-1)
    far = change[40:]
    assert far.mean() < FAR_OUTSIDE_MEAN
    assert far.max() < FAR_OUTSIDE_MAX
    assert change[:16].max() > 1e-3  # and the repair did act


def test_layer_and_step_selection_touch_only_the_chosen_calls(sd15_faceid, monkeypatch):
    pipe = derived(sd15_faceid)
    layers = (default_fasa_layers(pipe.unet)[0],)
    calls = []
    original = FoundationAwareSelfAttention.edit_self_attention

    def counted(self, attn, query, key, *args):
        calls.append((self.layer_name, args[-2].session.step, args[-2].session.recording))
        return original(self, attn, query, key, *args)

    monkeypatch.setattr(FoundationAwareSelfAttention, "edit_self_attention", counted)
    out = repair(pipe, steps=4, fasa=FasaConfig(layers=layers, start=0.5), **identity(pipe))
    assert sorted(set(calls)) == sorted(
        (layers[0], step, recording) for step in (2, 3) for recording in (True, False)
    )
    assert len(calls) == 4  # one call per chosen layer and step in each pass
    assert out.fasa_start == 2  # Euler: pass 2 starts from pass 1's latents at step 2


def test_pass_2_from_pass_1_latents_equals_a_full_run(sd15_faceid):
    """With the mask empty at every layer the resumed pass 2 is pass 1's personalized run."""
    pipe = derived(sd15_faceid)
    first = repair(pipe, steps=4, fasa=FasaConfig(start=0.5), mask_function=given_top)
    assert first.fasa_start == 2
    resumed_empty = repair(
        pipe,
        steps=4,
        fasa=FasaConfig(start=0.5, weight=float("-1e9")),  # masked keys carry no weight
        mask_function=given_top,
    )
    np.testing.assert_allclose(resumed_empty.images, first.personalized_images, atol=1e-4)


def test_profile_lora_runs_the_foundation_as_its_own_call(tiny_models_dir, tmp_path):
    pipe = load_pipeline(PortraitPipeline, built_path(tiny_models_dir, "tiny-sd15"))
    pipe.load_identity_adapter(write_checkpoint("faceid-sd15", tmp_path / "f.bin", unet=pipe.unet))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        pipe.unet.add_adapter(
            LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_v"])
        )
    out = repair(derived(pipe), check_step=0.5, **identity(pipe))
    assert out.foundation_mode == "separate"
    assert out.check_step is None and out.fasa_start == 0  # final images checked, then pass 2
    np.testing.assert_allclose(
        out.personalized_images, plain(pipe, **identity(pipe)), atol=ROW_TOLERANCE
    )
    pipe.disable_lora()
    try:
        np.testing.assert_allclose(out.foundation_images, plain(pipe), atol=1e-4)
    finally:
        pipe.enable_lora()
    assert np.abs(out.images - out.personalized_images).max() > 1e-3
    assert pipe.get_active_adapters()  # the LoRA is on again


def test_nothing_to_repair_skips_pass_2(sd15_faceid):
    out = repair(derived(sd15_faceid), mask_function=lambda p, f, names: [{} for _ in f])
    assert out.fasa_start is None
    np.testing.assert_array_equal(out.images, out.personalized_images)


def test_repair_input_errors(sd15_faceid):
    pipe = derived(sd15_faceid)
    with pytest.raises(ValueError, match="`attributes` must map attribute names"):
        repair(pipe, attributes=["hair"])
    with pytest.raises(TypeError, match="`identity_rows` cannot be given to a repair"):
        repair(pipe, identity_rows=[True])
    with pytest.raises(ValueError, match="FASA layers must be self-attention layers"):
        repair(pipe, fasa=FasaConfig(layers=("down_blocks.1.attentions.0.x",)))
    with pytest.raises(ValueError, match="one mapping per image"):
        repair(pipe, mask_function=lambda p, f, names: [])
    with pytest.raises(ValueError, match="the images are 64x64"):
        repair(pipe, mask_function=lambda p, f, names: [{"hair": np.ones((8, 8))}])
    with pytest.raises(ValueError, match=r"`check_step` is a fraction of the steps in \(0, 1\)"):
        repair(pipe, check_step=1.5)
    with pytest.raises(ValueError, match="at or after the end of FASA's step range"):
        repair(pipe, steps=4, check_step=0.5, fasa=FasaConfig(end=0.5))


def test_named_attributes_skip_the_comparison(sd15_faceid):
    """``compare=False``: pass 1 is the foundation alone, pass 2 the personalized repair."""
    pipe = derived(sd15_faceid)
    seen = []

    def masks(personalized, foundation, names):
        seen.append(personalized)
        return given_top(personalized, foundation, names)

    out = repair(pipe, mask_function=masks, compare=False, **identity(sd15_faceid))
    both = repair(pipe, **identity(sd15_faceid))
    assert seen == [None] and out.personalized_images is None
    assert out.foundation_mode == "separate"
    np.testing.assert_allclose(out.foundation_images, both.foundation_images, atol=ROW_TOLERANCE)
    np.testing.assert_allclose(out.images, both.images, atol=1e-4)
    nothing = repair(pipe, mask_function=lambda p, f, names: [{}], compare=False)
    assert nothing.fasa_start is None
    np.testing.assert_allclose(nothing.images, plain(sd15_faceid), atol=ROW_TOLERANCE)


def test_attention_mask_thresholds_by_otsu():
    values = np.concatenate([np.full(100, 0.1), np.full(50, 0.9)])
    assert 0.1 < otsu_threshold(values) < 0.9
    attention = torch.zeros(32, 32)
    attention[:8] = 1.0
    mask = attention_mask(attention, 64, 64)
    assert mask[:12].all() and not mask[20:].any()
