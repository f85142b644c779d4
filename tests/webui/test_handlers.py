"""The web UI's handlers, called directly as plain functions of a tiny-set studio."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import gradio as gr
import pytest

from studio import webui
from studio.profiles.types import CONSENT_STATEMENT


def _rows(view: webui.ProfileView) -> dict[str, list[str]]:
    assert view.rows and all(len(row) == len(webui.VERDICT_HEADERS) for row in view.rows)
    return {row[0]: row[1:] for row in view.rows}


def _library_state(studio) -> tuple[list[str], list[str]]:
    """Profile names and the library folder's entries (to see that nothing was written)."""
    root = studio.settings.profiles_dir
    return webui.profile_names(studio), sorted(p.name for p in root.iterdir())


def test_a_profile_shows_verdicts_reasons_and_crops_through_its_edits(studio, uploads):
    files = [uploads[k] for k in ("person_a_1", "person_a_2", "impostor_1", "empty")]

    view = webui.create_profile(studio, "Bea", files, True)

    rows = _rows(view)
    assert rows["person_a_1.jpg"][0] == rows["person_a_2.jpg"][0] == "yes"
    assert float(rows["person_a_1.jpg"][2]) > 0.363
    assert rows["impostor_1.jpg"][0] == "no"
    assert "does not match the other photos" in rows["impostor_1.jpg"][1]
    assert rows["empty.jpg"][:2] == ["not kept", "file is empty (0 bytes); choose another photo"]
    assert sorted(caption for _, caption in view.crops) == ["person_a_1.jpg", "person_a_2.jpg"]
    assert all(Path(crop).is_file() and crop.endswith(".png") for crop, _ in view.crops)
    assert view.name == "Bea" and "2 of 3 photos accepted" in view.summary
    assert "Bea" in webui.profile_names(studio)

    impostor = next(stored for file, stored in view.photos if file == "impostor_1.jpg")
    view = webui.remove_photos(studio, "bea", [impostor])
    assert sorted(_rows(view)) == ["person_a_1.jpg", "person_a_2.jpg"]
    view = webui.add_photos(studio, "Bea", [uploads["impostor_2"]])
    assert _rows(view)["impostor_2.jpg"][0] == "no" and len(view.crops) == 2
    assert webui.show_profile(studio, "Bea").rows == view.rows

    profile_dir = studio.settings.profiles_dir
    before = {p.name for p in profile_dir.iterdir()}
    view = webui.delete_profile(studio, "Bea")
    assert "Deleted profile **Bea**" in view.summary and view.name is None and not view.rows
    assert "Bea" not in webui.profile_names(studio)
    assert len(before - {p.name for p in profile_dir.iterdir()}) == 1  # its folder


def test_profile_mistakes_raise_gr_error_and_write_nothing(studio, uploads, ada):
    before = _library_state(studio)
    photos = [uploads["person_b_1"], uploads["person_b_2"]]

    with pytest.raises(gr.Error, match="consent") as error:
        webui.create_profile(studio, "Cleo", photos, False)
    assert CONSENT_STATEMENT in error.value.message
    with pytest.raises(gr.Error, match="enter a name"):
        webui.create_profile(studio, "  ", photos, True)
    with pytest.raises(gr.Error, match="upload one or more photos"):
        webui.create_profile(studio, "Cleo", [], True)
    with pytest.raises(gr.Error, match="already exists|taken|exists"):
        webui.create_profile(studio, "ada", photos, True)
    with pytest.raises(gr.Error, match="no usable photo") as error:
        webui.create_profile(studio, "Cleo", [uploads["empty"], uploads["notes"]], True)
    assert "empty.jpg: file is empty" in error.value.message
    assert str(Path(uploads["empty"]).parent) not in error.value.message  # no temp folders
    with pytest.raises(gr.Error, match="nothing was added"):
        webui.add_photos(studio, "Ada", [uploads["notes"]])
    with pytest.raises(gr.Error, match="no profile named"):
        webui.add_photos(studio, "Nobody", photos)
    with pytest.raises(gr.Error, match="choose the photos"):
        webui.remove_photos(studio, "Ada", [])
    with pytest.raises(gr.Error, match="choose the profile"):
        webui.delete_profile(studio, None)

    assert _library_state(studio) == before
    assert len(webui.show_profile(studio, "Ada").rows) == 2


def test_generate_with_a_style_scores_saves_and_lists_in_history(studio, ada):
    text, identity = webui.style_details(studio, "film-noir")
    assert (
        text.startswith("**Film noir**") and identity == studio.styles["film-noir"].identity_scale
    )

    result = webui.generate(studio, ada, "film-noir", "rain", None, identity, 2, 3, 4)

    assert len(result.gallery) == len(result.files) == 2 and sorted(result.seeds) == [3, 4]
    scores = []
    for (path, caption), file, seed in zip(result.gallery, result.files, result.seeds, strict=True):
        match = re.fullmatch(rf"(\d\.\d{{3}}) · seed {seed}( · no face found)?", caption)
        assert match and path == file, caption
        scores.append(float(match[1]))
        sidecar = json.loads(Path(file).with_suffix(".json").read_text())
        assert Path(file).suffix == ".png" and Path(file).is_file()
        assert sidecar["identity"]["similarity"] == pytest.approx(scores[-1], abs=5e-4)
        assert (sidecar["profile"], sidecar["style"], sidecar["seed"]) == ("Ada", "film-noir", seed)
        assert sidecar["steps"] == 4 and "rain" in sidecar["prompt"]
    assert scores == sorted(scores, reverse=True)
    assert "Likeness by" in result.notes

    assert webui.seed_at(result.seeds, 1) == result.seeds[1]
    with pytest.raises(gr.Error, match="click a result"):
        webui.seed_at(result.seeds, None)

    gallery, records = webui.history(studio)
    listed = [path for path, _ in gallery]
    assert set(result.files) <= set(listed)
    index = listed.index(result.files[0])
    assert gallery[index][1].startswith("Ada · film-noir · seed ")
    assert webui.history_details(records, index)["image"] == Path(result.files[0]).name
    assert webui.history_details(records, None) == {}


def test_generate_mistakes_raise_gr_error_and_save_nothing(studio, ada, uploads):
    saved = set((studio.settings.output_dir / "portraits").glob("*"))
    args = {"identity_scale": 1.0, "num_images": 1, "seed": 0, "steps": 4}
    cases = [
        ((None, "film-noir", "", None), "choose a profile"),
        ((ada, "", "  ", None), "choose a style or write a prompt"),
        (("Nobody", "film-noir", "", None), "no profile named"),
        ((ada, "film-noir", "", uploads["notes"]), "pose reference"),
    ]
    for (profile, style, prompt, pose), message in cases:
        with pytest.raises(gr.Error, match=message):
            webui.generate(studio, profile, style, prompt, pose, **args)
    with pytest.raises(gr.Error, match="seed"):
        webui.generate(studio, ada, "film-noir", "", None, 1.0, 1, None, 4)
    with pytest.raises(gr.Error, match="1 to 8 images"):
        webui.generate(studio, ada, "film-noir", "", None, 1.0, 9, 0, 4)
    with pytest.raises(gr.Error, match="identity strength"):
        webui.generate(studio, ada, "film-noir", "", None, 2.0, 1, 0, 4)
    assert set((studio.settings.output_dir / "portraits").glob("*")) == saved


def _wait(jobs: webui.TrainingJobs, profile: str, until, timeout: float = 180.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = jobs.get(profile)
        if until(job):
            return webui.training_view(jobs, profile)[0]
        time.sleep(0.1)
    raise AssertionError(f"training of {profile} timed out: {webui.training_view(jobs, profile)}")


@pytest.mark.slow
def test_training_runs_in_the_background_with_live_curves(studio, uploads):
    webui.create_profile(studio, "Dana", [uploads["person_b_1"], uploads["person_b_2"]], True)
    jobs = webui.TrainingJobs(studio, validate_every=2, validation_images=1)
    assert jobs.flags["validation_images"] == 1
    assert "No training of **Dana**" in webui.training_view(jobs, "Dana")[0]

    status, _, _ = webui.start_training(jobs, "Dana", 2)
    assert status.startswith("Training **Dana**")
    status = _wait(jobs, "Dana", lambda job: not job.running)

    _, loss, similarity = webui.training_view(jobs, "Dana")
    assert status.startswith("Finished **Dana** after 2 steps"), status
    assert list(loss["step"]) == [1, 2] and loss["loss"].notna().all()
    assert list(similarity["step"]) == [2]
    with studio.library() as lib:
        assert [lora.name for lora in lib.get("Dana").loras] == [
            jobs.get("Dana").result.profile_lora
        ]


@pytest.mark.slow
def test_training_cancels_and_resumes(studio, uploads, ada):
    webui.create_profile(studio, "Eli", [uploads["person_a_1"], uploads["person_a_2"]], True)
    jobs = webui.TrainingJobs(studio, validate_every=0)
    with pytest.raises(gr.Error, match="no training run to resume"):
        webui.resume_training(jobs, "Eli", 10)
    with pytest.raises(gr.Error, match="nothing to cancel"):
        webui.cancel_training(jobs, "Eli")
    with pytest.raises(gr.Error, match="choose the profile"):
        webui.start_training(jobs, None, 10)

    webui.start_training(jobs, "Eli", 1000)
    _wait(jobs, "Eli", lambda job: job.progress)
    with pytest.raises(gr.Error, match="'Eli' is running"):
        webui.start_training(jobs, ada, 10)
    assert webui.cancel_training(jobs, "Eli")[0].startswith("Cancelling **Eli**")
    status = _wait(jobs, "Eli", lambda job: not job.running)
    stopped = jobs.get("Eli").result.step
    assert status.startswith(f"Cancelled **Eli** at step {stopped}/1000"), status
    assert jobs.get("Eli").result.status == "interrupted"

    webui.resume_training(jobs, "Eli", stopped + 1)
    status = _wait(jobs, "Eli", lambda job: not job.running)
    assert status.startswith(f"Finished **Eli** after {stopped + 1} steps"), status
    assert [p.step for p in jobs.get("Eli").progress] == [stopped + 1]

    webui.resume_training(jobs, "Eli", 1000)  # what the server does when it exits
    _wait(jobs, "Eli", lambda job: job.progress)
    jobs.stop_all()
    assert jobs.get("Eli").result.status == "interrupted"
    assert len(studio.training_runs("Eli")) == 1
