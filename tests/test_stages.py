"""The stage seam through the real studio on the tiny set: stages chosen per request, run under
the GPU lock with derived pipelines, their notes and masks saved, and no partial saves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from studio.cli import main
from studio.errors import StudioError
from studio.faces.mesh_parser import MeshFaceParser
from studio.orchestrator import PortraitRequest, Studio
from studio.stages import (
    STAGES,
    StageError,
    StageInput,
    StageOutput,
    StageResources,
    register_stage,
)

pytestmark = pytest.mark.slow

BOX = (8, 8, 40, 40)
RED = (255, 0, 0)


class DrawBox:
    """Draws a red box and records what it was given (the image, faces, identity, resources)."""

    name = "draw-box"

    def __init__(self, studio: Studio):
        self.studio = studio
        self.seen: list[tuple[StageInput, StageResources, bool]] = []

    def run(self, given: StageInput, resources: StageResources) -> StageOutput:
        self.seen.append((given, resources, self.studio._gpu_lock.locked()))
        image = given.image.copy()
        ImageDraw.Draw(image).rectangle(BOX, fill=RED)
        mask = Image.new("L", image.size)
        ImageDraw.Draw(mask).rectangle(BOX, fill=255)
        note = f"boxed image {given.index} (seed {given.seed}), {len(given.faces)} faces"
        return StageOutput(image, masks={"box": mask}, notes=(note,))


class Inpaint:
    """Repaints the box with the host's derived inpainting pipeline (it shares the weights)."""

    name = "inpaint-box"

    def run(self, given: StageInput, resources: StageResources) -> StageOutput:
        pipe = resources.derived("inpaint")
        mask = Image.new("L", given.image.size)
        ImageDraw.Draw(mask).rectangle(BOX, fill=255)
        image = pipe(
            prompt="skin",
            image=given.image,
            mask_image=mask,
            num_inference_steps=2,
            width=given.image.width,
            height=given.image.height,
            generator=resources.generator,
        ).images[0]
        return StageOutput(image, notes=(f"inpainted with {type(pipe).__name__}",))


class FailOn:
    """Fails on the image at ``index``."""

    name = "fail-on-2"

    def __init__(self, index: int):
        self.index = index

    def run(self, given: StageInput, resources: StageResources) -> StageOutput:
        if given.index == self.index:
            raise StudioError("the face is turned too far")
        return StageOutput(given.image)


@pytest.fixture
def draw_box(studio, monkeypatch) -> DrawBox:
    stage = DrawBox(studio)
    monkeypatch.setitem(STAGES, "draw-box", None)  # removed again after the test
    register_stage("draw-box", lambda: stage)
    return stage


def request(**kwargs) -> PortraitRequest:
    return PortraitRequest("Ada", prompt="a portrait", steps=2, **kwargs)


def test_a_stage_edits_every_image_under_the_lock_and_its_notes_and_masks_are_saved(
    studio, draw_box
):
    result = studio.generate(request(num_images=2, seed=5, stages=("draw-box",)))

    assert len(draw_box.seen) == 2
    for index, (given, resources, locked) in enumerate(draw_box.seen):
        assert locked and given.index == index and given.seed == 5 + index
        assert given.request.stages == ("draw-box",) and given.identity.profile == "Ada"
        assert set(given.identity.encodings) == {"sface", result.scorer}
        assert given.faces == ()  # tiny-model noise has no face
        assert resources.analyzer.encoders.keys() >= {result.scorer}
        assert isinstance(resources.face_parser, MeshFaceParser)  # no BiSeNet file here
        assert resources.generator.initial_seed() == 5 + index
    for portrait in result.portraits:
        pixels = np.asarray(Image.open(portrait.path))
        assert (pixels[BOX[1] : BOX[3], BOX[0] : BOX[2]] == RED).all()
        sidecar = json.loads(portrait.path.with_suffix(".json").read_text())
        assert sidecar["stages"] == ["draw-box"]
        index = portrait.seed - 5
        assert sidecar["stage_notes"] == {
            "draw-box": [f"boxed image {index} (seed {portrait.seed}), 0 faces"]
        }
        mask = portrait.path.with_name(sidecar["masks"]["draw-box.box"])
        assert mask.name == f"{portrait.path.stem}.draw-box.box.png"
        assert np.asarray(Image.open(mask)).sum() == 255 * 33 * 33
    # Without stages nothing is drawn.
    plain = studio.generate(request(seed=5)).portraits[0]
    assert not (np.asarray(Image.open(plain.path))[8:40, 8:40] == RED).all()
    assert json.loads(plain.path.with_suffix(".json").read_text())["stages"] == []


def test_stages_run_in_order_and_a_derived_pipeline_shares_the_weights(
    studio, draw_box, monkeypatch
):
    monkeypatch.setitem(STAGES, "inpaint-box", Inpaint)
    result = studio.generate(request(stages=("draw-box", "inpaint-box")))
    pixels = np.asarray(Image.open(result.portraits[0].path))
    assert not (pixels[BOX[1] : BOX[3], BOX[0] : BOX[2]] == RED).all()  # painted over
    sidecar = json.loads(result.portraits[0].path.with_suffix(".json").read_text())
    assert sidecar["stages"] == ["draw-box", "inpaint-box"]
    assert sidecar["stage_notes"]["inpaint-box"] == [
        "inpainted with StableDiffusionInpaintPipeline"
    ]
    pipe, inpaint = studio.pipeline(), studio.host.derived("inpaint")
    assert inpaint.unet is pipe.unet and inpaint.vae is pipe.vae
    assert inpaint.text_encoder is pipe.text_encoder


def test_a_failing_stage_is_named_and_nothing_of_the_request_is_saved(
    studio, draw_box, monkeypatch
):
    monkeypatch.setitem(STAGES, "fail-on-2", lambda: FailOn(index=1))
    with pytest.raises(StageError) as failure:
        studio.generate(request(num_images=3, seed=10, stages=("draw-box", "fail-on-2")))
    assert str(failure.value) == (
        "stage 'fail-on-2' failed on image 2 of 3 (seed 11): the face is turned too far"
    )
    assert not studio.portraits_dir.exists() or not any(studio.portraits_dir.iterdir())
    # The lock is free again and a request without the failing stage goes through.
    assert len(studio.generate(request(stages=("draw-box",))).portraits) == 1


def test_a_programming_error_in_a_stage_is_named_too(studio, monkeypatch):
    class Broken:
        name = "broken"

        def run(self, given, resources):
            return given.image  # not a StageOutput

    monkeypatch.setitem(STAGES, "broken", Broken)
    with pytest.raises(
        StageError, match="stage 'broken' failed on image 1 of 1 .*not a StageOutput"
    ):
        studio.generate(request(stages=("broken",)))
    assert not studio.history()


@pytest.mark.parametrize("name", ["Swap", "face swap", "../x", ""])
def test_a_stage_name_must_be_usable_in_file_names(name):
    with pytest.raises(ValueError, match="lower-case letters, digits"):
        register_stage(name, FailOn)
    assert name not in STAGES


def test_an_unknown_stage_is_refused_before_anything_runs(studio, draw_box):
    with pytest.raises(StudioError, match="unknown stage 'unheard-of'; known stages: .*draw-box"):
        studio.generate(request(stages=("unheard-of",)))
    assert studio.host.model_set is None  # refused before the pipeline loaded


def test_the_portrait_command_takes_stages(studio, draw_box, capsys):
    argv = ["portrait", "--profile", "Ada", "--prompt", "a portrait", "--steps", "2"]
    assert main([*argv, "--stage", "draw-box"]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    sidecar = json.loads(Path(path).with_suffix(".json").read_text())
    assert sidecar["stages"] == ["draw-box"]
    assert main([*argv, "--stage", "nope"]) == 1
    assert "unknown stage 'nope'" in capsys.readouterr().err
