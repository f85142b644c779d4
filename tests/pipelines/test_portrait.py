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
from peft import LoraConfig, get_peft_model_state_dict
from pipeline_tester import PortraitPipelineTesterMixin
from portrait_helpers import condition, generate, make_controlnet, unit_embeds
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from adapters import write_checkpoint
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


class TestPortraitPipeline(PortraitPipelineTesterMixin):
    pipeline_class = PortraitPipeline
    optional_parts = (
        "controlnet",
        "identity_projection",
        "identity_attn",
        "wplus_projection",
        "wplus_attn",
        "safety_checker",
    )


# -- loading ---------------------------------------------------------------------------------------


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


# -- identity -----------------------------------------------------------------------------------


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
