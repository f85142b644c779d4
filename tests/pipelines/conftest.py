"""Tiny identity pipelines shared by the pipeline tests: one per adapter family, per module."""

from __future__ import annotations

import pytest
from portrait_helpers import load_pipeline, make_controlnet

from adapters import write_checkpoint
from pipelines import PortraitPipeline, PortraitXLPipeline
from studio.models.tiny import built_path


@pytest.fixture(scope="module")
def sdxl_path(tiny_models_dir):
    return built_path(tiny_models_dir, "tiny-sdxl")


@pytest.fixture(scope="module")
def sd15_faceid(tiny_models_dir, tmp_path_factory) -> PortraitPipeline:
    pipe = load_pipeline(PortraitPipeline, built_path(tiny_models_dir, "tiny-sd15"))
    path = tmp_path_factory.mktemp("faceid") / "faceid-sd15.bin"
    pipe.load_identity_adapter(write_checkpoint("faceid-sd15", path, unet=pipe.unet))
    return pipe


@pytest.fixture(scope="module")
def sdxl_faceid(sdxl_path, tmp_path_factory) -> PortraitXLPipeline:
    pipe = load_pipeline(PortraitXLPipeline, sdxl_path)
    path = tmp_path_factory.mktemp("faceid") / "faceid-sdxl.bin"
    pipe.load_identity_adapter(write_checkpoint("faceid-sdxl", path, unet=pipe.unet))
    return pipe


@pytest.fixture(scope="module")
def sdxl_instantid(sdxl_path, tmp_path_factory) -> PortraitXLPipeline:
    plain = load_pipeline(PortraitXLPipeline, sdxl_path)
    pipe = load_pipeline(
        PortraitXLPipeline, sdxl_path, identitynet=make_controlnet(plain.unet, seed=1)
    )
    path = tmp_path_factory.mktemp("instantid") / "ip-adapter.bin"
    pipe.load_identity_adapter(write_checkpoint("instantid", path, unet=pipe.unet))
    return pipe
