"""Face swap through the studio on the tiny set: the group photo by diffusion (path B) and by a
synthetic inswapper (path A), from the CLI, Python and the swap stage, with saved provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from swap_helpers import tile_of
from synthetic_models import arcface_like_model, inswapper_like_model

from studio.cli import main
from studio.errors import StudioError
from studio.orchestrator import PortraitRequest, Studio
from studio.outputs import read_provenance
from studio.settings import load_settings
from studio.stages import StageError
from studio.swap.engine import diffusion_swap, swap_faces
from studio.swap.service import target_faces
from studio.swap.types import SwapRequest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("swap-models")
    arcface_like_model(folder / "w600k_r50.onnx")
    inswapper_like_model(folder / "inswapper_128.onnx")
    return {"arcface": folder / "w600k_r50.onnx", "inswapper": folder / "inswapper_128.onnx"}


@pytest.fixture
def studio(tiny_env, faces_dir, model_files) -> Studio:
    weights = {name: str(path) for name, path in model_files.items()}
    studio = Studio(load_settings(weights=weights), "tiny")
    with studio.library() as library:
        library.create("Ada", [faces_dir / "person_a_2.jpg"], consent=True)
        library.create("Bea", [faces_dir / "person_b_2.jpg"], consent=True, encoders=("arcface",))
    return studio


def weights_flags(model_files) -> list[str]:
    return [f for name, path in model_files.items() for f in ("--weights", f"{name}={path}")]


def sidecar(path):
    return json.loads(path.with_suffix(".json").read_text())


def test_the_swap_command_puts_the_profile_into_every_face_of_the_group(
    studio, group_photo, group_rgb, model_files, tmp_path, capsys
):
    out = tmp_path / "swaps"
    argv = ["swap", "--profile", "Ada", "--target", str(group_photo), "--face", "all"]
    assert main([*argv, "--steps", "2", "--out", str(out), *weights_flags(model_files)]) == 0
    printed = capsys.readouterr().out
    assert "swapped face 0, 1, 2, 3, 4, 5 of 6 by diffusion" in printed
    [saved] = out.glob("*-0.png")
    record = sidecar(saved)
    assert record["target"] == "group.jpg" and record["profile"] == "Ada"
    assert record["swap"]["faces"] == [0, 1, 2, 3, 4, 5] and record["swap"]["method"] == "diffusion"
    assert read_provenance(saved)["ai_generated"] == "true"
    mask = np.asarray(Image.open(saved.with_name(record["masks"]["swap"])))
    assert mask.shape == group_rgb.shape[:2]
    faces = target_faces(studio, group_rgb)
    for face in faces:  # every face was pasted over, the space between them was not
        x, y, w, h = (int(v) for v in face.bbox)
        assert mask[y + h // 2, x + w // 2] == 255
    assert mask[:, 195:205].max() == 0


def test_match_swaps_only_the_face_most_like_the_reference(studio, group_photo, faces_dir):
    request = SwapRequest("Ada", group_photo, face=f"match:{faces_dir / 'person_a_1.jpg'}", steps=2)
    result = studio.swap(request)
    faces = target_faces(studio, np.asarray(Image.open(group_photo).convert("RGB")))
    assert result.faces_found == 6 and len(result.faces) == 1
    assert tile_of(faces[result.faces[0]]) in ("person_a_1", "person_a_2")
    assert sidecar(result.path)["swap"]["face"] == f"match:{faces_dir / 'person_a_1.jpg'}"


def test_path_b_changes_nothing_outside_the_mask_and_shares_the_pipeline(studio, group_rgb):
    identity = studio.identity("Ada")
    pipe = studio.pipeline()
    swap = diffusion_swap(studio.host, studio.model_set, identity, steps=2)
    assert swap.pipe.unet is pipe.unet and swap.pipe.identity_attn is pipe.identity_attn
    assert swap.pose_kind == "mesh" and swap.size == 64  # the tiny set's face ControlNet
    faces = target_faces(studio, group_rgb)
    edit = swap_faces(
        group_rgb,
        faces,
        [1, 4],
        inswapper=None,
        diffusion=swap,
        strength=0.9,
        generator=torch.Generator().manual_seed(0),
        parser=studio.face_parser,
    )
    outside = edit.weight == 0
    assert np.array_equal(edit.image[outside], group_rgb[outside])
    assert np.any(edit.image[~outside] != group_rgb[~outside])
    for index in (0, 2, 3, 5):  # untouched faces
        x, y, w, h = (int(v) for v in faces[index].bbox)
        assert np.array_equal(edit.image[y : y + h, x : x + w], group_rgb[y : y + h, x : x + w])


def test_path_a_with_the_inswapper_and_its_refine(studio, group_photo, group_rgb, model_files):
    result = studio.swap(SwapRequest("Bea", group_photo, face="1", method="inswapper"))
    record = sidecar(result.path)
    assert result.faces == (1,) and record["swap"]["method"] == "inswapper"
    assert record["model_set"] == "inswapper" and record["target"] == "group.jpg"
    swapped = np.asarray(Image.open(result.path).convert("RGB")).astype(int)
    mask = np.asarray(Image.open(result.path.with_name(record["masks"]["swap"])))
    change = np.abs(swapped - group_rgb).mean(axis=2)
    assert change[mask == 255].mean() > 2 * change[mask == 0].mean()  # beyond the watermark

    refined = studio.swap(
        SwapRequest("Bea", group_photo, face="1", method="inswapper", refine=True, steps=2)
    )
    assert refined.method == "inswapper + diffusion refine"
    assert sidecar(refined.path)["swap"]["strength"] is not None


def test_swap_errors_are_one_clear_line(studio, group_photo, model_files, tmp_path, capsys):
    blank = tmp_path / "wall.png"
    Image.new("RGB", (200, 160), (120, 130, 140)).save(blank)
    cases = (
        (["--target", str(blank)], "target photo wall.png: no face found"),
        (["--target", str(group_photo), "--face", "8"], "has 6 faces (numbers 0 to 5"),
        (
            ["--target", str(group_photo), "--method", "inswapper"],
            "profile 'Ada' has no ArcFace embeddings (it keeps: sface), which the inswapper "
            "path needs; use --method diffusion",
        ),
        (["--target", str(tmp_path / "nope.jpg")], "target photo: "),
        (["--target", str(group_photo), "--strength", "3"], "strength 3.0 is out of range"),
    )
    for flags, message in cases:
        argv = ["swap", "--profile", "Ada", *flags, *weights_flags(model_files)]
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_the_swap_stage_puts_the_portrait_person_onto_a_template(studio, group_photo, faces_dir):
    request = PortraitRequest(
        "Ada", prompt="a portrait", steps=2, stages=("swap",), swap_target=str(group_photo)
    )
    [portrait] = studio.generate(request).portraits
    assert Image.open(portrait.path).size == (600, 480)  # the template, with the new face
    record = sidecar(portrait.path)
    assert record["stage_notes"]["swap"][0] == "swapped into group.jpg (face 0 of 6) by diffusion"
    assert "swap.face" in record["masks"]

    # the template's face by number, or the one most like a photo
    def swapped(face: str) -> str:
        request = PortraitRequest(
            "Ada",
            prompt="a portrait",
            steps=2,
            stages=("swap",),
            swap_target=str(group_photo),
            swap_face=face,
        )
        [portrait] = studio.generate(request).portraits
        return sidecar(portrait.path)["stage_notes"]["swap"][0]

    assert swapped("4") == "swapped into group.jpg (face 4 of 6) by diffusion"
    note = swapped(f"match:{faces_dir / 'person_b_2.jpg'}")
    faces = target_faces(studio, np.asarray(Image.open(group_photo).convert("RGB")))
    index = int(note.split("(face ")[1].split(" of")[0])
    assert tile_of(faces[index]) in ("person_b_1", "person_b_2")
    assert swapped("all") == "swapped into group.jpg (faces 0, 1, 2, 3, 4, 5 of 6) by diffusion"
    with pytest.raises(StudioError, match="--swap-face 6: target photo group.jpg has 6 faces"):
        swapped("6")
    with pytest.raises(StudioError, match="--swap-face 'left': use a face number"):
        PortraitRequest("Ada", prompt="x", swap_face="left").validate()

    with pytest.raises(StageError, match="needs a template photo: pass --swap-target PHOTO"):
        studio.generate(PortraitRequest("Ada", prompt="a portrait", steps=2, stages=("swap",)))
    with pytest.raises(StudioError, match="swap target: "):
        studio.generate(
            PortraitRequest("Ada", prompt="x", steps=2, stages=("swap",), swap_target="nope.jpg")
        )


def test_path_b_on_the_sdxl_set_reads_the_targets_keypoints(studio, group_photo, group_rgb):
    studio.use_models("tiny-xl")
    result = studio.swap(SwapRequest("Ada", group_photo, face="2", steps=2))
    assert result.faces == (2,) and sidecar(result.path)["model_set"] == "tiny-xl"
    swap = diffusion_swap(studio.host, studio.model_set, studio.identity("Ada"), steps=2)
    assert type(swap.pipe).__name__ == "PortraitXLInpaintPipeline"
    assert swap.pose_kind == "kps" and swap.pose_argument == "keypoint_image"
    assert swap.pipe.unet is studio.pipeline().unet
