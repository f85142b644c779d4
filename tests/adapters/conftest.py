"""Tiny SD1.5/SDXL pipelines with the identity adapter mixin, and helpers shared by these tests."""

from __future__ import annotations

import copy
from typing import ClassVar

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

from adapters import IdentityAdapterMixin
from studio.models.tiny import built_path


class IdentitySDPipeline(IdentityAdapterMixin, StableDiffusionPipeline):
    """Test-only: StableDiffusionPipeline plus the identity adapter components."""

    _optional_components: ClassVar[list[str]] = [
        *StableDiffusionPipeline._optional_components,
        "identity_projection",
        "identity_attn",
    ]

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker: bool = False,
        identity_projection=None,
        identity_attn=None,
    ):
        super().__init__(
            vae,
            text_encoder,
            tokenizer,
            unet,
            scheduler,
            safety_checker,
            feature_extractor,
            image_encoder,
            requires_safety_checker,
        )
        self.register_modules(identity_projection=identity_projection, identity_attn=identity_attn)


class IdentitySDXLPipeline(IdentityAdapterMixin, StableDiffusionXLPipeline):
    """Test-only: StableDiffusionXLPipeline plus the identity adapter components."""

    _optional_components: ClassVar[list[str]] = [
        *StableDiffusionXLPipeline._optional_components,
        "identity_projection",
        "identity_attn",
    ]

    def __init__(
        self,
        vae,
        text_encoder,
        text_encoder_2,
        tokenizer,
        tokenizer_2,
        unet,
        scheduler,
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt: bool = True,
        identity_projection=None,
        identity_attn=None,
    ):
        super().__init__(
            vae,
            text_encoder,
            text_encoder_2,
            tokenizer,
            tokenizer_2,
            unet,
            scheduler,
            image_encoder,
            feature_extractor,
            force_zeros_for_empty_prompt,
            add_watermarker=False,
        )
        self.register_modules(identity_projection=identity_projection, identity_attn=identity_attn)


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
    return IdentitySDPipeline.from_pretrained(sd15_dir).components


@pytest.fixture(scope="session")
def _sdxl_components(sdxl_dir):
    return IdentitySDXLPipeline.from_pretrained(sdxl_dir).components


@pytest.fixture
def make_sd15_pipe(_sd15_components):
    """A factory of fresh tiny SD1.5 test pipelines: own UNet copy, shared unchanged weights."""

    def make() -> IdentitySDPipeline:
        unet = copy.deepcopy(_sd15_components["unet"])
        pipe = IdentitySDPipeline(**{**_sd15_components, "unet": unet})
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return make


@pytest.fixture
def sd15_pipe(make_sd15_pipe) -> IdentitySDPipeline:
    return make_sd15_pipe()


@pytest.fixture
def sdxl_pipe(_sdxl_components) -> IdentitySDXLPipeline:
    unet = copy.deepcopy(_sdxl_components["unet"])
    pipe = IdentitySDXLPipeline(**{**_sdxl_components, "unet": unet})
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
