"""The Generate tab's attribute repair: the toggle reaches the studio, the per-attribute report
and the foundation images are shown beside the results."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pytest

from studio import webui_repair

pytestmark = pytest.mark.slow


def test_repair_shows_the_report_and_the_foundation_image(studio, ada):
    args = (studio, (), ada, "", "{subject}, red hair, round glasses", None, 1.0, 1, 5, 2)
    _, files, seeds, notes, report, foundations = webui_repair.generate(*args, "hair")
    assert seeds == [5] and "Likeness by" in notes
    assert report.splitlines()[0] == "**Seed 5** (foundation: separate)"  # named: no compare
    assert report.splitlines()[1].startswith("- hair: **repaired** (attention mask): asked for")
    ((foundation, caption),) = foundations
    assert caption == "seed 5" and Path(foundation).is_file()
    linked = json.loads(Path(foundation).with_suffix(".json").read_text())
    assert linked["foundation_of"] == Path(files[0]).name

    *_, report, foundations = webui_repair.generate(*args, "auto")
    assert report.splitlines()[0] == (
        "**Seed 5** (foundation: batched; checked on the previews at step 1)"
    )
    assert report.splitlines()[1].startswith("- hair: **could not check**: no face found")
    assert len(foundations) == 1

    *_, report, foundations = webui_repair.generate(*args, "off")
    assert report == "" and foundations == []
    with pytest.raises(gr.Error, match="--repair: unknown face attribute 'wings'"):
        webui_repair.generate(*args, "wings")
