"""The README's three ways to call the pipelines, end to end on the tiny set.

ArcFace weights cannot be had offline, so a synthetic ONNX with w600k_r50's signature stands in
for them through the same ``--weights arcface=PATH`` override a user has, with a random FaceID
adapter in the published (512-d) layout (the tiny set's own adapter takes SFace embeddings).
"""

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from synthetic_models import arcface_like_model

from adapters import write_checkpoint
from pipelines import PortraitPipeline
from studio.faces.analyzer import analyzer_from_settings
from studio.faces.condition import pose_condition
from studio.identity import photo_identity_embeds, profile_identity_embeds
from studio.images import load_image
from studio.models import select_model_set
from studio.models.resolver import ModelResolver
from studio.profiles.library import ProfileLibrary
from studio.settings import load_settings


@pytest.fixture(scope="module")
def arcface_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("arcface") / "w600k_r50.onnx"
    arcface_like_model(path)
    return path


@pytest.fixture
def flows(tiny_env, arcface_file, tmp_path):
    settings = load_settings(weights={"arcface": str(arcface_file)})
    models, resolver = select_model_set("tiny"), ModelResolver(settings)
    controlnet = ControlNetModel.from_pretrained(resolver.resolve(models, "controlnet_face"))
    pipe = PortraitPipeline.from_pretrained(
        resolver.resolve(models, "base"), controlnet=controlnet, safety_checker=None
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.load_identity_adapter(
        write_checkpoint("faceid-sd15", tmp_path / "ip-adapter-faceid_sd15.bin", unet=pipe.unet)
    )
    return settings, pipe


def generate(pipe, **kwargs):
    return pipe(
        "a studio portrait",
        num_inference_steps=2,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    ).images[0]


def test_profile_embeddings_and_pose_reference_flows(flows, faces_dir):
    settings, pipe = flows
    photos = [faces_dir / "person_b_1.jpg"]  # one photo: the stand-in ArcFace is no recognizer
    with ProfileLibrary.from_settings(settings) as library:
        library.create("Ada", photos, consent=True, encoders=("arcface",))
        embeds = profile_identity_embeds(library.get("Ada"), "arcface")
    assert embeds.shape == (1, 512)
    from_profile = generate(pipe, identity_embeds=embeds)

    analyzer = analyzer_from_settings(settings, encoders=("arcface",))
    from_photos = photo_identity_embeds(analyzer, photos, "arcface")
    torch.testing.assert_close(from_photos, embeds, atol=1e-5, rtol=0)
    np.testing.assert_allclose(generate(pipe, identity_embeds=from_photos), from_profile, atol=1e-5)
    assert not np.allclose(from_profile, generate(pipe))

    face = analyzer.analyze(load_image(faces_dir / "impostor_1.jpg").rgb)[0]
    mesh_image = pose_condition(face, (64, 64), kind="mesh")
    posed = generate(pipe, identity_embeds=embeds, control_image=mesh_image)
    assert posed.shape == (64, 64, 3)
    assert not np.allclose(posed, from_profile)
