"""Projections load the published ``image_proj`` keys 1:1 and match diffusers' implementations."""

from __future__ import annotations

import pytest
import torch

from adapters.formats import inspect_checkpoint
from adapters.projections import FaceIDPlusProjection, FaceIDProjection, IdentityResampler
from adapters.synthetic import synthetic_state_dict


def _ours_and_diffusers(family, unet):
    """Our projection and diffusers' (``_convert_ip_adapter_image_proj_to_diffusers``)."""
    state_dict = synthetic_state_dict(family, unet=unet, seed=5)
    spec = inspect_checkpoint(state_dict["image_proj"], state_dict["ip_adapter"])
    cls = {
        "faceid": FaceIDProjection,
        "faceid-plusv2": FaceIDPlusProjection,
        "instantid": IdentityResampler,
    }[spec.architecture]
    ours = cls(**spec.projection_config)
    ours.load_state_dict(state_dict["image_proj"], strict=True)
    theirs = unet._convert_ip_adapter_image_proj_to_diffusers(
        state_dict["image_proj"], low_cpu_mem_usage=False
    )
    return ours.eval(), theirs.eval()


@torch.no_grad()
@pytest.mark.parametrize("family", ["faceid-sd15", "faceid-sdxl"])
def test_faceid_matches_diffusers(family, sd15_unet, sdxl_unet, embeds):
    ours, theirs = _ours_and_diffusers(family, sdxl_unet if "sdxl" in family else sd15_unet)
    x = embeds(3)
    out = ours(x)
    assert out.shape == (3, 4, ours.config.cross_attention_dim)
    torch.testing.assert_close(out, theirs(x), rtol=0, atol=1e-6)


@torch.no_grad()
def test_faceid_plusv2_matches_diffusers_with_shortcut(sd15_unet, embeds):
    ours, theirs = _ours_and_diffusers("faceid-plusv2-sd15", sd15_unet)
    x = embeds(2)
    clip = torch.randn(2, 257, 1280, generator=torch.Generator().manual_seed(2))
    theirs.clip_embeds, theirs.shortcut, theirs.shortcut_scale = clip[:, None], True, 0.7
    torch.testing.assert_close(ours(x, clip, scale=0.7), theirs(x), rtol=0, atol=1e-5)
    # scale 0 keeps only the MLP's ID tokens; V1 (no shortcut) only the perceiver's output
    id_tokens = ours(x, clip, scale=0.0)
    theirs.shortcut = False
    v1 = FaceIDPlusProjection(**{**ours.config, "shortcut": False})
    v1.load_state_dict(ours.state_dict())
    torch.testing.assert_close(v1(x, clip), theirs(x), rtol=0, atol=1e-5)
    torch.testing.assert_close(ours(x, clip), id_tokens + v1(x, clip), rtol=0, atol=1e-5)


@torch.no_grad()
def test_instantid_resampler_matches_diffusers(sdxl_unet, embeds):
    ours, theirs = _ours_and_diffusers("instantid", sdxl_unet)
    x = embeds(2) * 22.6
    out = ours(x)
    assert out.shape == (2, 16, 64)
    torch.testing.assert_close(out, theirs(x[:, None]), rtol=0, atol=1e-5)
    # several input embeddings are a sequence the latents attend over, as in the reference
    seq = torch.stack([x[0], x[1]])[None]
    torch.testing.assert_close(ours(seq), theirs(seq), rtol=0, atol=1e-5)


def test_published_keys_load_strictly_and_nothing_else(sd15_unet):
    state_dict = synthetic_state_dict("faceid-sd15", unet=sd15_unet)["image_proj"]
    projection = FaceIDProjection(cross_attention_dim=32)
    projection.load_state_dict(state_dict, strict=True)
    renamed = {k.replace("proj.2", "proj.1"): v for k, v in state_dict.items()}
    with pytest.raises(RuntimeError, match=r"proj\.2\.weight"):
        projection.load_state_dict(renamed, strict=True)
