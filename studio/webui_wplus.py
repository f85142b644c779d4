"""The Generate tab's W+ section: a slider per edit direction, the W+ strength, and a StyleGAN
preview of the edited face beside the profile's photo; optionally the profile's W+ is refined
first by latent optimisation against its photos (with a progress bar) and stored refined.

:func:`build_wplus_section` lays it out (hidden on a model set without the W+ adapter) and
:func:`wire` binds its events; :func:`generate` is the Generate button's handler with the
section's values, :func:`preview` the preview's. Handlers are plain functions of a
:class:`~studio.orchestrator.Studio`, as in :mod:`studio.webui`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr
import numpy as np

from studio import webui
from studio.limits import MAX_EDIT_AMOUNT, MAX_REFINE_STEPS, MAX_WPLUS_SCALE
from studio.orchestrator import Studio

DEFAULT_WPLUS_SCALE = 1.0
"""The adapter's own strength; the slider at this value asks for nothing."""
EDIT_STEP = 0.25
DEFAULT_REFINE_STEPS = 20


@dataclass(frozen=True)
class WPlusSection:
    """The section's components; ``names`` are the directions, one slider each, in order."""

    names: tuple[str, ...]
    photo: gr.Image
    preview: gr.Image
    scale: gr.Slider
    sliders: tuple[gr.Slider, ...]
    refine: gr.Checkbox
    refine_steps: gr.Slider
    report: gr.Markdown
    run: gr.Button

    @property
    def inputs(self) -> list[gr.components.Component]:
        """What the Generate button takes after its own inputs: the W+ strength, the sliders."""
        return [self.scale, *self.sliders]


def edit_names(studio: Studio) -> tuple[str, ...]:
    """The directions whose files are on this machine (none without the W+ adapter)."""
    if not studio.wplus.in_set:
        return ()
    return studio.wplus.directions.names(local_only=True)


def edits_from(names: Sequence[str], amounts: Sequence[float]) -> tuple[tuple[str, float], ...]:
    """The sliders' values as a request's edits; sliders at 0 ask for nothing."""
    return tuple((name, float(a)) for name, a in zip(names, amounts, strict=True) if a)


def section_note(studio: Studio) -> str:
    """What the section says above its sliders."""
    if studio.wplus.ready:
        return (
            "Move the person's StyleGAN W+ along a direction (age, smile, …); *Preview edits* "
            "renders the edited face with StyleGAN, *Generate* uses it through the W+ adapter."
        )
    return (
        f"The W+ files of **{studio.model_set.name}** are not on this machine: place "
        "`e4e_ffhq_encode.pt` and `wplus_adapter.bin` as `python -m studio models list` shows "
        "(or run `python -m studio models fetch "
        f"{studio.model_set.name} --with-optional` on a connected machine)."
    )


def preview(
    studio: Studio,
    names: Sequence[str],
    profile: str | None,
    refine: bool,
    refine_steps: float,
    *amounts: float,
    progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's convention)
) -> tuple[str | None, np.ndarray | None, str]:
    """The profile's first accepted photo, the StyleGAN rendering of its edited W+, and the
    refinement's report when ``refine`` asked to refine the stored W+ first."""
    if not profile:
        raise gr.Error("choose a profile first")
    reports: tuple[str, ...] = ()
    with webui.user_errors():
        with studio.library() as library:
            found = library.get(profile)
        if refine:
            reports = studio.refine_wplus(
                profile,
                int(refine_steps),
                on_progress=lambda step, total, loss: progress(
                    (step, total), desc=f"refining W+ (loss {loss:.4f})"
                ),
            )
        image = studio.wplus_preview(profile, edits_from(names, amounts))
    photo = str(found.accepted[0].crop_path) if found.accepted else None
    return photo, image, "\n\n".join(r.replace("\n", "; ") for r in reports)


def generate(
    studio: Studio,
    names: Sequence[str],
    profile: str | None,
    style: str | None,
    prompt: str,
    pose: str | None,
    identity_scale: float,
    num_images: float,
    seed: float | None,
    steps: float,
    wplus_scale: float = DEFAULT_WPLUS_SCALE,
    *amounts: float,
    repair: str = "off",
    progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's convention)
) -> webui.Generated:
    """:func:`studio.webui.generate` with the section's W+ strength and edits (and ``repair``,
    :mod:`studio.repair`'s choice)."""
    scale = None if wplus_scale is None or wplus_scale == DEFAULT_WPLUS_SCALE else wplus_scale
    return webui.generate(
        studio,
        profile,
        style,
        prompt,
        pose,
        identity_scale,
        num_images,
        seed,
        steps,
        progress,
        edits=edits_from(names, amounts),
        wplus_scale=scale if studio.wplus.in_set else None,
        repair=repair,
    )


def build_wplus_section(studio: Studio) -> WPlusSection:
    """Lay out the section where it is called (the Generate tab's controls)."""
    names = edit_names(studio)
    with gr.Accordion(
        "W+ identity and edits (StyleGAN)", visible=studio.wplus.in_set, elem_id="gen-wplus"
    ):
        gr.Markdown(section_note(studio))
        with gr.Row():
            photo = gr.Image(label="Profile photo", interactive=False, elem_id="gen-wplus-photo")
            shown = gr.Image(
                label="StyleGAN preview, edited", interactive=False, elem_id="gen-wplus-preview"
            )
        scale = gr.Slider(
            0,
            MAX_WPLUS_SCALE,
            value=DEFAULT_WPLUS_SCALE,
            step=0.05,
            label="W+ strength",
            elem_id="gen-wplus-scale",
        )
        sliders = tuple(
            gr.Slider(
                -MAX_EDIT_AMOUNT,
                MAX_EDIT_AMOUNT,
                value=0,
                step=EDIT_STEP,
                label=name.replace("_", " "),
                elem_id=f"gen-edit-{name}",
            )
            for name in names
        )
        with gr.Row():
            refine = gr.Checkbox(
                False,
                label="Refine the W+ first (latent optimisation against the photos; slow)",
                elem_id="gen-wplus-refine",
            )
            refine_steps = gr.Slider(
                1,
                MAX_REFINE_STEPS,
                value=DEFAULT_REFINE_STEPS,
                step=1,
                label="Refinement steps",
                elem_id="gen-wplus-refine-steps",
            )
        run = gr.Button("Preview edits", elem_id="gen-wplus-run")
        report = gr.Markdown(elem_id="gen-wplus-report")
    return WPlusSection(names, photo, shown, scale, sliders, refine, refine_steps, report, run)


def wire(
    section: WPlusSection, studio: Studio, profile: gr.Dropdown, queue: dict[str, Any]
) -> None:
    """Bind the preview to its button and to a new profile; ``queue`` is the GPU queue's."""
    handler = partial(preview, studio, section.names)
    inputs = [profile, section.refine, section.refine_steps, *section.sliders]
    outputs = [section.photo, section.preview, section.report]
    section.run.click(handler, inputs, outputs, api_name="wplus_preview", **queue)
    if studio.wplus.ready:
        profile.input(handler, inputs, outputs, api_visibility="private", **queue)
