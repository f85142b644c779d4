"""Tiny SD1.5/SDXL portrait pipelines and helpers shared by the adapter tests."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel

from pipelines import PortraitPipeline, PortraitXLPipeline
from studio.models.tiny import built_path


@pytest.fixture(scope="session")
def sd15_dir(tiny_models_dir):
    return built_path(tiny_models_dir, "tiny-sd15")


@pytest.fixture(scope="session")
def sdxl_dir(tiny_models_dir):
    return built_path(tiny_models_dir, "tiny-sdxl")


@pytest.fixture(scope="session")
def sd15_unet(sd15_dir) -> UNet2DConditionModel:
    """Read-only tiny SD1.5 UNet (write checkpoints for it; do not install adapters on it)."""
    return UNet2DConditionModel.from_pretrained(sd15_dir / "unet").eval()


@pytest.fixture(scope="session")
def sdxl_unet(sdxl_dir) -> UNet2DConditionModel:
    """Read-only tiny SDXL UNet."""
    return UNet2DConditionModel.from_pretrained(sdxl_dir / "unet").eval()


@pytest.fixture(scope="session")
def _sd15_components(sd15_dir):
    return PortraitPipeline.from_pretrained(sd15_dir).components


@pytest.fixture(scope="session")
def _sdxl_components(sdxl_dir):
    return PortraitXLPipeline.from_pretrained(sdxl_dir).components


@pytest.fixture
def make_sd15_pipe(_sd15_components):
    """A factory of fresh tiny SD1.5 test pipelines: own UNet copy, shared unchanged weights."""

    def make() -> PortraitPipeline:
        unet = copy.deepcopy(_sd15_components["unet"])
        pipe = PortraitPipeline(**{**_sd15_components, "unet": unet})
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return make


@pytest.fixture
def sd15_pipe(make_sd15_pipe) -> PortraitPipeline:
    return make_sd15_pipe()


@pytest.fixture
def sdxl_pipe(_sdxl_components) -> PortraitXLPipeline:
    unet = copy.deepcopy(_sdxl_components["unet"])
    pipe = PortraitXLPipeline(**{**_sdxl_components, "unet": unet})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unit_embeds(n: int, dim: int = 512, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=-1)


@pytest.fixture
def embeds():
    """``embeds(n, dim=512, seed=1)``: ``n`` random unit-norm embeddings."""
    return unit_embeds


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and lose much when cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
