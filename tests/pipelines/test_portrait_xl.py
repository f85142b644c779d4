"""PortraitXLPipeline (SDXL) on the tiny set: stock parity, outputs, IdentityNet, identity, LoRA."""

from __future__ import annotations

import copy

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionXLPipeline, UNet2DConditionModel
from peft import LoraConfig, get_peft_model_state_dict
from pipeline_tester import PortraitPipelineTesterMixin
from portrait_helpers import PROMPT, condition, generate, make_controlnet, unit_embeds

from adapters import write_checkpoint
from pipelines import PortraitXLPipeline
from studio.models.tiny import built_path


def load(path, **components) -> PortraitXLPipeline:
    pipe = PortraitXLPipeline.from_pretrained(path, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl_path(tiny_models_dir):
    return built_path(tiny_models_dir, "tiny-sdxl")


@pytest.fixture(scope="module")
def pipe(sdxl_path) -> PortraitXLPipeline:
    """The plain pipeline; tests never change it."""
    return load(sdxl_path)


@pytest.fixture(scope="module")
def stock_images(sdxl_path) -> np.ndarray:
    stock = StableDiffusionXLPipeline.from_pretrained(sdxl_path)
    stock.set_progress_bar_config(disable=True)
    return generate(stock)


@pytest.fixture(scope="module")
def nets(pipe) -> dict[str, ControlNetModel]:
    return {
        "identitynet": make_controlnet(pipe.unet, seed=1),
        "controlnet": make_controlnet(pipe.unet, seed=2),
    }


@pytest.fixture(scope="module")
def controlnets(pipe, nets) -> tuple[ControlNetModel, ControlNetModel]:
    return nets["controlnet"], make_controlnet(pipe.unet, seed=3)


@pytest.fixture(scope="module")
def instantid_checkpoint(tmp_path_factory, pipe):
    path = tmp_path_factory.mktemp("instantid") / "ip-adapter.bin"
    return write_checkpoint("instantid", path, unet=pipe.unet)


@pytest.fixture(scope="module")
def instantid_pipe(sdxl_path, nets, instantid_checkpoint) -> PortraitXLPipeline:
    """IdentityNet, a second ControlNet and the InstantID adapter; tests change it for one call."""
    pipe = load(sdxl_path, **nets)
    pipe.load_identity_adapter(instantid_checkpoint)
    return pipe


@pytest.fixture(scope="module")
def identity_pipe(sdxl_path, instantid_checkpoint) -> PortraitXLPipeline:
    """The InstantID adapter without nets; tests change it only for one call."""
    pipe = load(sdxl_path)
    pipe.load_identity_adapter(instantid_checkpoint)
    return pipe


class TestPortraitXLPipeline(PortraitPipelineTesterMixin):
    pipeline_class = PortraitXLPipeline
    optional_parts = ("identitynet", "controlnet", "identity_projection", "identity_attn")


# -- callbacks ------------------------------------------------------------------------------------


def test_callback_sees_the_sdxl_time_ids(pipe):
    def callback(pipeline, step, timestep, tensors):
        assert tensors["add_time_ids"].shape == (2, 6)  # negative and positive
        return {"add_time_ids": tensors["add_time_ids"] * 0}

    zeroed = generate(
        pipe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["add_time_ids"]
    )
    assert np.abs(zeroed - generate(pipe)).max() > 1e-4


# -- IdentityNet and ControlNet ------------------------------------------------------------------


def test_identitynet_reads_the_identity_tokens_and_controlnet_the_prompt(instantid_pipe):
    seen: dict[str, torch.Tensor] = {}

    def recorder(name):
        def hook(module, args, kwargs):
            seen[name] = kwargs["encoder_hidden_states"]

        return hook

    handles = [
        instantid_pipe.identitynet.register_forward_pre_hook(
            recorder("identitynet"), with_kwargs=True
        ),
        instantid_pipe.controlnet.register_forward_pre_hook(
            recorder("controlnet"), with_kwargs=True
        ),
    ]
    embeds = unit_embeds(2)
    try:
        generate(
            instantid_pipe,
            prompt=[PROMPT, "an oil painting"],
            identity_embeds=embeds,
            keypoint_image=condition(3),
            control_image=condition(4),
        )
    finally:
        for handle in handles:
            handle.remove()
    tokens = instantid_pipe.encode_identity(embeds, num_images=2, do_classifier_free_guidance=True)
    assert seen["identitynet"].shape == (4, 16, 64)  # [negatives + positives, tokens, UNet width]
    torch.testing.assert_close(seen["identitynet"], tokens, rtol=0, atol=0)
    assert seen["controlnet"].shape == (4, 77, 64)  # the prompt embeddings


def test_identitynet_and_controlnet_have_separate_scales(instantid_pipe):
    embeds, keypoints, control = unit_embeds(2), condition(3), condition(4)
    adapter_only = generate(instantid_pipe, identity_embeds=embeds)
    identitynet_only = generate(instantid_pipe, identity_embeds=embeds, keypoint_image=keypoints)
    controlnet_only = generate(instantid_pipe, identity_embeds=embeds, control_image=control)
    assert np.abs(identitynet_only - adapter_only).max() > 1e-3
    assert np.abs(controlnet_only - adapter_only).max() > 1e-3

    def both(identitynet_scale, controlnet_scale):
        return generate(
            instantid_pipe,
            identity_embeds=embeds,
            keypoint_image=keypoints,
            control_image=control,
            identitynet_conditioning_scale=identitynet_scale,
            controlnet_conditioning_scale=controlnet_scale,
        )

    np.testing.assert_array_equal(both(0.0, 0.0), adapter_only)
    np.testing.assert_array_equal(both(1.0, 0.0), identitynet_only)
    np.testing.assert_array_equal(both(0.0, 1.0), controlnet_only)
    full = both(1.0, 1.0)
    assert np.abs(full - identitynet_only).max() > 1e-3
    assert np.abs(both(0.5, 1.0) - full).max() > 1e-4


def test_keypoint_and_control_image_errors(pipe, instantid_pipe):
    with pytest.raises(ValueError, match="has no `identitynet`"):
        generate(pipe, keypoint_image=condition(3))
    with pytest.raises(ValueError, match="has no `controlnet`"):
        generate(pipe, control_image=condition(3))
    with pytest.raises(ValueError, match="pass `identity_embeds` too"):
        generate(instantid_pipe, keypoint_image=condition(3))
    with pytest.raises(ValueError, match=r"channels-last \[H, W, 3\].*\(64, 64\)"):
        generate(
            instantid_pipe,
            identity_embeds=unit_embeds(1),
            keypoint_image=np.zeros((64, 64), np.uint8),
        )


def test_a_keypoint_image_of_another_size_is_resized_to_the_output(instantid_pipe):
    embeds, keypoints = unit_embeds(1), PIL.Image.fromarray(condition(3, 32, 48))
    resized = np.asarray(keypoints.resize((64, 64), PIL.Image.LANCZOS))
    np.testing.assert_array_equal(
        generate(
            instantid_pipe, identity_embeds=embeds, keypoint_image=keypoints, height=64, width=64
        ),
        generate(instantid_pipe, identity_embeds=embeds, keypoint_image=resized),
    )
    # The first condition sets the output size; the control image is resized to it.
    images = generate(
        instantid_pipe, identity_embeds=embeds, keypoint_image=keypoints, control_image=condition(4)
    )
    assert images.shape == (1, 32, 48, 3)


def test_output_size_defaults_to_the_keypoint_image(instantid_pipe):
    images = generate(
        instantid_pipe, identity_embeds=unit_embeds(1), keypoint_image=condition(3, 64, 96)
    )
    assert images.shape == (1, 64, 96, 3)


# -- identity, offload, saving, LoRA ---------------------------------------------------------------


def test_offload_sequence_covers_every_model_but_the_nets_beside_the_unet(instantid_pipe):
    components = instantid_pipe.components
    models = {n for n, c in components.items() if isinstance(c, torch.nn.Module)}
    chain = instantid_pipe.model_cpu_offload_seq.split("->")
    assert models - set(chain) == {"identitynet", "controlnet", "identity_attn"}
    assert chain.index("identity_projection") < chain.index("unet")


@pytest.mark.gpu
def test_model_cpu_offload_on_cuda_matches_the_pipeline_on_cuda(
    sdxl_path, nets, instantid_checkpoint
):
    # Offload hooks and devices stay on the modules: give this pipeline its own nets.
    full = load(sdxl_path, **copy.deepcopy(nets))
    full.load_identity_adapter(instantid_checkpoint)
    kwargs = {
        "identity_embeds": unit_embeds(2),
        "keypoint_image": condition(3),
        "control_image": condition(4),
    }
    full.to("cuda")
    expected = generate(full, **kwargs)
    full.enable_model_cpu_offload()
    np.testing.assert_allclose(generate(full, **kwargs), expected, atol=1e-4)
    for name in ("unet", "identitynet", "controlnet", "identity_projection", "identity_attn"):
        assert full.components[name].device.type == "cpu", f"{name} stayed on the GPU"


def test_save_and_load_round_trip_keeps_both_nets_and_the_adapter(tmp_path, instantid_pipe):
    kwargs = {
        "identity_embeds": unit_embeds(2),
        "keypoint_image": condition(3),
        "control_image": condition(4),
    }
    expected = generate(instantid_pipe, **kwargs)
    instantid_pipe.save_pretrained(tmp_path)
    again = load(tmp_path)
    assert isinstance(again.identitynet, ControlNetModel)
    assert isinstance(again.controlnet, ControlNetModel)
    assert again.identity_family == "instantid"
    np.testing.assert_array_equal(generate(again, **kwargs), expected)


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")
def test_instantid_with_two_loras(tmp_path, sdxl_path, instantid_checkpoint):
    paths = {}
    for name, targets, seed in (
        ("identity", ["attn2.to_q", "attn2.to_k", "attn2.to_out.0"], 1),
        ("style", ["attn1.to_q", "attn1.to_v", "proj_in"], 2),
    ):
        unet = UNet2DConditionModel.from_pretrained(sdxl_path, subfolder="unet")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet.add_adapter(
                LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=targets)
            )
        paths[name] = tmp_path / name
        StableDiffusionXLPipeline.save_lora_weights(
            paths[name], unet_lora_layers=get_peft_model_state_dict(unet), safe_serialization=True
        )
    pipe = load(sdxl_path)
    pipe.load_identity_adapter(instantid_checkpoint)
    embeds = unit_embeds(2)
    identity_only = generate(pipe, identity_embeds=embeds)
    for name, path in paths.items():
        pipe.load_lora_weights(path, adapter_name=name)
    pipe.set_adapters(["identity", "style"], adapter_weights=[1.0, 0.5])
    stacked = generate(pipe, identity_embeds=embeds)
    assert np.abs(stacked - identity_only).max() > 1e-3
    pipe.disable_lora()  # peft's disabled path may round differently: not bit-exact
    np.testing.assert_allclose(generate(pipe, identity_embeds=embeds), identity_only, atol=1e-5)
