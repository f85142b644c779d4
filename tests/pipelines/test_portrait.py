"""PortraitPipeline (SD1.5) on the tiny set: stock parity, outputs, ControlNets, identity, LoRA."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models import MultiControlNetModel
from peft import LoraConfig, get_peft_model_state_dict
from portrait_helpers import PROMPT, condition, generate, make_controlnet, unit_embeds
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from adapters import IdentityAdapterError, write_checkpoint
from pipelines import PortraitPipeline
from studio.models.tiny import built_path


def load(path, **components) -> PortraitPipeline:
    pipe = PortraitPipeline.from_pretrained(path, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_lora(path, unet_path, target_modules: list[str], seed: int):
    """A random peft LoRA of the tiny UNet, saved by diffusers' LoRA writer."""
    unet = UNet2DConditionModel.from_pretrained(unet_path, subfolder="unet")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = LoraConfig(
            r=4, lora_alpha=4, init_lora_weights=False, target_modules=target_modules
        )
        unet.add_adapter(config)
    StableDiffusionPipeline.save_lora_weights(
        path, unet_lora_layers=get_peft_model_state_dict(unet), safe_serialization=True
    )
    return path


@pytest.fixture(scope="module")
def sd15_path(tiny_models_dir):
    return built_path(tiny_models_dir, "tiny-sd15")


@pytest.fixture(scope="module")
def pipe(sd15_path) -> PortraitPipeline:
    """The plain pipeline; tests build variants from its components and never change it."""
    return load(sd15_path)


@pytest.fixture(scope="module")
def stock_images(sd15_path) -> np.ndarray:
    stock = StableDiffusionPipeline.from_pretrained(sd15_path)
    stock.set_progress_bar_config(disable=True)
    return generate(stock)


@pytest.fixture(scope="module")
def controlnets(pipe) -> tuple[ControlNetModel, ControlNetModel]:
    return make_controlnet(pipe.unet, seed=1), make_controlnet(pipe.unet, seed=2)


@pytest.fixture(scope="module")
def faceid_checkpoint(tmp_path_factory, pipe):
    path = tmp_path_factory.mktemp("faceid") / "ip-adapter-faceid_sd15.bin"
    return write_checkpoint("faceid-sd15", path, unet=pipe.unet)


@pytest.fixture(scope="module")
def identity_pipe(sd15_path, faceid_checkpoint) -> PortraitPipeline:
    """A pipeline with the FaceID adapter at scale 1; tests change it only for one call."""
    pipe = load(sd15_path)
    pipe.load_identity_adapter(faceid_checkpoint)
    return pipe


def with_controlnet(pipe: PortraitPipeline, controlnet) -> PortraitPipeline:
    variant = PortraitPipeline(**{**pipe.components, "controlnet": controlnet})
    variant.set_progress_bar_config(disable=True)
    return variant


# -- loading and plain generation --------------------------------------------------------------


def test_pipelines_import_no_face_library():
    code = (
        "import sys, pipelines\n"
        "faces = ('cv2', 'mediapipe', 'insightface', 'dlib', 'face_recognition_models')\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] in faces or m.startswith('studio.faces')))\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_from_pretrained_on_a_standard_folder_has_no_optional_parts(pipe):
    for name in ("controlnet", "identity_projection", "identity_attn", "safety_checker"):
        assert getattr(pipe, name) is None
    assert pipe.identity_family is None


def test_plain_generation_equals_stock_pipeline(pipe, stock_images):
    np.testing.assert_array_equal(generate(pipe), stock_images)


def test_output_types_and_tuple_return(pipe, stock_images):
    pil = generate(pipe, output_type="pil")
    assert len(pil) == 1 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (64, 64)
    np.testing.assert_array_equal(np.asarray(pil[0]), (stock_images[0] * 255).round())
    latents = generate(pipe, output_type="latent")
    assert latents.shape == (1, 4, 32, 32)
    images, nsfw = pipe(
        PROMPT,
        num_inference_steps=2,
        guidance_scale=5.0,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        return_dict=False,
    )
    np.testing.assert_array_equal(images, stock_images)
    assert nsfw is None


def test_batch_of_prompts_times_images_per_prompt(pipe):
    images = generate(pipe, prompt=[PROMPT, "an oil painting"], num_images_per_prompt=2)
    assert images.shape == (4, 64, 64, 3)
    assert not np.array_equal(images[0], images[1])


def test_callback_runs_every_step_and_can_replace_latents(pipe):
    steps = []

    def callback(pipeline, step, timestep, tensors):
        steps.append(step)
        assert set(tensors) == {"latents", "control_image"}
        return {"latents": torch.zeros_like(tensors["latents"])}

    latents = generate(
        pipe,
        output_type="latent",
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "control_image"],
    )
    assert steps == [0, 1]
    assert torch.count_nonzero(latents) == 0
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        generate(pipe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["x"])


# -- CPU offload ------------------------------------------------------------------------------


def test_offload_sequence_covers_every_model_but_the_nets_beside_the_unet(
    sd15_path, controlnets, faceid_checkpoint
):
    # Offload hooks stay on the modules: give this pipeline its own ControlNet.
    full = load(sd15_path, controlnet=copy.deepcopy(controlnets[0]))
    full.load_identity_adapter(faceid_checkpoint)
    models = {n for n, c in full.components.items() if isinstance(c, torch.nn.Module)}
    chain = full.model_cpu_offload_seq.split("->")
    assert models - set(chain) == {"controlnet", "identity_attn"}
    assert chain.index("identity_projection") < chain.index("unet")

    embeds, mesh = unit_embeds(2), condition(3)
    expected = generate(full, identity_embeds=embeds, control_image=mesh)
    # diffusers needs an accelerator unless a device is named; on the CPU the hooks still run.
    full.enable_model_cpu_offload(device="cpu")
    assert all(hasattr(full.components[name], "_hf_hook") for name in models)
    np.testing.assert_array_equal(
        generate(full, identity_embeds=embeds, control_image=mesh), expected
    )


@pytest.mark.gpu
def test_model_cpu_offload_on_cuda_matches_the_pipeline_on_cuda(
    sd15_path, controlnets, faceid_checkpoint
):
    full = load(sd15_path, controlnet=copy.deepcopy(controlnets[0]))
    full.load_identity_adapter(faceid_checkpoint)
    embeds, mesh = unit_embeds(2), condition(3)
    full.to("cuda")
    expected = generate(full, identity_embeds=embeds, control_image=mesh)
    full.enable_model_cpu_offload()
    images = generate(full, identity_embeds=embeds, control_image=mesh)
    np.testing.assert_allclose(images, expected, atol=1e-4)
    for name in ("unet", "controlnet", "identity_projection", "identity_attn"):
        assert full.components[name].device.type == "cpu", f"{name} stayed on the GPU"


# -- ControlNet ----------------------------------------------------------------------------------


def test_controlnet_scale_zero_equals_no_controlnet(pipe, controlnets, stock_images):
    controlled = with_controlnet(pipe, controlnets[0])
    mesh = condition(3)
    np.testing.assert_array_equal(generate(controlled), stock_images)
    off = generate(controlled, control_image=mesh, controlnet_conditioning_scale=0.0)
    np.testing.assert_array_equal(off, stock_images)
    on = generate(controlled, control_image=mesh)
    assert np.abs(on - stock_images).max() > 1e-3
    other = generate(controlled, control_image=condition(4))
    assert np.abs(on - other).max() > 1e-3


def test_control_image_formats_are_equivalent(pipe, controlnets):
    controlled = with_controlnet(pipe, controlnets[0])
    mesh = condition(3)
    expected = generate(controlled, control_image=mesh)
    chw = torch.from_numpy(mesh).permute(2, 0, 1).float() / 255
    for same in (mesh.astype(np.float32) / 255, PIL.Image.fromarray(mesh), chw, [mesh]):
        np.testing.assert_array_equal(generate(controlled, control_image=same), expected)


def test_output_size_defaults_to_the_control_image(pipe, controlnets):
    controlled = with_controlnet(pipe, controlnets[0])
    images = generate(controlled, control_image=condition(3, height=64, width=96))
    assert images.shape == (1, 64, 96, 3)


@pytest.mark.parametrize(
    ("control_image", "kwargs", "message"),
    [
        (condition(3, 32, 32), {"height": 64, "width": 64}, r"is 32x32 \(H x W\) but the output"),
        (np.zeros((64, 64, 4), np.uint8), {}, r"channels-last \[H, W, 3\].*\(64, 64, 4\)"),
        (np.zeros((3, 64, 64), np.uint8), {}, r"channels-last .*found shape \(3, 64, 64\)"),
        (torch.zeros(1, 64, 64), {}, r"channels-first \[3, H, W\].*\(1, 64, 64\)"),
        (np.full((64, 64, 3), 2.0, np.float32), {}, r"must lie in \[0, 1\]; found \[2, 2\]"),
        ([condition(3), condition(4, 32, 32)], {}, "differ in size"),
        ([condition(3)] * 3, {"prompt": [PROMPT, PROMPT]}, "holds 3 images for 2 prompts"),
        ("mesh.png", {}, "must be a PIL image, a numpy array"),
    ],
)
def test_control_image_errors_name_expected_and_found(
    pipe, controlnets, control_image, kwargs, message
):
    controlled = with_controlnet(pipe, controlnets[0])
    with pytest.raises((ValueError, TypeError), match=message):
        generate(controlled, control_image=control_image, **kwargs)


def test_control_image_without_controlnet_is_an_error(pipe):
    with pytest.raises(ValueError, match="has no `controlnet`"):
        generate(pipe, control_image=condition(3))


def test_multicontrolnet_sums_the_nets(pipe, controlnets):
    first, second = controlnets
    multi = with_controlnet(pipe, [first, second])
    assert isinstance(multi.controlnet, MultiControlNetModel)
    images = [condition(3), condition(4)]
    single = generate(with_controlnet(pipe, first), control_image=images[0])
    only_first = generate(multi, control_image=images, controlnet_conditioning_scale=[1.0, 0.0])
    np.testing.assert_array_equal(only_first, single)
    both = generate(multi, control_image=images)
    assert np.abs(both - single).max() > 1e-3

    with pytest.raises(ValueError, match=r"one image per ControlNet \(2 nets\); found a ndarray"):
        generate(multi, control_image=images[0])
    with pytest.raises(ValueError, match="has 3 values for 2 ControlNets"):
        generate(multi, control_image=images, controlnet_conditioning_scale=[1.0, 1.0, 1.0])


def test_save_and_load_round_trip_keeps_controlnet_and_identity_adapter(
    tmp_path, sd15_path, controlnets, faceid_checkpoint
):
    full = load(sd15_path, controlnet=controlnets[0])
    full.load_identity_adapter(faceid_checkpoint)
    kwargs = {"identity_embeds": unit_embeds(2), "control_image": condition(3)}
    expected = generate(full, **kwargs)
    full.save_pretrained(tmp_path)
    again = load(tmp_path)
    assert isinstance(again.controlnet, ControlNetModel)
    assert again.identity_family == "faceid-sd15"
    np.testing.assert_array_equal(generate(again, **kwargs), expected)


# -- identity -----------------------------------------------------------------------------------


def test_identity_scale_zero_equals_the_pipeline_without_adapter(identity_pipe, stock_images):
    off = generate(identity_pipe, identity_embeds=unit_embeds(2), identity_scale=0.0)
    np.testing.assert_array_equal(off, stock_images)
    np.testing.assert_array_equal(generate(identity_pipe), stock_images)


def test_identity_changes_the_image_and_the_call_scale_is_restored(identity_pipe, stock_images):
    embeds = unit_embeds(2)
    full = generate(identity_pipe, identity_embeds=embeds)
    assert np.abs(full - stock_images).max() > 1e-3
    other_person = generate(identity_pipe, identity_embeds=unit_embeds(1, seed=5))
    assert np.abs(full - other_person).max() > 1e-3
    half = generate(identity_pipe, identity_embeds=embeds, identity_scale=0.5)
    assert np.abs(half - full).max() > 1e-4
    np.testing.assert_array_equal(generate(identity_pipe, identity_embeds=embeds), full)


def test_identity_batch_of_prompts_times_images_per_prompt(identity_pipe):
    images = generate(
        identity_pipe,
        prompt=[PROMPT, "an oil painting"],
        num_images_per_prompt=2,
        identity_embeds=unit_embeds(3),
    )
    assert images.shape == (4, 64, 64, 3)


def test_identity_input_errors(pipe, identity_pipe):
    with pytest.raises(ValueError, match="needs an identity adapter"):
        generate(pipe, identity_embeds=unit_embeds(1))
    with pytest.raises(ValueError, match="`identity_scale` was given without `identity_embeds`"):
        generate(identity_pipe, identity_scale=0.5)
    with pytest.raises(IdentityAdapterError, match="L2-normalised"):
        generate(identity_pipe, identity_embeds=unit_embeds(1) * 20)
    with pytest.raises(IdentityAdapterError, match="128-d"):
        generate(identity_pipe, identity_embeds=torch.ones(1, 128) / 128**0.5)
    with pytest.raises(ValueError, match="read by FaceID-PlusV2 adapters only"):
        generate(identity_pipe, identity_embeds=unit_embeds(1), identity_image=condition(3))


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")
def test_identity_and_two_loras_stack(tmp_path, sd15_path, faceid_checkpoint, stock_images):
    identity_lora = write_lora(
        tmp_path / "identity", sd15_path, ["attn2.to_q", "attn2.to_k", "attn2.to_out.0"], 1
    )
    style_lora = write_lora(
        tmp_path / "style", sd15_path, ["attn1.to_q", "attn1.to_v", "proj_in", "proj_out"], 2
    )
    pipe = load(sd15_path)
    pipe.load_identity_adapter(faceid_checkpoint)
    embeds = unit_embeds(2)
    identity_only = generate(pipe, identity_embeds=embeds)

    pipe.load_lora_weights(identity_lora, adapter_name="identity")
    pipe.load_lora_weights(style_lora, adapter_name="style")
    pipe.set_adapters(["identity", "style"], adapter_weights=[1.0, 0.5])
    stacked = generate(pipe, identity_embeds=embeds)
    assert np.abs(stacked - identity_only).max() > 1e-3
    pipe.set_adapters(["identity", "style"], adapter_weights=[1.0, 1.0])
    assert np.abs(generate(pipe, identity_embeds=embeds) - stacked).max() > 1e-4

    # At identity scale 0 the LoRAs act exactly as on diffusers' own pipeline.
    stock = StableDiffusionPipeline.from_pretrained(sd15_path)
    stock.set_progress_bar_config(disable=True)
    stock.load_lora_weights(identity_lora, adapter_name="identity")
    stock.load_lora_weights(style_lora, adapter_name="style")
    stock.set_adapters(["identity", "style"], adapter_weights=[1.0, 1.0])
    np.testing.assert_array_equal(
        generate(pipe, identity_embeds=embeds, identity_scale=0.0), generate(stock)
    )
    pipe.disable_lora()  # peft's disabled path may round differently: not bit-exact
    np.testing.assert_allclose(generate(pipe, identity_embeds=embeds), identity_only, atol=1e-5)


def test_faceid_plusv2_encodes_the_face_crops(tmp_path, sd15_path, pipe):
    checkpoint = write_checkpoint(
        "faceid-plusv2-sd15", tmp_path / "ip-adapter-faceid-plusv2_sd15.bin", unet=pipe.unet
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=1280,  # FaceID-PlusV2 reads ViT-H's 1280-d features
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=32,
                patch_size=16,
                projection_dim=32,
            )
        )
    feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    plus = load(sd15_path, image_encoder=image_encoder, feature_extractor=feature_extractor)
    plus.load_identity_adapter(checkpoint)
    embeds = unit_embeds(2)
    crops = [PIL.Image.fromarray(condition(7)), PIL.Image.fromarray(condition(8))]
    images = generate(plus, identity_embeds=embeds, identity_image=crops)
    other_crops = generate(plus, identity_embeds=embeds, identity_image=crops[::-1][:1] * 2)
    assert np.abs(images - other_crops).max() > 1e-4
    with pytest.raises(ValueError, match="faceid-plusv2-sd15 adapter needs `identity_image`"):
        generate(plus, identity_embeds=embeds)
    without_encoder = load(sd15_path)
    without_encoder.load_identity_adapter(checkpoint)
    with pytest.raises(ValueError, match="`image_encoder`, which is not loaded"):
        generate(without_encoder, identity_embeds=embeds, identity_image=crops)
