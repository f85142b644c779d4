"""The Generate tab's attribute repair: the toggle, the per-attribute report and the foundation
images beside the results (handlers are plain functions; :func:`repair_controls` and
:func:`repair_results` build the components where ``app.py`` places them)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import gradio as gr

from studio import webui, webui_wplus
from studio.orchestrator import Studio
from studio.repair import REPAIR_AUTO, REPAIR_OFF

GENERATE_INPUTS = 8
"""The Generate tab's own inputs, profile to steps, before the repair choice."""
CHOICES = (REPAIR_OFF, REPAIR_AUTO, "hair", "glasses", "hair,glasses")
"""Offered in the menu; any comma list of attributes may be typed."""


def repair_controls() -> gr.Dropdown:
    """The repair toggle: off, auto (repair the prompt's attributes found missing) or names."""
    return gr.Dropdown(
        list(CHOICES),
        value=REPAIR_OFF,
        allow_custom_value=True,
        label="Attribute repair: off, auto, or attributes to repair (hair,glasses)",
        elem_id="gen-repair",
    )


def repair_results() -> tuple[gr.Markdown, gr.Gallery]:
    """The per-attribute report and the foundation images (identity off) beside the results."""
    report = gr.Markdown(elem_id="gen-repair-report")
    foundations = gr.Gallery(
        label="Foundation images (identity off): where repaired attributes came from",
        columns=4,
        object_fit="contain",
        elem_id="gen-foundations",
    )
    return report, foundations


def generate(
    studio: Studio,
    names: Sequence[str],
    *inputs,
    progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's convention)
):
    """:func:`studio.webui_wplus.generate` with the repair choice as the input after ``steps``
    (before the W+ section's); the generated portraits, then the report and the foundation images
    read from their sidecars."""
    given, repair, wplus = (
        inputs[:GENERATE_INPUTS],
        inputs[GENERATE_INPUTS],
        inputs[GENERATE_INPUTS + 1 :],
    )
    generated = webui_wplus.generate(
        studio, names, *given, *wplus, repair=repair or REPAIR_OFF, progress=progress
    )
    report, foundations = repair_view(generated.files)
    return (*generated, report, foundations)


def repair_view(files: Sequence[str]) -> tuple[str, webui.Gallery]:
    """Markdown of each portrait's per-attribute report, and its foundation image."""
    lines, gallery = [], []
    for file in files:
        path = Path(file)
        sidecar = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        repair, seed = sidecar.get("repair"), sidecar.get("seed")
        if not repair:
            continue
        checked = repair.get("check_step")
        when = "" if checked is None else f"; checked on the previews at step {checked}"
        lines.append(f"**Seed {seed}** (foundation: {repair['foundation_mode']}{when})")
        for check in repair["attributes"]:
            mask = f" ({check['mask']} mask)" if check.get("mask") else ""
            lines.append(f"- {check['attribute']}: **{check['status']}**{mask}: {check['detail']}")
        if repair.get("foundation_image"):
            gallery.append((str(path.with_name(repair["foundation_image"])), f"seed {seed}"))
    return "\n".join(lines), gallery
