"""Base families read from model folders, and the pipeline host on the tiny sets."""

from __future__ import annotations

import inspect
import json
from types import MappingProxyType

import pytest
import torch

from studio.cli import main
from studio.errors import ConfigError, StudioError
from studio.families import BASE_FAMILIES, SD15, SDXL, family_of_folder
from studio.host import DERIVED, PipelineHost, build_pipeline
from studio.models import select_model_set
from studio.models.catalog import Component, ModelSet, load_catalog
from studio.models.tiny import built_path
from studio.settings import load_settings


def flux_folder(tmp_path):
    folder = tmp_path / "FLUX.1-dev"
    folder.mkdir()
    index = {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_a_folders_family_comes_from_its_pipeline_class(tiny_models_dir):
    assert family_of_folder(built_path(tiny_models_dir, "tiny-sd15")) is SD15
    assert family_of_folder(built_path(tiny_models_dir, "tiny-sdxl")) is SDXL
    local = select_model_set(str(built_path(tiny_models_dir, "tiny-sdxl")))
    assert local.base_family is SDXL and local.defaults["width"] == 1024


def test_an_unsupported_folder_is_refused_naming_it_and_the_supported_families(tmp_path):
    folder = flux_folder(tmp_path)
    with pytest.raises(ConfigError) as refused:
        select_model_set(str(folder))
    message = str(refused.value)
    assert message.startswith(f"--models {folder} holds a FluxPipeline model")
    assert "Stable Diffusion 1.5 (StableDiffusionPipeline" in message
    assert "Stable Diffusion XL (StableDiffusionXLPipeline" in message
    with pytest.raises(ConfigError, match="no readable model_index.json"):
        select_model_set(str(tmp_path))


def test_the_generate_command_refuses_a_flux_folder_in_one_line(studio_env, tmp_path, capsys):
    assert main(["generate", "--models", str(flux_folder(tmp_path)), "--prompt", "x"]) == 1
    err = capsys.readouterr().err
    assert "FluxPipeline" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("family", BASE_FAMILIES.values(), ids=lambda f: f.name)
def test_each_family_fits_its_pipeline_and_its_catalog_sets(family):
    parameters = inspect.signature(family.pipeline_class().__call__).parameters
    assert family.pose_argument in parameters
    init = inspect.signature(family.pipeline_class().__init__).parameters
    assert {family.control_argument, *family.text_encoders, *family.tokenizers} <= init.keys()
    assert family.pipeline_options.keys() <= init.keys()
    assert "mask_image" in inspect.signature(family.inpaint_pipeline_class().__call__).parameters
    sets = [s for s in load_catalog().values() if s.family == family.name]
    assert sets and all(family.adapter_component in s.components for s in sets)


def test_a_set_catalogued_as_another_family_is_refused(tiny_env, tiny_models_dir):
    base = Component(
        "base", "local", "pipeline", "diffusers", "-", path=built_path(tiny_models_dir, "tiny-sdxl")
    )
    wrong = ModelSet("mislabelled", "x", "sd15", MappingProxyType({"base": base}))
    with pytest.raises(ConfigError, match="catalogued as Stable Diffusion 1.5, but .* XL model"):
        build_pipeline(wrong, load_settings(), identity=False)


class OutOfMemoryOnce:
    """Stands in for a pipeline call that runs out of GPU memory once (impossible on a CPU)."""

    def __init__(self, pipe):
        self.pipe, self.failed = pipe, False

    def __call__(self, **call):
        if not self.failed:
            self.failed = True
            raise torch.OutOfMemoryError("CUDA out of memory")
        return self.pipe(**call)

    def enable_model_cpu_offload(self):
        self.pipe.enable_model_cpu_offload()


@pytest.mark.slow
def test_the_host_builds_once_derives_with_shared_weights_and_unloads(tiny_env, monkeypatch):
    from diffusers import StableDiffusionPipeline

    host = PipelineHost(load_settings())
    tiny = select_model_set("tiny")
    pipe = host.pipeline(tiny)
    assert host.pipeline(tiny) is pipe and host.model_set is tiny
    assert pipe.identity_projection is not None and pipe.controlnet is not None

    inpaint = host.derived("inpaint")
    assert host.derived("inpaint") is inpaint
    assert type(inpaint).__name__ == "StableDiffusionInpaintPipeline"
    assert inpaint.unet is pipe.unet and inpaint.vae is pipe.vae and inpaint.dtype == pipe.dtype

    monkeypatch.setitem(DERIVED, "plain", lambda family: StableDiffusionPipeline)
    plain = host.derived("plain")
    assert type(plain) is StableDiffusionPipeline and plain.unet is pipe.unet
    with pytest.raises(
        StudioError, match="no derived pipeline 'swap' is registered; known: .*inpaint"
    ):
        host.derived("swap")

    # After an out-of-memory retry, offload hooks follow the pipeline handed out (from_pipe
    # pipelines share modules, and each needs its own offload order).
    hooked = []
    for cls in (type(pipe), type(inpaint)):
        monkeypatch.setattr(cls, "enable_model_cpu_offload", lambda self: hooked.append(self))
    images, note = host.run(OutOfMemoryOnce(pipe), prompt="x", num_inference_steps=1)
    assert host.offloaded and hooked == [pipe] and "ran out of memory" in note and images
    assert host.derived("inpaint") is inpaint and hooked == [pipe, inpaint]
    assert host.derived("inpaint") is inpaint and hooked == [pipe, inpaint]
    assert host.pipeline(tiny) is pipe and hooked == [pipe, inpaint, pipe]

    host.unload()
    assert host.model_set is None and host.loras == ()
    with pytest.raises(StudioError, match="no pipeline is loaded"):
        host.derived("inpaint")
