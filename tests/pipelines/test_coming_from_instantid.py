"""Calls written for InstantX's InstantID pipeline or diffusers' IP-Adapter FaceID, on ours.

Each reference-style call either gives the image of our own call with the mapped arguments
(docs/coming-from-instantid.md) or raises an error naming the replacement.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetPipeline,
    UNet2DConditionModel,
)
from portrait_helpers import condition, generate, load_pipeline, make_controlnet, unit_embeds

from adapters import write_checkpoint, write_identitynet
from pipelines import PortraitPipeline, PortraitXLPipeline
from studio.models.tiny import built_path


@pytest.fixture(scope="module")
def sd15_path(tiny_models_dir):
    return built_path(tiny_models_dir, "tiny-sd15")


@pytest.fixture(scope="module")
def faceid_pipe(sd15_path, tmp_path_factory) -> PortraitPipeline:
    pipe = load_pipeline(PortraitPipeline, sd15_path)
    path = tmp_path_factory.mktemp("faceid") / "ip-adapter-faceid_sd15.bin"
    pipe.load_identity_adapter(write_checkpoint("faceid-sd15", path, unet=pipe.unet))
    return pipe


@pytest.fixture(scope="module")
def sdxl_unet(sdxl_path) -> UNet2DConditionModel:
    """The plain tiny SDXL UNet, to build nets from (never given to a pipeline)."""
    return UNet2DConditionModel.from_pretrained(sdxl_path, subfolder="unet")


@pytest.fixture(scope="module")
def identitynet_path(sdxl_unet, tmp_path_factory):
    """An IdentityNet saved where the reference keeps it: ``.../InstantID/ControlNetModel``."""
    unet = sdxl_unet
    folder = tmp_path_factory.mktemp("hub") / "InstantID" / "ControlNetModel"
    return write_identitynet(folder, unet, seed=1, vae_scale_factor=2)


@pytest.fixture(scope="module")
def instantid_pipe(sdxl_path, identitynet_path, tmp_path_factory) -> PortraitXLPipeline:
    """InstantID as the reference loads it: the IdentityNet passed as `controlnet=`."""
    pipe = load_pipeline(
        PortraitXLPipeline, sdxl_path, controlnet=ControlNetModel.from_pretrained(identitynet_path)
    )
    path = tmp_path_factory.mktemp("instantid") / "ip-adapter.bin"
    pipe.load_identity_adapter(write_checkpoint("instantid", path, unet=pipe.unet))
    return pipe


def raw_embedding(seed: int = 0) -> np.ndarray:
    """Like insightface's `face.embedding`: float32, components about standard normal."""
    return np.random.default_rng(seed).standard_normal(512).astype(np.float32)


# -- the IdentityNet as `controlnet=` ------------------------------------------------------------


def test_identitynet_given_as_controlnet_is_the_identitynet(instantid_pipe, identitynet_path):
    assert isinstance(instantid_pipe.identitynet, ControlNetModel)
    assert instantid_pipe.controlnet is None
    kwargs = {"identity_embeds": unit_embeds(1), "keypoint_image": condition(3)}
    explicit = PortraitXLPipeline(
        **{
            **instantid_pipe.components,
            "identitynet": ControlNetModel.from_pretrained(identitynet_path),
        }
    )
    explicit.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(generate(instantid_pipe, **kwargs), generate(explicit, **kwargs))


def test_identitynet_in_a_list_of_controlnets_is_split_out(instantid_pipe, sdxl_unet):
    depth = make_controlnet(sdxl_unet, seed=4)
    components = {**instantid_pipe.components, "identitynet": None}
    pipe = PortraitXLPipeline(**{**components, "controlnet": [instantid_pipe.identitynet, depth]})
    assert pipe.identitynet is instantid_pipe.identitynet and pipe.controlnet is depth


def test_an_identitynet_from_an_unnamed_folder_is_not_run_silently(
    instantid_pipe, identitynet_path, tmp_path, caplog
):
    """Its config is an ordinary ControlNet's: without a telling folder name it stays a
    ControlNet on the prompt, and the call says how to make it the IdentityNet."""
    unnamed = tmp_path / "weights" / "ControlNetModel"
    ControlNetModel.from_pretrained(identitynet_path).save_pretrained(unnamed)
    components = {**instantid_pipe.components, "identitynet": None}
    pipe = PortraitXLPipeline(
        **{**components, "controlnet": ControlNetModel.from_pretrained(unnamed)}
    )
    pipe.set_progress_bar_config(disable=True)
    assert pipe.identitynet is None and pipe.controlnet is not None
    with caplog.at_level("WARNING"):
        generate(pipe, identity_embeds=unit_embeds(1), control_image=condition(3))
    assert "pass it as `identitynet=`" in caplog.text


def test_sd15_refuses_the_identitynet(sd15_path, identitynet_path):
    with pytest.raises(ValueError, match="IdentityNet is an SDXL net.*PortraitXLPipeline"):
        load_pipeline(
            PortraitPipeline,
            sd15_path,
            controlnet=ControlNetModel.from_pretrained(identitynet_path),
        )


# -- reference arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "replacement"),
    [
        ("image_embeds", "identity_embeds="),
        ("image", "keypoint_image="),
        ("ip_adapter_scale", "identity_scale="),
        ("visual_prompt", "no image-to-image start"),
        ("wplus", "`PortraitPipeline` and `pipe.load_wplus_adapter"),
        ("visual_prompt_strength", "no image-to-image start"),
        ("callback", "callback_on_step_end="),
        ("callback_steps", "callback_on_step_end="),
    ],
)
def test_reference_arguments_name_the_replacement(instantid_pipe, name, replacement):
    with pytest.raises(TypeError, match=f"does not take `{name}`: .*{replacement}"):
        generate(instantid_pipe, **{name: 0.5})


def test_sd15_names_the_control_image_and_unknown_names_stay_type_errors(faceid_pipe):
    with pytest.raises(TypeError, match="does not take `image`: .*`control_image=`"):
        generate(faceid_pipe, image=condition(3))
    with pytest.raises(TypeError, match="unexpected keyword argument 'strength'"):
        generate(faceid_pipe, strength=0.5)
    with pytest.raises(ValueError, match="scales the `controlnet`.*pass `control_image=` too"):
        generate(faceid_pipe, controlnet_conditioning_scale=0.5)
    with pytest.raises(ValueError, match="`control_guidance_end` applies to the condition nets"):
        generate(faceid_pipe, control_guidance_end=0.5)


def test_controlnet_conditioning_scale_without_a_controlnet_names_the_identitynet_scale(
    instantid_pipe,
):
    with pytest.raises(ValueError, match="the IdentityNet's scale is `identitynet_conditioning"):
        generate(
            instantid_pipe,
            identity_embeds=unit_embeds(1),
            keypoint_image=condition(3),
            controlnet_conditioning_scale=0.5,
        )
    with pytest.raises(ValueError, match="`identitynet_conditioning_scale` scales the Identity"):
        generate(instantid_pipe, identity_embeds=unit_embeds(1), identitynet_conditioning_scale=0.5)
    with pytest.raises(ValueError, match="`guess_mode` applies to the condition nets"):
        generate(instantid_pipe, identity_embeds=unit_embeds(1), guess_mode=True)


# -- scales -------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_set_ip_adapter_scale_sets_the_identity_scale(family, faceid_pipe, instantid_pipe):
    pipe = faceid_pipe if family == "sd15" else instantid_pipe
    embeds = unit_embeds(1)
    expected = generate(pipe, identity_embeds=embeds, identity_scale=0.3)
    pipe.set_ip_adapter_scale(0.3)
    try:
        np.testing.assert_array_equal(generate(pipe, identity_embeds=embeds), expected)
    finally:
        pipe.set_identity_scale(1.0)


def test_ip_adapter_image_embeds_without_diffusers_ip_adapter_names_identity_embeds(faceid_pipe):
    id_embeds = torch.cat([torch.zeros(1, 1, 1, 512), unit_embeds(1)[None, None]])
    with pytest.raises(ValueError, match="takes the face embeddings as `identity_embeds=`"):
        generate(faceid_pipe, ip_adapter_image_embeds=[id_embeds])


# -- embeddings ---------------------------------------------------------------------------------


def test_instantid_takes_raw_numpy_embeddings_as_the_reference_does(instantid_pipe):
    raw = raw_embedding()
    tokens = instantid_pipe.encode_identity(raw, num_images=1, do_classifier_free_guidance=True)
    # The reference: `image_proj_model(cat([zeros, emb]).reshape([2, -1, 512]))`.
    reference = torch.from_numpy(raw).reshape(1, 1, 512)
    with torch.no_grad():
        expected = instantid_pipe.identity_projection(
            torch.cat([torch.zeros_like(reference), reference])
        )
    torch.testing.assert_close(tokens, expected, rtol=0, atol=0)
    np.testing.assert_array_equal(
        generate(instantid_pipe, identity_embeds=raw),
        generate(instantid_pipe, identity_embeds=torch.from_numpy(raw)),
    )
    # Several raw embeddings: their mean, one identity (the reference would read a sequence).
    pair = np.stack([raw, raw_embedding(1)])
    torch.testing.assert_close(
        instantid_pipe.encode_identity(pair, num_images=1, do_classifier_free_guidance=False),
        instantid_pipe.encode_identity(
            pair.mean(0), num_images=1, do_classifier_free_guidance=False
        ),
    )


def test_faceid_normalises_raw_embeddings(faceid_pipe):
    raw = raw_embedding()
    unit = torch.nn.functional.normalize(torch.from_numpy(raw), dim=-1)
    np.testing.assert_allclose(
        generate(faceid_pipe, identity_embeds=raw),
        generate(faceid_pipe, identity_embeds=unit),
        atol=1e-6,
    )


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_encode_identity_outside_no_grad_returns_no_grad_tensor(
    family, faceid_pipe, instantid_pipe
):
    pipe = faceid_pipe if family == "sd15" else instantid_pipe
    with torch.enable_grad():
        tokens = pipe.encode_identity(
            unit_embeds(1), num_images=1, do_classifier_free_guidance=True
        )
    assert not tokens.requires_grad


# -- ControlNet options, as diffusers' ControlNet pipelines have them ----------------------------

OPTIONS = [
    {"guess_mode": True},
    {"control_guidance_start": 0.5},
    {"control_guidance_end": 0.5},
    {"control_guidance_start": 0.2, "control_guidance_end": 0.8, "guess_mode": True},
]


@pytest.fixture(scope="module")
def sd15_controlnet_pair(sd15_path):
    """Ours and diffusers' ControlNet pipeline on one ControlNet, and our image without options."""
    net = make_controlnet(UNet2DConditionModel.from_pretrained(sd15_path, subfolder="unet"), 1)
    ours = load_pipeline(PortraitPipeline, sd15_path, controlnet=net)
    theirs = load_pipeline(StableDiffusionControlNetPipeline, sd15_path, controlnet=net)
    return ours, theirs, generate(ours, control_image=MESH, num_inference_steps=3)


@pytest.fixture(scope="module")
def sdxl_controlnet_pair(sdxl_path, sdxl_unet):
    net = make_controlnet(sdxl_unet, seed=2)
    ours = load_pipeline(PortraitXLPipeline, sdxl_path, controlnet=net)
    theirs = load_pipeline(StableDiffusionXLControlNetPipeline, sdxl_path, controlnet=net)
    return ours, theirs, generate(ours, control_image=MESH, num_inference_steps=3)


MESH = PIL.Image.fromarray(condition(3))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("options", OPTIONS)
def test_controlnet_options_match_diffusers(family, options, request):
    ours, theirs, plain = request.getfixturevalue(f"{family}_controlnet_pair")
    expected = generate(theirs, image=MESH, num_inference_steps=3, **options)
    images = generate(ours, control_image=MESH, num_inference_steps=3, **options)
    np.testing.assert_allclose(images, expected, atol=1e-6)
    assert np.abs(images - plain).max() > 1e-4


def test_identitynet_follows_the_guidance_window(instantid_pipe):
    kwargs = {"identity_embeds": unit_embeds(1), "keypoint_image": condition(3)}
    full = generate(instantid_pipe, **kwargs)
    off = generate(instantid_pipe, **kwargs, identitynet_conditioning_scale=0.0)
    # A window that starts after the last step leaves the IdentityNet out of every step.
    np.testing.assert_array_equal(
        generate(instantid_pipe, **kwargs, control_guidance_start=0.99), off
    )
    assert np.abs(generate(instantid_pipe, **kwargs, control_guidance_end=0.5) - full).max() > 1e-4


# -- reference methods --------------------------------------------------------------------------


def test_reference_loader_loads_instantid_at_the_reference_scale(sdxl_path, sdxl_unet, tmp_path):
    checkpoint = write_checkpoint("instantid", tmp_path / "ip-adapter.bin", unet=sdxl_unet)
    reference_style = load_pipeline(PortraitXLPipeline, sdxl_path)
    reference_style.load_ip_adapter_instantid(checkpoint)
    ours = load_pipeline(PortraitXLPipeline, sdxl_path)
    ours.load_identity_adapter(checkpoint)
    embeds = unit_embeds(1)
    np.testing.assert_array_equal(
        generate(reference_style, identity_embeds=embeds),
        generate(ours, identity_embeds=embeds, identity_scale=0.5),
    )
    with pytest.raises(ValueError, match="not InstantID's for 512-d and 4"):
        reference_style.load_ip_adapter_instantid(checkpoint, num_tokens=4)


@pytest.mark.parametrize(
    ("method", "replacement"),
    [
        ("set_image_proj_model", "load_identity_adapter"),
        ("set_ip_adapter", "load_identity_adapter"),
        ("cuda", r'pipe.to\("cuda", torch.float16\)'),
    ],
)
def test_reference_methods_name_the_replacement(instantid_pipe, method, replacement):
    with pytest.raises(TypeError, match=replacement):
        getattr(instantid_pipe, method)("./checkpoints/ip-adapter.bin")
