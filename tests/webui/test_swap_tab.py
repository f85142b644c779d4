"""The Swap tab's handlers on the tiny set: face picker, swap with before/after, user errors."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image, ImageOps

from app import build_demo
from studio import webui_swap
from studio.outputs import read_provenance

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair(uploads, tmp_path_factory) -> str:
    """An upload holding two people side by side."""
    tiles = [
        ImageOps.fit(Image.open(uploads[name]).convert("RGB"), (200, 240))
        for name in ("person_b_1", "impostor_2")
    ]
    canvas = Image.new("RGB", (400, 240))
    for index, tile in enumerate(tiles):
        canvas.paste(tile, (200 * index, 0))
    path = tmp_path_factory.mktemp("gradio-upload") / "pair.png"
    canvas.save(path)
    return str(path)


def test_the_picker_shows_every_face_and_a_click_chooses_one(studio, pair):
    found = webui_swap.detect_faces(studio, pair)
    assert [caption for _, caption in found.gallery] == ["face 0", "face 1"]
    assert all(crop.shape == (128, 128, 3) for crop, _ in found.gallery)
    assert found.choices == ["0", "1", "all"] and found.summary.startswith("2 faces found")
    assert webui_swap.face_at(found.choices, 1) == "1"
    with pytest.raises(gr.Error, match="click a detected face first"):
        webui_swap.face_at(found.choices, None)


def test_a_swap_shows_before_and_after_and_is_saved_with_provenance(studio, ada, pair):
    shown = webui_swap.swap(studio, ada, pair, "all", "diffusion", 0.8, 3)
    assert shown.before == pair and shown.files == [shown.after]
    after = Path(shown.after)
    assert after.parent == studio.portraits_dir and read_provenance(after)["ai_generated"] == "true"
    assert Image.open(after).size == (400, 240)
    assert "Swapped face 0, 1 of 2 by **diffusion**" in shown.notes
    before = np.asarray(Image.open(pair).convert("RGB")).astype(int)
    assert np.abs(np.asarray(Image.open(after).convert("RGB")) - before).max() > 50


def test_user_mistakes_are_messages(studio, ada, uploads, pair, tmp_path):
    wall = tmp_path / "wall.png"
    Image.new("RGB", (160, 120), (90, 90, 90)).save(wall)
    with pytest.raises(gr.Error, match="upload a target photo first"):
        webui_swap.detect_faces(studio, None)
    with pytest.raises(gr.Error, match="no face found in wall.png"):
        webui_swap.detect_faces(studio, str(wall))
    with pytest.raises(gr.Error, match="upload a target photo first"):
        webui_swap.swap(studio, ada, None, "0", "diffusion", 0.8, 0)
    with pytest.raises(gr.Error, match="has no ArcFace embeddings .* use --method diffusion"):
        webui_swap.swap(studio, ada, pair, "0", "inswapper", 0.8, 0)
    with pytest.raises(gr.Error, match=r"--face 5: target photo pair.png has 2 faces"):
        webui_swap.swap(studio, ada, pair, "5", "diffusion", 0.8, 0)
    with pytest.raises(gr.Error, match="choose a profile"):
        webui_swap.swap(studio, None, pair, "0", "diffusion", 0.8, 0)


def test_the_app_has_the_swap_tab(studio):
    demo = build_demo(studio)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"tab-swap", "swap-target", "swap-faces", "swap-before", "swap-after"} <= ids
