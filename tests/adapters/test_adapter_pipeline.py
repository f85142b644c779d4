"""IdentityAdapterMixin on tiny SD1.5/SDXL pipelines: load, scale, unload, save, encode, and
parity with / coexistence beside diffusers' IP-Adapter and peft LoRA."""

from __future__ import annotations

import copy
import math
from typing import ClassVar

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor2_0,
    IPAdapterAttnProcessor2_0,
)
from peft import LoraConfig
from safetensors.torch import load_file

from adapters import (
    FaceIDPlusProjection,
    FaceIDProjection,
    IdentityAdapterError,
    IdentityAdapterMixin,
    IdentityAttnProcessor,
    IdentityResampler,
)
from adapters.loader import COMPONENTS
from adapters.synthetic import synthetic_state_dict, write_checkpoint
from adapters.wplus_loader import COMPONENTS as WPLUS_COMPONENTS


def stock_components(components: dict) -> dict:
    """A portrait pipeline's components that diffusers' own StableDiffusionPipeline takes."""
    return {
        k: v
        for k, v in components.items()
        if k not in (*COMPONENTS, *WPLUS_COMPONENTS, "controlnet")
    }


SD15_FAMILIES = ("faceid-sd15", "faceid-plusv2-sd15")
SDXL_FAMILIES = ("faceid-sdxl", "faceid-plusv2-sdxl", "instantid")
PROJECTION_CLASSES = {
    "faceid": FaceIDProjection,
    "faceid-plusv2": FaceIDPlusProjection,
    "instantid": IdentityResampler,
}


def _tokens(pipe, e):
    """Identity tokens for one image with CFG (random CLIP features for PlusV2)."""
    clip = None
    if pipe.identity_family.startswith("faceid-plusv2"):
        clip = torch.randn(len(e), 257, 1280, generator=torch.Generator().manual_seed(3))
    return pipe.encode_identity(
        e, num_images=1, do_classifier_free_guidance=True, clip_image_embeds=clip
    )


@torch.no_grad()
def _unet(pipe, tokens=None, batch=2):
    """One UNet call on fixed inputs, with identity tokens or without."""
    unet = pipe.unet
    g = torch.Generator().manual_seed(0)
    batch = batch if tokens is None else tokens.shape[0]
    width = unet.config.cross_attention_dim
    sample = torch.randn(batch, 4, 16, 16, generator=g)
    text = torch.randn(batch, 7, width, generator=g)
    added = None
    if unet.config.addition_embed_type == "text_time":
        added = {
            "text_embeds": torch.randn(batch, 32, generator=g),
            "time_ids": torch.ones(batch, 6),
        }
    kwargs = None if tokens is None else {"identity_tokens": tokens}
    return unet(sample, 10, text, cross_attention_kwargs=kwargs, added_cond_kwargs=added).sample


def _images(pipe, **kwargs) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(
        "a portrait", num_inference_steps=2, output_type="np", generator=generator, **kwargs
    ).images


def _write(family, tmp_path, unet, container):
    """A synthetic ``family`` checkpoint in one of the published containers (or a dict)."""
    if container == "bin-nested":
        return write_checkpoint(family, tmp_path / f"{family}.bin", unet=unet)
    if container == "safetensors":
        path = tmp_path / f"{family}.safetensors"
        return write_checkpoint(family, path, unet=unet, fmt="safetensors")
    nested = synthetic_state_dict(family, unet=unet)
    if container == "dict":
        return nested
    flat = {f"{half}.{k}": v for half, d in nested.items() for k, v in d.items()}
    path = tmp_path / f"{family}-prefixed.bin"
    torch.save(flat, path)
    return path


@pytest.mark.parametrize("container", ["bin-nested", "bin-prefixed", "safetensors", "dict"])
@pytest.mark.parametrize("family", SD15_FAMILIES + SDXL_FAMILIES)
def test_each_family_loads_from_every_published_container(
    family, container, request, tmp_path, embeds
):
    pipe = request.getfixturevalue("sd15_pipe" if family in SD15_FAMILIES else "sdxl_pipe")
    before = _unet(pipe)
    pipe.load_identity_adapter(_write(family, tmp_path, pipe.unet, container))

    assert pipe.identity_family == family
    expected = synthetic_state_dict(family, unet=pipe.unet, seed=0)
    architecture = "instantid" if family == "instantid" else family.rsplit("-", 1)[0]
    assert type(pipe.identity_projection) is PROJECTION_CLASSES[architecture]
    for component, half in (("identity_projection", "image_proj"), ("identity_attn", "ip_adapter")):
        state = getattr(pipe, component).state_dict()
        assert state.keys() == expected[half].keys()
        assert all(torch.equal(state[k], v) for k, v in expected[half].items())
    processors = pipe.unet.attn_processors.values()
    assert all(isinstance(p, IdentityAttnProcessor) for p in processors)

    assert torch.equal(_unet(pipe), before)  # no identity tokens: the UNet as it was
    tokens = _tokens(pipe, embeds(1))
    num_tokens = 16 if family == "instantid" else 4
    assert tokens.shape == (2, num_tokens, pipe.unet.config.cross_attention_dim)
    assert not torch.allclose(_unet(pipe, tokens), before)


def test_wrong_family_or_size_fails_naming_shapes_and_changes_nothing(
    sd15_pipe, sdxl_unet, tmp_path, embeds
):
    processors = dict(sd15_pipe.unet.attn_processors)
    faceid_xl = write_checkpoint("faceid-sdxl", tmp_path / "faceid_sdxl.bin", unet=sdxl_unet)
    with pytest.raises(IdentityAdapterError) as error:
        sd15_pipe.load_identity_adapter(faceid_xl)
    message = str(error.value)
    assert str(faceid_xl) in message
    assert "64-d identity tokens" in message and "32-d context" in message
    assert "'1.to_k_ip.weight' expected shape (32, 32), found (32, 64)" in message
    assert "layers [1, 3, ..., 15] (8)" in message and "layers are [1, 3, 5, 7]" in message

    instantid = write_checkpoint("instantid", tmp_path / "ip-adapter.bin", unet=sdxl_unet)
    with pytest.raises(IdentityAdapterError, match="instantid adapter .*64-d identity tokens"):
        sd15_pipe.load_identity_adapter(instantid)

    truncated = synthetic_state_dict("faceid-sd15", unet=sd15_pipe.unet)
    del truncated["ip_adapter"]["3.to_v_ip.weight"]
    with pytest.raises(
        IdentityAdapterError, match=r"1 weights missing \(e.g. \['3.to_v_ip.weight'\]\)"
    ):
        sd15_pipe.load_identity_adapter(truncated)

    assert sd15_pipe.identity_family is None and sd15_pipe.identity_projection is None
    assert all(sd15_pipe.unet.attn_processors[n] is p for n, p in processors.items())

    sd15_pipe.load_identity_adapter(synthetic_state_dict("faceid-sd15", unet=sd15_pipe.unet))
    with pytest.raises(IdentityAdapterError, match=r"128-d, the faceid-sd15 adapter takes 512-d"):
        sd15_pipe.encode_identity(
            embeds(1, dim=128), num_images=1, do_classifier_free_guidance=True
        )


def test_per_block_scale_puts_identity_only_where_asked(sd15_pipe, embeds):
    unet = sd15_pipe.unet

    def record(store):
        def hook(module, args, output):
            store.setdefault(module, []).append(output.clone())

        return hook

    attentions = {name: m for name, m in unet.named_modules() if isinstance(m, Attention)}
    without, with_identity = {}, {}
    handles = [m.register_forward_hook(record(without)) for m in attentions.values()]
    sd15_pipe.load_identity_adapter(synthetic_state_dict("faceid-sd15", unet=unet), scale=0.5)
    assert {p.scale for p in unet.attn_processors.values()} == {0.5}
    tokens = _tokens(sd15_pipe, embeds(1))
    _unet(sd15_pipe)  # no tokens: reference outputs of every attention layer
    for handle in handles:
        handle.remove()

    sd15_pipe.set_identity_scale({"up": {"block_0": [1.0, 0.5]}})
    scales = {name.split(".transformer")[0]: p.scale for name, p in unet.attn_processors.items()}
    assert scales == {
        "down_blocks.1.attentions.0": 0.0,
        "mid_block.attentions.0": 0.0,
        "up_blocks.0.attentions.0": 1.0,
        "up_blocks.0.attentions.1": 0.5,
    }
    handles = [m.register_forward_hook(record(with_identity)) for m in attentions.values()]
    _unet(sd15_pipe, tokens)
    for handle in handles:
        handle.remove()
    for name, module in attentions.items():
        same = torch.equal(with_identity[module][0], without[module][0])
        assert same == (not name.startswith("up_blocks")), name
    sd15_pipe.set_identity_scale(0.0)
    assert torch.equal(_unet(sd15_pipe, tokens), _unet(sd15_pipe, batch=2))

    with pytest.raises(ValueError, match="finite number"):
        sd15_pipe.set_identity_scale({"up": {"block_0": [[0.5, 1.0], 1.0]}})
    with pytest.raises(ValueError, match="finite number"):
        sd15_pipe.set_identity_scale(float("nan"))


def test_unload_restores_processors_and_images_exactly(sd15_pipe, tmp_path, embeds):
    before_processors = dict(sd15_pipe.unet.attn_processors)
    before = _images(sd15_pipe)
    sd15_pipe.load_identity_adapter(_write("faceid-sd15", tmp_path, sd15_pipe.unet, "safetensors"))
    tokens = _tokens(sd15_pipe, embeds(1))
    assert not np.allclose(
        _images(sd15_pipe, cross_attention_kwargs={"identity_tokens": tokens}), before
    )
    assert np.array_equal(_images(sd15_pipe), before)

    sd15_pipe.unload_identity_adapter()
    after = sd15_pipe.unet.attn_processors
    assert all(after[name] is processor for name, processor in before_processors.items())
    assert sd15_pipe.identity_projection is None and sd15_pipe.identity_attn is None
    assert sd15_pipe.config.identity_attn == (None, None)
    assert np.array_equal(_images(sd15_pipe), before)
    sd15_pipe.unload_identity_adapter()  # nothing loaded: a no-op
    with pytest.raises(IdentityAdapterError, match="load_identity_adapter"):
        sd15_pipe.set_identity_scale(1.0)
    with pytest.raises(IdentityAdapterError, match="load_identity_adapter"):
        sd15_pipe.encode_identity(embeds(1), num_images=1, do_classifier_free_guidance=False)


def test_save_pretrained_round_trip_restores_adapter_and_images(sd15_pipe, tmp_path, embeds):
    checkpoint = synthetic_state_dict("faceid-plusv2-sd15", unet=sd15_pipe.unet)
    sd15_pipe.load_identity_adapter(checkpoint, scale=0.8)
    tokens = _tokens(sd15_pipe, embeds(2))
    expected = _images(sd15_pipe, cross_attention_kwargs={"identity_tokens": tokens})

    sd15_pipe.save_pretrained(tmp_path / "saved")
    unet_keys = load_file(tmp_path / "saved" / "unet" / "diffusion_pytorch_model.safetensors")
    assert not any("processor" in key for key in unet_keys)  # the UNet is saved clean
    saved_attn = load_file(
        tmp_path / "saved" / "identity_attn" / "diffusion_pytorch_model.safetensors"
    )
    assert saved_attn.keys() == checkpoint["ip_adapter"].keys()  # the published layout
    assert {p.scale for p in sd15_pipe.unet.attn_processors.values()} == {0.8}  # still installed

    loaded = type(sd15_pipe).from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.identity_family == "faceid-plusv2-sd15"
    assert isinstance(loaded.identity_projection, FaceIDPlusProjection)
    assert all(isinstance(p, IdentityAttnProcessor) for p in loaded.unet.attn_processors.values())
    loaded.set_identity_scale(0.8)
    reloaded_tokens = _tokens(loaded, embeds(2))
    torch.testing.assert_close(reloaded_tokens, tokens, rtol=0, atol=0)
    actual = _images(loaded, cross_attention_kwargs={"identity_tokens": reloaded_tokens})
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)


def test_faceid_matches_diffusers_load_ip_adapter(_sd15_components, sd15_pipe, tmp_path, embeds):
    """Same published FaceID file (LoRA keys included), same seed: the same image."""
    checkpoint = write_checkpoint(
        "faceid-sd15", tmp_path / "faceid.bin", unet=sd15_pipe.unet, seed=7
    )
    e = embeds(1, seed=11)
    plain = _images(sd15_pipe)
    sd15_pipe.load_identity_adapter(checkpoint)
    tokens = sd15_pipe.encode_identity(e, num_images=1, do_classifier_free_guidance=True)
    ours = _images(sd15_pipe, cross_attention_kwargs={"identity_tokens": tokens})

    components = stock_components(_sd15_components)
    reference = StableDiffusionPipeline(**{**components, "unet": copy.deepcopy(components["unet"])})
    reference.set_progress_bar_config(disable=True)
    reference.load_ip_adapter(
        str(tmp_path), subfolder="", weight_name="faceid.bin", image_encoder_folder=None
    )
    assert "faceid_0" in reference.unet.peft_config  # diffusers applies the FaceID LoRA too
    theirs = _images(
        reference, ip_adapter_image_embeds=[torch.cat([torch.zeros_like(e), e]).view(2, 1, 1, 512)]
    )
    assert np.abs(ours - theirs).max() < 1e-4
    assert np.abs(ours - plain).max() > 0.05  # and the adapter does change the image


def test_works_beside_peft_lora(sd15_pipe, embeds):
    unet = sd15_pipe.unet
    base = _unet(sd15_pipe)
    sd15_pipe.load_identity_adapter(synthetic_state_dict("faceid-sd15", unet=unet))
    tokens = _tokens(sd15_pipe, embeds(1))
    identity = _unet(sd15_pipe, tokens)
    config = LoraConfig(
        r=4,
        lora_alpha=4,
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        init_lora_weights=False,
    )
    torch.manual_seed(0)
    unet.add_adapter(config, adapter_name="style")
    assert not any("lora_A" in key for key in sd15_pipe.identity_attn.state_dict())
    lora = _unet(sd15_pipe)
    both = _unet(sd15_pipe, tokens)
    assert torch.isfinite(both).all()
    for a, b in ((base, lora), (base, identity), (lora, both), (identity, both)):
        assert not torch.allclose(a, b)
    sd15_pipe.unload_identity_adapter()
    assert torch.equal(_unet(sd15_pipe), lora)
    unet.disable_adapters()
    assert torch.equal(_unet(sd15_pipe), base)


def _ip_adapter_file(tmp_path, unet):
    """A tiny plain (CLIP image) IP-Adapter in diffusers' published layout, 16-d image embeds."""
    g = torch.Generator().manual_seed(4)
    width = unet.config.cross_attention_dim
    state = {
        "image_proj": {
            "proj.weight": torch.randn(4 * width, 16, generator=g) / 4,
            "proj.bias": torch.zeros(4 * width),
            "norm.weight": torch.ones(width),
            "norm.bias": torch.zeros(width),
        },
        "ip_adapter": {},
    }
    for index in (1, 3, 5, 7):
        for name in ("to_k_ip", "to_v_ip"):
            state["ip_adapter"][f"{index}.{name}.weight"] = torch.randn(32, width, generator=g) / 6
    torch.save(state, tmp_path / "ip.bin")
    return {
        "pretrained_model_name_or_path_or_dict": str(tmp_path),
        "subfolder": "",
        "weight_name": "ip.bin",
        "image_encoder_folder": None,
    }


@pytest.mark.parametrize("identity_first", [False, True])
def test_works_beside_diffusers_ip_adapter(identity_first, make_sd15_pipe, tmp_path, embeds):
    only_ip = make_sd15_pipe()
    identity = synthetic_state_dict("faceid-sd15", unet=only_ip.unet, seed=2)
    image = [torch.randn(2, 1, 16, generator=torch.Generator().manual_seed(5))]
    ip_args = _ip_adapter_file(tmp_path, only_ip.unet)
    only_ip.load_ip_adapter(**ip_args)
    only_identity = make_sd15_pipe()
    only_identity.load_identity_adapter(identity, scale=0.8)
    tokens = only_identity.encode_identity(
        embeds(1), num_images=1, do_classifier_free_guidance=True
    )
    ip_images = _images(only_ip, ip_adapter_image_embeds=image)
    identity_images = _images(only_identity, cross_attention_kwargs={"identity_tokens": tokens})

    both = make_sd15_pipe()
    if identity_first:
        both.load_identity_adapter(identity, scale=0.8)
        both.load_ip_adapter(**ip_args)
    else:
        both.load_ip_adapter(**ip_args)
        both.load_identity_adapter(identity, scale=0.8)
    cross = both.unet.attn_processors["mid_block.attentions.0.transformer_blocks.0.attn2.processor"]
    assert isinstance(cross, IdentityAttnProcessor) and cross.scale == 0.8
    assert isinstance(cross.base_processor, IPAdapterAttnProcessor2_0)

    assert np.array_equal(_images(both, ip_adapter_image_embeds=image), ip_images)
    together = _images(
        both, ip_adapter_image_embeds=image, cross_attention_kwargs={"identity_tokens": tokens}
    )
    assert not np.allclose(together, ip_images) and not np.allclose(together, identity_images)
    both.set_ip_adapter_scale(0.0)
    assert cross.base_processor.scale == [0.0]
    alone = _images(
        both, ip_adapter_image_embeds=image, cross_attention_kwargs={"identity_tokens": tokens}
    )
    np.testing.assert_allclose(alone, identity_images, rtol=0, atol=1e-6)

    both.unload_ip_adapter()
    cross = both.unet.attn_processors["mid_block.attentions.0.transformer_blocks.0.attn2.processor"]
    assert isinstance(cross, IdentityAttnProcessor) and isinstance(
        cross.base_processor, AttnProcessor2_0
    )
    assert cross.scale == 0.8
    np.testing.assert_allclose(
        _images(both, cross_attention_kwargs={"identity_tokens": tokens}),
        identity_images,
        rtol=0,
        atol=1e-6,
    )


def test_encode_identity_shapes_negatives_and_multiple_references(sd15_pipe, embeds):
    sd15_pipe.load_identity_adapter(synthetic_state_dict("faceid-sd15", unet=sd15_pipe.unet))
    projection = sd15_pipe.identity_projection
    e = embeds(2)
    tokens = sd15_pipe.encode_identity(e[:1], num_images=3, do_classifier_free_guidance=True)
    assert tokens.shape == (6, 4, 32)
    with torch.no_grad():
        torch.testing.assert_close(tokens[:3], projection(torch.zeros(1, 512)).expand(3, -1, -1))
        torch.testing.assert_close(tokens[3:], projection(e[:1]).expand(3, -1, -1))
    no_cfg = sd15_pipe.encode_identity(e[0], num_images=2, do_classifier_free_guidance=False)
    torch.testing.assert_close(no_cfg, tokens[3:5])

    mean = torch.nn.functional.normalize(e.sum(0, keepdim=True), dim=-1)
    pair = sd15_pipe.encode_identity(e, num_images=1, do_classifier_free_guidance=False)
    torch.testing.assert_close(
        pair, sd15_pipe.encode_identity(mean, num_images=1, do_classifier_free_guidance=False)
    )
    same = sd15_pipe.encode_identity(
        torch.cat([e[:1], e[:1]]), num_images=1, do_classifier_free_guidance=False
    )
    torch.testing.assert_close(same, tokens[3:4])

    projection.to(torch.float64)
    assert (
        sd15_pipe.encode_identity(e, num_images=1, do_classifier_free_guidance=True).dtype
        == torch.float64
    )


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda e: torch.cat([e, 2 * e]), r"mix unit-norm and raw rows \(norms \[1, 2"),
        (lambda e: e * float("nan"), "finite and non-zero"),
        (lambda e: e * 0, "finite and non-zero"),
        (lambda e: (e * 100).long(), "float tensor"),
        (lambda e: e[None], r"must be \[num_refs, 512\]"),
        (lambda e: e[:0], r"must be \[num_refs, 512\]"),
        (lambda e: torch.cat([e, -e]), "cancel out"),
    ],
)
def test_encode_identity_rejects_bad_embeddings(bad, message, sd15_pipe, embeds):
    sd15_pipe.load_identity_adapter(synthetic_state_dict("faceid-sd15", unet=sd15_pipe.unet))
    with pytest.raises(IdentityAdapterError, match=message):
        sd15_pipe.encode_identity(bad(embeds(1)), num_images=1, do_classifier_free_guidance=True)


def test_encode_identity_arguments_per_family(sd15_pipe, sdxl_pipe, embeds):
    e = embeds(2)
    sd15_pipe.load_identity_adapter(synthetic_state_dict("faceid-sd15", unet=sd15_pipe.unet))
    with pytest.raises(IdentityAdapterError, match="FaceID-PlusV2 only"):
        sd15_pipe.encode_identity(
            e,
            num_images=1,
            do_classifier_free_guidance=True,
            clip_image_embeds=torch.zeros(2, 257, 1280),
        )
    with pytest.raises(ValueError, match="positive int"):
        sd15_pipe.encode_identity(e, num_images=0, do_classifier_free_guidance=True)

    sd15_pipe.load_identity_adapter(synthetic_state_dict("faceid-plusv2-sd15", unet=sd15_pipe.unet))
    plus = sd15_pipe.identity_projection
    with pytest.raises(IdentityAdapterError, match="needs clip_image_embeds"):
        sd15_pipe.encode_identity(e, num_images=1, do_classifier_free_guidance=True)
    with pytest.raises(
        IdentityAdapterError, match=r"must be \[2, tokens, 1280\].*got \[1, 257, 1024\]"
    ):
        sd15_pipe.encode_identity(
            e,
            num_images=1,
            do_classifier_free_guidance=True,
            clip_image_embeds=torch.zeros(1, 257, 1024),
        )
    g = torch.Generator().manual_seed(1)
    clip, black = torch.randn(2, 257, 1280, generator=g), torch.randn(1, 257, 1280, generator=g)
    tokens = sd15_pipe.encode_identity(
        e,
        num_images=1,
        do_classifier_free_guidance=True,
        clip_image_embeds=clip,
        negative_clip_image_embeds=black,
    )
    mean = torch.nn.functional.normalize(e.mean(0, keepdim=True), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(tokens[1:], plus(mean, clip.mean(0, keepdim=True)))
        torch.testing.assert_close(tokens[:1], plus(torch.zeros(1, 512), black))
        default = sd15_pipe.encode_identity(
            e, num_images=1, do_classifier_free_guidance=True, clip_image_embeds=clip
        )
        torch.testing.assert_close(
            default[:1], plus(torch.zeros(1, 512), torch.zeros(1, 257, 1280))
        )

    sdxl_pipe.load_identity_adapter(synthetic_state_dict("instantid", unet=sdxl_pipe.unet))
    tokens = sdxl_pipe.encode_identity(e[:1], num_images=1, do_classifier_free_guidance=False)
    with torch.no_grad():  # InstantID takes raw-scale ArcFace embeddings: norm sqrt(512)
        torch.testing.assert_close(tokens, sdxl_pipe.identity_projection(e[:1] * math.sqrt(512)))


def test_pipeline_classes_must_declare_the_components(_sd15_components):
    components = stock_components(_sd15_components)

    class Undeclared(IdentityAdapterMixin, StableDiffusionPipeline):
        pass

    with pytest.raises(
        TypeError, match=r"identity_projection=None, identity_attn=None.*_optional_components"
    ):
        Undeclared(**components).load_identity_adapter({})

    class MixinLast(DiffusionPipeline, IdentityAdapterMixin):
        _optional_components: ClassVar[list[str]] = list(COMPONENTS)

        def __init__(self, unet, identity_projection=None, identity_attn=None):
            super().__init__()
            self.register_modules(
                unet=unet, identity_projection=identity_projection, identity_attn=identity_attn
            )

    with pytest.raises(TypeError, match="before DiffusionPipeline"):
        MixinLast(components["unet"]).load_identity_adapter({})


def test_identity_tokens_reach_every_layer_silently(sdxl_pipe, capfd, embeds):
    sdxl_pipe.load_identity_adapter(synthetic_state_dict("instantid", unet=sdxl_pipe.unet))
    capfd.readouterr()
    _unet(sdxl_pipe, _tokens(sdxl_pipe, embeds(1)))
    assert "not expected" not in capfd.readouterr().err  # self-attention layers accept them too


def test_a_bad_scale_fails_before_anything_is_loaded(sd15_pipe):
    processors = dict(sd15_pipe.unet.attn_processors)
    with pytest.raises(ValueError, match="finite number, got 'strong'"):
        sd15_pipe.load_identity_adapter(
            synthetic_state_dict("faceid-sd15", unet=sd15_pipe.unet), scale="strong"
        )
    checkpoint = synthetic_state_dict("faceid-sd15", unet=sd15_pipe.unet)
    with pytest.raises(ValueError, match=r"down.block_0: .* with attention are \['block_1'\]"):
        sd15_pipe.load_identity_adapter(checkpoint, scale={"down": {"block_0": 1.0}})
    with pytest.raises(ValueError, match=r"'down', 'mid' and 'up', got \['middle'\]"):
        sd15_pipe.load_identity_adapter(checkpoint, scale={"middle": 1.0})
    assert sd15_pipe.identity_family is None
    assert all(sd15_pipe.unet.attn_processors[n] is p for n, p in processors.items())
