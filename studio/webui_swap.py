"""The web UI's Swap tab: a profile's face into an uploaded photo.

Plain handlers (:func:`detect_faces`, :func:`face_at`, :func:`swap`) and the tab's builder
(:func:`build_swap_tab`), which ``app.py`` calls inside its tabs. Upload a target photo, pick a
detected face (or all of them), choose the method and strength, and see the photo before and
after side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
import numpy as np

from studio.limits import MAX_SEED
from studio.orchestrator import Studio
from studio.swap.diffuse import crop_for_diffusion
from studio.swap.service import target_faces
from studio.swap.targets import ALL, load_target
from studio.swap.types import DEFAULT_STRENGTH, METHODS, SwapRequest
from studio.webui import profile_names, user_errors

THUMBNAIL = 128
"""Side of a detected face's thumbnail in the picker."""
METHOD_LABELS = (
    ("Diffusion (any profile, high resolution)", "diffusion"),
    ("inswapper (ArcFace profiles; non-commercial model)", "inswapper"),
)


class FacePicker(NamedTuple):
    """The detected faces of a target photo: thumbnails with captions, the face menu."""

    gallery: list[tuple[np.ndarray, str]]
    choices: list[str]
    summary: str


class Swapped(NamedTuple):
    """The photo before and after, the file to download, notes."""

    before: str
    after: str
    files: list[str]
    notes: str


def detect_faces(studio: Studio, target: str | None) -> FacePicker:
    """Every face of the uploaded photo, largest first, to pick from."""
    if not target:
        raise gr.Error("upload a target photo first")
    with user_errors(target):
        image = load_target(target)
        faces = target_faces(studio, image)
    if not faces:
        raise gr.Error(
            f"no face found in {Path(target).name}; use a photo with a clearly visible face"
        )
    gallery = [
        (crop_for_diffusion(image, face, THUMBNAIL).image, f"face {index}")
        for index, face in enumerate(faces)
    ]
    count = f"{len(faces)} face" + ("s" if len(faces) > 1 else "")
    summary = f"{count} found, largest first: click one, or choose **all**."
    return FacePicker(gallery, [str(i) for i in range(len(faces))] + [ALL], summary)


def face_at(choices: Sequence[str], index: int | None) -> str:
    """The face menu's value for the clicked thumbnail."""
    if index is None or not 0 <= index < len(choices) - 1:
        raise gr.Error("click a detected face first")
    return choices[index]


def swap(
    studio: Studio,
    profile: str | None,
    target: str | None,
    face: str | None,
    method: str,
    strength: float,
    seed: float | None,
    refine: bool = False,
    progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's convention)
) -> Swapped:
    """Swap the profile's face into the target photo and save it to the history."""
    if not target:
        raise gr.Error("upload a target photo first")
    if seed is None:
        raise gr.Error(f"enter a seed from 0 to {MAX_SEED}")
    request = SwapRequest(
        profile=profile or "",
        target=Path(target),
        face=face or "0",
        method=method,
        strength=float(strength),
        refine=bool(refine),
        seed=int(seed),
    )
    with user_errors(target):
        result = studio.swap(request)
    faces = ", ".join(map(str, result.faces))
    notes = [f"Swapped face {faces} of {result.faces_found} by **{result.method}**.", *result.notes]
    return Swapped(target, str(result.path), [str(result.path)], "\n\n".join(notes))


def build_swap_tab(studio: Studio, *, gpu: dict[str, Any]) -> None:
    """The Swap tab, inside the caller's ``gr.Tabs``; ``gpu`` are the GPU queue's event options."""
    private = {"api_visibility": "private"}
    with gr.Tab("Swap", elem_id="tab-swap") as tab:
        gr.Markdown(
            "Put a profile's face into a photo. **Diffusion** repaints the face at the model's "
            "resolution with the identity adapter and keeps the photo's pose; **inswapper** "
            "needs a profile made with ArcFace and insightface's non-commercial model."
        )
        with gr.Row():
            with gr.Column(scale=1):
                profile = gr.Dropdown(
                    profile_names(studio),
                    value=None,
                    label="Profile",
                    allow_custom_value=True,
                    elem_id="swap-profile",
                )
                target = gr.Image(
                    type="filepath",
                    label="Target photo",
                    sources=["upload", "clipboard"],
                    elem_id="swap-target",
                )
                picker = gr.Gallery(
                    label="Detected faces: click one",
                    columns=6,
                    height="auto",
                    fit_columns=False,
                    elem_id="swap-faces",
                )
                summary = gr.Markdown(elem_id="swap-summary")
                face = gr.Dropdown(["0", ALL], value="0", label="Face", elem_id="swap-face")
                method = gr.Radio(
                    list(METHOD_LABELS), value=METHODS[0], label="Method", elem_id="swap-method"
                )
                strength = gr.Slider(
                    0.05,
                    1.0,
                    value=DEFAULT_STRENGTH,
                    step=0.05,
                    label="Strength (diffusion)",
                    elem_id="swap-strength",
                )
                refine = gr.Checkbox(
                    label="Refine an inswapper result by diffusion", elem_id="swap-refine"
                )
                seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
                run = gr.Button("Swap", variant="primary", elem_id="swap-run")
            with gr.Column(scale=2):
                with gr.Row():
                    before = gr.Image(label="Before", interactive=False, elem_id="swap-before")
                    after = gr.Image(label="After", interactive=False, elem_id="swap-after")
                notes = gr.Markdown(elem_id="swap-notes")
                files = gr.File(label="Download", interactive=False, elem_id="swap-files")
        choices = gr.State([])

    def _picked(found: FacePicker) -> tuple:
        return (
            found.gallery,
            found.summary,
            gr.Dropdown(choices=found.choices, value="0"),
            found.choices,
        )

    def _clicked(menu: list[str], evt: gr.SelectData) -> str:
        return face_at(menu, evt.index)

    tab.select(lambda: gr.Dropdown(choices=profile_names(studio)), None, profile, **private)
    target.upload(
        lambda path: _picked(detect_faces(studio, path)),
        target,
        [picker, summary, face, choices],
        api_name="swap_faces",
    )
    picker.select(_clicked, choices, face, **private)
    run.click(
        partial(swap, studio),
        [profile, target, face, method, strength, seed, refine],
        [before, after, files, notes],
        api_name="swap",
        **gpu,
    )
