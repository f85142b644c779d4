"""The tiny sets are standard diffusers folders that load and generate like real weights."""

import json

import numpy as np
import pytest
import torch

from studio.families import get_family
from studio.models.clip_vocab import build_clip_tokenizer
from studio.models.tiny import BUILD_VERSION, build, built_path


def test_clip_tokenizer_is_the_real_vocabulary(tmp_path):
    tok = build_clip_tokenizer(tmp_path / "tok")
    assert len(tok) == 49408
    assert tok.model_max_length == 77
    # OpenAI CLIP's ids for these words, as in every SD1.5 tokenizer.
    assert tok("a photo of a person").input_ids == [49406, 320, 1125, 539, 320, 2533, 49407]
    padded = tok("hi", padding="max_length").input_ids
    assert len(padded) == 77 and padded[-1] == 49407


@pytest.mark.parametrize(
    ("builder", "folders"),
    [
        ("tiny-sd15", {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}),
        (
            "tiny-sdxl",
            {
                "unet",
                "vae",
                "text_encoder",
                "text_encoder_2",
                "tokenizer",
                "tokenizer_2",
                "scheduler",
            },
        ),
    ],
)
def test_tiny_folder_has_the_standard_layout(tiny_models_dir, builder, folders):
    path = built_path(tiny_models_dir, builder)
    assert path.name == f"{builder}-v{BUILD_VERSION}"
    index = json.loads((path / "model_index.json").read_text())
    assert folders <= {k for k in index if not k.startswith("_")}
    for folder in folders - {"tokenizer", "tokenizer_2", "scheduler"}:
        weights = list((path / folder).glob("*.safetensors"))
        assert weights, f"{folder} has no safetensors weights"
    for tok in folders & {"tokenizer", "tokenizer_2"}:
        assert (path / tok / "vocab.json").is_file() and (path / tok / "merges.txt").is_file()


def test_build_is_deterministic_and_reused(tiny_models_dir, tmp_path):
    from safetensors.torch import load_file

    again = build(tmp_path, "tiny-sd15")
    first = load_file(
        built_path(tiny_models_dir, "tiny-sd15") / "unet/diffusion_pytorch_model.safetensors"
    )
    second = load_file(again / "unet/diffusion_pytorch_model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    stamp = (again / "model_index.json").stat().st_mtime_ns
    assert build(tmp_path, "tiny-sd15") == again
    assert (again / "model_index.json").stat().st_mtime_ns == stamp
    assert not [p for p in again.parent.iterdir() if p.name.startswith(".")], "temp build left over"


@pytest.mark.parametrize(("builder", "family"), [("tiny-sd15", "sd15"), ("tiny-sdxl", "sdxl")])
def test_round_trip_generation_same_seed_same_pixels(tiny_models_dir, builder, family):
    spec = get_family(family)
    pipe = spec.pipeline_class().from_pretrained(
        built_path(tiny_models_dir, builder), **spec.pipeline_options
    )
    pipe.set_progress_bar_config(disable=True)

    def run(seed):
        return pipe(
            "a portrait of a person",
            num_inference_steps=2,
            height=64,
            width=64,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).images[0]

    a, b, c = run(0), run(0), run(1)
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.std() > 0.01, "decoded image is flat"


def test_tiny_identity_adapters_and_controlnets_load_like_published_ones(tiny_env):
    """The tiny sets' FaceID/InstantID files and ControlNets go through the users' loaders."""
    from diffusers import ControlNetModel

    from pipelines import PortraitPipeline, PortraitXLPipeline
    from studio.models import select_model_set
    from studio.models.resolver import ModelResolver
    from studio.settings import load_settings

    resolver = ModelResolver(load_settings())

    def unit(dim):
        return torch.nn.functional.normalize(
            torch.randn(2, dim, generator=torch.Generator()), dim=1
        )

    condition = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))

    def run(pipe, **kwargs):
        return pipe(
            "a portrait",
            num_inference_steps=1,
            height=64,
            width=64,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
            **kwargs,
        ).images[0]

    sd15 = select_model_set("tiny")
    mesh = ControlNetModel.from_pretrained(resolver.resolve(sd15, "controlnet_face"))
    pipe = PortraitPipeline.from_pretrained(
        resolver.resolve(sd15, "base"),
        controlnet=mesh,
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    faceid = resolver.resolve(sd15, "faceid")
    assert faceid.name == "ip-adapter-faceid_sd15.bin"
    pipe.load_identity_adapter(faceid)
    assert pipe.identity_family == "faceid-sd15"
    plain = run(pipe, control_image=condition)
    # The tiny FaceID adapter takes the embedded SFace recognizer's 128-d embeddings.
    assert not np.allclose(plain, run(pipe, control_image=condition, identity_embeds=unit(128)))

    sdxl = select_model_set("tiny-xl")
    identitynet = ControlNetModel.from_pretrained(resolver.resolve(sdxl, "instantid_controlnet"))
    xl = PortraitXLPipeline.from_pretrained(resolver.resolve(sdxl, "base"), identitynet=identitynet)
    xl.set_progress_bar_config(disable=True)
    xl.load_identity_adapter(resolver.resolve(sdxl, "instantid_adapter"))
    assert xl.identity_family == "instantid"
    with_id = run(xl, identity_embeds=unit(512), keypoint_image=condition)
    assert with_id.shape == (64, 64, 3)
    assert not np.allclose(with_id, run(xl))
