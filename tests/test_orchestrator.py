"""The studio orchestrator end to end on the tiny sets, with the real face models."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic_models import arcface_like_model

from studio.cli import main
from studio.errors import StudioError
from studio.orchestrator import PortraitRequest
from studio.outputs import read_provenance
from studio.settings import load_settings
from studio.stages import STAGES, StageInput, StageOutput, StageResources
from studio.styles import load_styles

pytestmark = pytest.mark.slow


class PastePhoto:
    """A stand-in later stage: replaces even seeds' images with a real photo of the person."""

    name = "paste-photo"

    def __init__(self, photo):
        self.photo = Image.open(photo).convert("RGB")

    def run(self, given: StageInput, resources: StageResources) -> StageOutput:
        if given.seed % 2:
            return StageOutput(given.image)
        return StageOutput(self.photo)


def test_portraits_are_scored_ranked_saved_and_listed_in_history(studio, faces_dir, monkeypatch):
    monkeypatch.setitem(STAGES, "paste-photo", lambda: PastePhoto(faces_dir / "person_a_1.jpg"))
    result = studio.generate(
        PortraitRequest(
            profile="Ada",
            style="studio-headshot",
            num_images=3,
            seed=1,
            steps=2,
            stages=("paste-photo",),
        )
    )
    # Seed 2 went through the stage and shows Ada; seeds 1 and 3 are tiny-model noise.
    best, *rest = result.portraits
    assert best.seed == 2
    assert best.score.same_person and best.score.faces == 1
    assert all(p.score.similarity == 0.0 and p.score.faces == 0 for p in rest)
    assert result.scorer != studio.model_set.identity_encoder  # a held-out recognizer
    assert "studio headshot" in result.prompt.lower() and "a person" in result.prompt
    assert any("no sd15 LoRA" in note for note in result.notes)

    sidecar = json.loads(best.path.with_suffix(".json").read_text())
    assert sidecar["profile"] == "Ada" and sidecar["style"] == "studio-headshot"
    assert sidecar["stages"] == ["paste-photo"] and sidecar["identity"]["same_person"] is True
    assert read_provenance(best.path)["ai_generated"] == "true"
    history = studio.history()
    assert {item.path for item in history} == {p.path for p in result.portraits}
    assert history[0].record["model_set"] == "tiny"


def test_prompt_places_the_subject_and_the_trained_lora_is_used(studio):
    identity = studio.identity("Ada")
    prompt, _, knobs = studio.prompt_for(
        PortraitRequest("Ada", prompt="portrait of {subject} on a beach"), identity
    )
    assert prompt == "portrait of a person on a beach"
    prompt, _, _ = studio.prompt_for(PortraitRequest("Ada", prompt="oil painting"), identity)
    assert prompt == "a person, oil painting"
    assert knobs["width"] <= 64  # the tiny set caps style sizes

    trained = studio.train("Ada", steps=2, validate_every=0)
    assert trained.profile_lora and studio.training_runs("Ada") == [trained.run_dir]
    result = studio.generate(PortraitRequest("Ada", style="anime", steps=2))
    assert "ohwx person" in result.prompt and not result.notes
    assert [spec.adapter for spec in studio.host.loras] == ["identity"]
    plain = studio.generate(PortraitRequest("Ada", style="anime", steps=2, use_lora=False))
    assert "ohwx" not in plain.prompt and studio.host.loras == ()


def test_pose_reference_and_identity_strength_change_the_image(studio, faces_dir, tmp_path):
    def image(**kwargs):
        request = PortraitRequest("Ada", prompt="a portrait", steps=2, **kwargs)
        return np.asarray(Image.open(studio.generate(request).portraits[0].path))

    plain = image()
    assert not np.array_equal(plain, image(pose=faces_dir / "impostor_1.jpg"))
    assert not np.array_equal(plain, image(identity_scale=0.0))
    with pytest.raises(StudioError, match="pose reference: .*CREDITS.md.*JPEG or PNG"):
        image(pose=faces_dir / "CREDITS.md")
    Image.new("RGB", (200, 200), "gray").save(tmp_path / "wall.png")
    with pytest.raises(StudioError, match="wall.png: no face found"):
        image(pose=tmp_path / "wall.png")
    assert studio.pipeline() is studio.pipeline()  # loaded once, reused


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (PortraitRequest("Ada"), "style or write a prompt"),
        (PortraitRequest("Ada", style="noir"), "did you mean 'film-noir'"),
        (PortraitRequest("Ada", prompt="x", num_images=0), "number of images"),
        (PortraitRequest("Ada", prompt="x", identity_scale=3), "identity strength"),
        (PortraitRequest("Nobody", prompt="x"), "no profile named 'Nobody'"),
    ],
)
def test_mistakes_are_reported_with_the_fix(studio, request_, message):
    with pytest.raises(StudioError, match=message):
        studio.generate(request_)


class OutOfMemoryOnce:
    """Stands in for a GPU that runs out of memory (impossible on this CPU machine)."""

    def __init__(self, pipe, failures: int):
        self.pipe, self.failures, self.offloaded = pipe, failures, False
        self.scheduler, self.wplus_schedule = pipe.scheduler, pipe.wplus_schedule

    def __call__(self, **kwargs):
        if self.failures:
            self.failures -= 1
            raise torch.OutOfMemoryError("CUDA out of memory")
        return self.pipe(**kwargs)

    def enable_model_cpu_offload(self):
        self.offloaded = True


def test_out_of_memory_retries_once_with_offload_then_reports(studio):
    request = PortraitRequest("Ada", prompt="a portrait", steps=2)
    studio.generate(request)
    flaky = OutOfMemoryOnce(studio.pipeline(), failures=1)
    studio.host._hosted.pipe = flaky
    result = studio.generate(request)
    assert flaky.offloaded and len(result.portraits) == 1
    assert any("ran out of memory" in note for note in result.notes)

    studio.host._hosted.pipe = OutOfMemoryOnce(flaky.pipe, failures=2)
    with pytest.raises(StudioError, match="out of memory even with CPU offload"):
        studio.generate(request)


def test_switching_model_set_unloads_the_previous_pipeline(studio, tiny_env, faces_dir, tmp_path):
    studio.generate(PortraitRequest("Ada", prompt="a portrait", steps=2))
    sd15 = studio.pipeline()
    studio.settings = load_settings(weights={"arcface": str(arcface_like_model_file(tmp_path))})
    studio.use_models("tiny-xl")
    assert studio.host.model_set is None and studio.model_set.family == "sdxl"
    # SDXL (InstantID): the keypoint condition comes from the profile's own photo.
    result = studio.generate(PortraitRequest("Ada", style="business", steps=2))
    assert studio.pipeline() is not sd15 and len(result.portraits) == 1
    assert studio.identity("Ada").encoder == "arcface"


def arcface_like_model_file(tmp_path):
    path = tmp_path / "w600k_r50.onnx"
    arcface_like_model(path)
    return path


def test_portrait_command_prints_ranked_portraits(studio, capsys):
    code = main(
        [
            "portrait",
            "--profile",
            "Ada",
            "--style",
            "watercolor",
            "--n",
            "2",
            "--steps",
            "2",
            "--seed",
            "7",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "likeness by" in out and "seed 7" in out and "seed 8" in out
    assert main(["portrait", "--list-styles"]) == 0
    assert "film-noir" in capsys.readouterr().out
    assert main(["portrait", "--profile", "Ada", "--style", "nope"]) == 1
    assert "unknown style 'nope'" in capsys.readouterr().err


def test_a_portrait_asked_for_while_a_lora_trains_is_refused(studio):
    started, release = threading.Event(), threading.Event()

    def hold(progress):
        started.set()
        release.wait(60)

    kwargs = {"steps": 2, "validate_every": 0, "on_progress": hold}
    trainer = threading.Thread(target=studio.train, args=("Ada",), kwargs=kwargs)
    trainer.start()
    try:
        assert started.wait(120)
        with pytest.raises(StudioError, match="a LoRA is training"):
            studio.generate(PortraitRequest("Ada", prompt="a portrait", steps=2))
    finally:
        release.set()
        trainer.join(120)
    assert studio.generate(PortraitRequest("Ada", prompt="a portrait", steps=2)).portraits


def test_a_style_file_brings_its_own_lora_and_pose(studio, faces_dir):
    """Adding a preset is adding a file; its style LoRA stacks on the identity LoRA."""
    style_lora = studio.train("Ada", steps=2, validate_every=0, lora_name="style").run_dir
    studio.train("Ada", steps=2, validate_every=0, lora_name="identity")
    folder = studio.settings.data_dir / "styles"
    (folder / "poses").mkdir(parents=True)
    shutil.copy(faces_dir / "impostor_2.jpg", folder / "poses" / "turned.jpg")
    preset = {
        "schema": 1,
        "title": "Mine",
        "prompt": "a portrait of {subject}, my look",
        "negative_prompt": "",
        "steps": 2,
        "guidance": 5.0,
        "width": 64,
        "height": 64,
        "identity_scale": 1.0,
        "pose": "turned.jpg",
        "lora": {"path": str(style_lora / "pytorch_lora_weights.safetensors"), "scale": 0.5},
    }
    (folder / "mine.json").write_text(json.dumps(preset))
    studio.styles = load_styles(user_dir=folder)

    portrait = studio.generate(PortraitRequest("Ada", style="mine")).portraits[0]
    assert [(s.adapter, s.scale) for s in studio.host.loras] == [
        ("identity", 1.0),
        ("style", 0.5),
    ]
    sidecar = json.loads(portrait.path.with_suffix(".json").read_text())
    assert sidecar["style_lora"].endswith("pytorch_lora_weights.safetensors")
    assert sidecar["pose"].endswith("turned.jpg") and "ohwx person" in sidecar["prompt"]
    without = studio.generate(PortraitRequest("Ada", style="mine", use_lora=False)).portraits[0]
    assert [s.adapter for s in studio.host.loras] == ["style"]
    assert not np.array_equal(
        np.asarray(Image.open(portrait.path)), np.asarray(Image.open(without.path))
    )
