"""Published checkpoint layouts: splitting, recognition, checks against UNets, synthetic files."""

from __future__ import annotations

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from safetensors.torch import load_file

from adapters.attention import IdentityAttention
from adapters.formats import (
    IdentityAdapterError,
    attention_layers,
    inspect_checkpoint,
    match_unet,
    split_checkpoint,
)
from adapters.loader import PROJECTIONS
from adapters.synthetic import (
    SD15_UNET,
    SDXL_UNET,
    published_config,
    published_layout,
    synthetic_state_dict,
    write_checkpoint,
    write_identitynet,
)

# Spot checks of the published files (real sizes), "half.key" -> shape.
PUBLISHED_SHAPES = {
    "faceid-sd15": {
        "image_proj.proj.0.weight": (1024, 512),
        "image_proj.proj.2.weight": (3072, 1024),
        "image_proj.norm.weight": (768,),
        "ip_adapter.1.to_k_ip.weight": (320, 768),
        "ip_adapter.31.to_v_ip.weight": (1280, 768),
        "ip_adapter.0.to_q_lora.down.weight": (128, 320),
        "ip_adapter.0.to_k_lora.down.weight": (128, 320),
        "ip_adapter.1.to_k_lora.down.weight": (128, 768),
        "ip_adapter.31.to_out_lora.up.weight": (1280, 128),
    },
    "faceid-plusv2-sd15": {
        "image_proj.proj.2.weight": (3072, 1024),
        "image_proj.perceiver_resampler.proj_in.weight": (768, 1280),
        "image_proj.perceiver_resampler.layers.3.0.to_q.weight": (768, 768),
        "image_proj.perceiver_resampler.layers.0.0.to_kv.weight": (1536, 768),
        "image_proj.perceiver_resampler.layers.0.1.1.weight": (3072, 768),
        "image_proj.perceiver_resampler.layers.0.1.3.weight": (768, 3072),
        "ip_adapter.29.to_k_ip.weight": (320, 768),  # last up block
    },
    "faceid-sdxl": {
        "image_proj.proj.2.weight": (8192, 1024),
        "image_proj.norm.weight": (2048,),
        "ip_adapter.1.to_k_ip.weight": (640, 2048),
        "ip_adapter.139.to_v_ip.weight": (1280, 2048),
        "ip_adapter.138.to_v_lora.down.weight": (128, 1280),
    },
    "instantid": {
        "image_proj.latents": (1, 16, 1280),
        "image_proj.proj_in.weight": (1280, 512),
        "image_proj.proj_out.weight": (2048, 1280),
        "image_proj.norm_out.weight": (2048,),
        "image_proj.layers.3.0.to_kv.weight": (2560, 1280),
        "image_proj.layers.3.0.to_out.weight": (1280, 1280),
        "image_proj.layers.0.1.1.weight": (5120, 1280),
        "ip_adapter.1.to_k_ip.weight": (640, 2048),
        "ip_adapter.139.to_k_ip.weight": (1280, 2048),
    },
}
KEY_COUNTS = {  # (image_proj, ip_adapter) entries in the published files
    "faceid-sd15": (6, 16 * 2 + 32 * 8),
    "faceid-plusv2-sd15": (6 + 6 + 4 * 11, 16 * 2 + 32 * 8),
    "faceid-sdxl": (6, 70 * 2 + 140 * 8),
    "instantid": (1 + 6 + 4 * 11, 70 * 2),
}


@pytest.fixture(scope="module")
def real_unets():
    with torch.device("meta"):
        return {
            "sd15": UNet2DConditionModel(**SD15_UNET),
            "sdxl": UNet2DConditionModel(**SDXL_UNET),
        }


def _meta(layout: dict) -> dict:
    return {
        half: {k: torch.empty(s, device="meta") for k, s in d.items()} for half, d in layout.items()
    }


def test_published_unets_number_cross_attention_like_diffusers_converter(real_unets):
    # diffusers' _convert_ip_adapter_attn_to_diffusers counts cross-attention keys 1, 3, 5, ...
    for unet, count in ((real_unets["sd15"], 16), (real_unets["sdxl"], 70)):
        cross = [layer.index for layer in attention_layers(unet) if layer.is_cross_attention]
        assert cross == list(range(1, 2 * count, 2))


@pytest.mark.parametrize("family", sorted(PUBLISHED_SHAPES))
def test_real_size_layouts_are_the_published_ones(family, real_unets):
    unet = real_unets["sd15" if family.endswith("sd15") else "sdxl"]
    layout = published_layout(family, unet=unet)
    flat = {f"{half}.{k}": shape for half, d in layout.items() for k, shape in d.items()}
    for key, shape in PUBLISHED_SHAPES[family].items():
        assert flat[key] == shape, key
    assert (len(layout["image_proj"]), len(layout["ip_adapter"])) == KEY_COUNTS[family]

    # Recognised from the shapes alone, it matches the UNet and builds modules with exactly
    # these keys and shapes (what load_state_dict(strict=True) needs).
    checkpoint = _meta(layout)
    spec = inspect_checkpoint(checkpoint["image_proj"], checkpoint["ip_adapter"])
    layers = attention_layers(unet)
    spec = match_unet(
        spec,
        checkpoint["image_proj"],
        checkpoint["ip_adapter"],
        layers,
        sdxl="sdxl" in family or family == "instantid",
    )
    assert spec.family == family
    assert spec.projection_config == published_config(
        spec.architecture, unet.config.cross_attention_dim
    )
    with torch.device("meta"):
        projection = PROJECTIONS[spec.architecture](**spec.projection_config)
        attention = IdentityAttention(
            family=family,
            processor_names=[layer.name for layer in layers],
            hidden_sizes=[layer.hidden_size for layer in layers],
            context_dims=[layer.context_dim for layer in layers],
            cross_attention=[layer.is_cross_attention for layer in layers],
            lora_rank=spec.lora_rank,
        )
    assert {k: tuple(v.shape) for k, v in projection.state_dict().items()} == layout["image_proj"]
    assert {k: tuple(v.shape) for k, v in attention.state_dict().items()} == layout["ip_adapter"]


def test_sdxl_faceid_into_sd15_names_expected_and_found_shapes(real_unets):
    checkpoint = _meta(published_layout("faceid-sdxl", unet=real_unets["sdxl"]))
    spec = inspect_checkpoint(checkpoint["image_proj"], checkpoint["ip_adapter"])
    layers = attention_layers(real_unets["sd15"])
    with pytest.raises(IdentityAdapterError) as error:
        match_unet(spec, checkpoint["image_proj"], checkpoint["ip_adapter"], layers, sdxl=False)
    message = str(error.value)
    assert "2048-d identity tokens" in message and "768-d context" in message
    assert "'1.to_k_ip.weight' expected shape (320, 768), found (640, 2048)" in message
    assert "[1, 3, ..., 139] (70)" in message and "[1, 3, ..., 31] (16)" in message
    assert "an SDXL checkpoint" in message and "SDXL pipeline" in message


def test_nested_and_prefixed_checkpoints_split_alike(sd15_unet):
    nested = synthetic_state_dict("faceid-sd15", unet=sd15_unet)
    prefixed = {f"{half}.{k}": v for half, d in nested.items() for k, v in d.items()}
    for state_dict in (nested, prefixed):
        image_proj, ip_adapter = split_checkpoint(state_dict)
        assert image_proj.keys() == nested["image_proj"].keys()
        assert ip_adapter.keys() == nested["ip_adapter"].keys()


def test_split_refuses_what_is_not_an_identity_adapter():
    lora_file = {"lora_unet_down_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(4, 4)}
    with pytest.raises(IdentityAdapterError, match="load_lora_weights"):
        split_checkpoint(lora_file, "ip-adapter-faceid_sd15_lora.safetensors")
    with pytest.raises(IdentityAdapterError, match="ip_adapter weights are missing"):
        split_checkpoint({"image_proj": {"norm.weight": torch.zeros(4)}})
    with pytest.raises(IdentityAdapterError, match=r"unexpected top-level entries \['extra'\]"):
        split_checkpoint({"image_proj": {}, "ip_adapter": {}, "extra": {}})


def test_image_ip_adapters_are_sent_to_load_ip_adapter():
    ip_adapter = {"1.to_k_ip.weight": torch.zeros(4, 4), "1.to_v_ip.weight": torch.zeros(4, 4)}
    plain = {"proj.weight": torch.zeros(16, 8), "norm.weight": torch.zeros(4)}
    with pytest.raises(IdentityAdapterError, match="image IP-Adapter.*load_ip_adapter"):
        inspect_checkpoint(plain, ip_adapter)
    plus = {  # IP-Adapter Plus: a Resampler over 1280-d CLIP features, not 512-d face embeddings
        "latents": torch.zeros(1, 16, 64),
        "proj_in.weight": torch.zeros(64, 1280),
        "proj_out.weight": torch.zeros(32, 64),
    }
    with pytest.raises(IdentityAdapterError, match="1280-d inputs.*IP-Adapter Plus"):
        inspect_checkpoint(plus, ip_adapter)
    with pytest.raises(IdentityAdapterError, match="unrecognised ip_adapter keys"):
        inspect_checkpoint(
            {
                "proj.0.weight": torch.zeros(8, 4),
                "proj.2.weight": torch.zeros(8, 8),
                "norm.weight": torch.zeros(4),
            },
            {"1.to_k_ip.weight": torch.zeros(4, 4), "1.to_k_extra.weight": torch.zeros(1)},
        )


def test_write_checkpoint_is_deterministic_and_in_published_containers(tmp_path, sd15_unet):
    bin_path = write_checkpoint("faceid-sd15", tmp_path / "a.bin", unet=sd15_unet, seed=3)
    st_path = write_checkpoint(
        "faceid-sd15", tmp_path / "a.safetensors", unet=sd15_unet, seed=3, fmt="safetensors"
    )
    nested = torch.load(bin_path, weights_only=True)
    assert set(nested) == {"image_proj", "ip_adapter"}
    flat = load_file(st_path)
    assert {k.split(".", 1)[0] for k in flat} == {"image_proj", "ip_adapter"}
    for half, weights in nested.items():
        for key, value in weights.items():
            assert torch.equal(flat[f"{half}.{key}"], value)
    again = synthetic_state_dict("faceid-sd15", unet=sd15_unet, seed=3)
    other = synthetic_state_dict("faceid-sd15", unet=sd15_unet, seed=4)
    assert torch.equal(again["image_proj"]["proj.0.weight"], nested["image_proj"]["proj.0.weight"])
    assert not torch.equal(
        other["image_proj"]["proj.0.weight"], again["image_proj"]["proj.0.weight"]
    )


def test_write_checkpoint_refuses_mismatches(tmp_path, sd15_unet):
    with pytest.raises(ValueError, match=r"must end in \.safetensors"):
        write_checkpoint("faceid-sd15", tmp_path / "a.bin", unet=sd15_unet, fmt="safetensors")
    with pytest.raises(ValueError, match="SDXL-layout UNet"):
        write_checkpoint("instantid", tmp_path / "a.bin", unet=sd15_unet)
    with pytest.raises(ValueError, match="unknown identity adapter family"):
        write_checkpoint("faceid-sd3", tmp_path / "a.bin", unet=sd15_unet)


def test_identitynet_is_a_controlnet_of_the_unet_with_live_outputs(tmp_path, sdxl_unet):
    # The tiny VAE downsamples by 2, so the keypoint image is 2x the latents.
    path = write_identitynet(tmp_path / "identitynet", sdxl_unet, seed=0, vae_scale_factor=2)
    controlnet = ControlNetModel.from_pretrained(path).eval()
    assert controlnet.config.cross_attention_dim == sdxl_unet.config.cross_attention_dim == 64
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        down, mid = controlnet(
            torch.randn(1, 4, 16, 16, generator=generator),
            10,
            encoder_hidden_states=torch.randn(1, 16, 64, generator=generator),
            controlnet_cond=torch.rand(1, 3, 32, 32, generator=generator),
            added_cond_kwargs={"text_embeds": torch.zeros(1, 32), "time_ids": torch.zeros(1, 6)},
            return_dict=False,
        )
    assert all(residual.abs().max() > 0 for residual in [*down, mid])
    again = write_identitynet(tmp_path / "again", sdxl_unet, seed=0, vae_scale_factor=2)
    assert (again / "diffusion_pytorch_model.safetensors").read_bytes() == (
        path / "diffusion_pytorch_model.safetensors"
    ).read_bytes()


def test_identitynet_condition_encoder_matches_the_vae(tmp_path, sdxl_unet):
    published = write_identitynet(tmp_path / "published", sdxl_unet)
    config = ControlNetModel.load_config(published)
    assert tuple(config["conditioning_embedding_out_channels"]) == (16, 32, 96, 256)
    with pytest.raises(ValueError, match="2, 4 or 8"):
        write_identitynet(tmp_path / "odd", sdxl_unet, vae_scale_factor=3)
