"""The Generate tab's W+ section: its handlers on the tiny set, and its endpoint through
``gradio_client`` against the launched app."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from gradio_client import Client

from studio import webui, webui_wplus
from studio.orchestrator import Studio

NAMES = ("age", "smile", "glasses", "eye_openness")


def test_sliders_follow_the_model_sets_directions(studio, ui_settings):
    assert webui_wplus.edit_names(studio) == NAMES
    assert webui_wplus.edits_from(NAMES, [2, 0, -1.5, 0]) == (("age", 2.0), ("glasses", -1.5))
    assert "Preview edits" in webui_wplus.section_note(studio)
    assert webui_wplus.edit_names(Studio(ui_settings, "tiny-xl")) == ()  # no W+ adapter


def test_preview_shows_the_photo_and_the_edited_stylegan_face(studio, ada):
    photo, plain, report = webui_wplus.preview(studio, NAMES, ada, False, 5, 0, 0, 0, 0)
    assert Path(photo).is_file() and plain.shape == (256, 256, 3) and plain.dtype == np.uint8
    assert report == ""
    _, older, _ = webui_wplus.preview(studio, NAMES, ada, False, 5, 3, 0, 0, 0)
    assert not np.array_equal(plain, older)
    with pytest.raises(gr.Error, match="choose a profile"):
        webui_wplus.preview(studio, NAMES, None, False, 5, 0, 0, 0, 0)
    with pytest.raises(gr.Error, match="no profile named 'Nobody'"):
        webui_wplus.preview(studio, NAMES, "Nobody", False, 5, 0, 0, 0, 0)
    with pytest.raises(gr.Error, match="W\\+ refinement steps 0 is out of range"):
        webui_wplus.preview(studio, NAMES, ada, True, 0, 0, 0, 0, 0)


@pytest.mark.slow
def test_refining_stores_the_refined_wplus_and_reports_each_photo(studio, uploads):
    webui.create_profile(studio, "Rey", [uploads["person_b_1"]], True)
    before = studio.profile_wplus("Rey")
    _, refined, report = webui_wplus.preview(studio, NAMES, "Rey", True, 1, 0, 0, 0, 0)
    assert report.startswith("person_b_1.jpg: W+ refinement: 1/1 steps")
    after = studio.profile_wplus("Rey")
    assert after.shape == before.shape and not torch.equal(after, before)
    with studio.library() as library:
        photo = library.get("Rey").photos[0]
    assert photo.wplus[studio.wplus.key].refine_steps == 1
    _, again, _ = webui_wplus.preview(studio, NAMES, "Rey", False, 1, 0, 0, 0, 0)
    np.testing.assert_array_equal(again, refined)  # the refined W+ is what the profile keeps


@pytest.mark.slow
def test_generate_passes_the_sliders_as_edits(studio, ada):
    result = webui_wplus.generate(
        studio, NAMES, ada, "", "{subject}, test", None, 1.0, 1, 5, 2, 0.6, 2.0, -1.0, 0, 0
    )
    record = json.loads(Path(result.files[0]).with_suffix(".json").read_text())
    assert record["wplus"]["edits"] == [["age", 2.0], ["smile", -1.0]]
    assert record["wplus"]["scale"] == 0.6
    with pytest.raises(gr.Error, match="edit age amount 9.0 is out of range"):
        webui_wplus.generate(
            studio, NAMES, ada, "", "{subject}", None, 1.0, 1, 5, 2, 1.0, 9.0, 0, 0, 0
        )


def test_wplus_preview_endpoint(served, ada):
    client = Client(served, verbose=False)
    photo, preview, _ = client.predict(ada, False, 5, 1.0, 0, 0, 0, api_name="/wplus_preview")
    assert Path(photo).is_file() and Path(preview).is_file()
