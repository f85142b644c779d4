"""The web UI's handlers: plain functions of a :class:`~studio.orchestrator.Studio`.

Each returns plain data (table rows, image paths with captions, markdown, data frames) that
``app.py`` wires to Gradio components. User mistakes (the errors
:func:`~studio.errors.user_error_types` names) become ``gr.Error`` with the fix in the text;
any other exception is a bug: logged with its traceback, shown as :data:`INTERNAL_ERROR`.
Nothing is half-written because the library and the studio write all or nothing.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
import pandas as pd

from studio.errors import user_error_types
from studio.limits import MAX_IMAGES, MAX_SEED
from studio.models import select_model_set
from studio.models.resolver import ModelResolver
from studio.orchestrator import PortraitRequest, Studio
from studio.profiles.types import CONSENT_STATEMENT, PhotoOutcome, Profile
from studio.settings import Settings
from studio.training.config import TrainConfig
from studio.training.estimate import duration
from studio.training.fit import describe, fit_for
from studio.training.trainer import TrainingProgress, TrainingResult

logger = logging.getLogger(__name__)

GPU_CONCURRENCY = 1
"""Generate and train events run one at a time (one shared GPU queue, ``concurrency_id="gpu"``)."""
QUEUE_SIZE = 64
"""Requests that may wait in the queue before new ones are turned away."""
UPLOAD_LIMIT = "25mb"
"""Largest file the server accepts in one upload."""
INTERNAL_ERROR = (
    "something went wrong in the studio, not in your input; the server log has the details"
)
"""What the UI shows for a bug; the traceback goes to the log."""
HISTORY_LIMIT = 100
VERDICT_HEADERS = ["file", "accepted", "reasons", "similarity"]
TINY_BANNER = (
    "**Offline demo: the `tiny` model set.** Its random weights draw 64-pixel noise, not "
    "portraits; it shows how the studio works. Real model sets need their weights: run "
    "`python -m studio models fetch sd15` on a connected machine (`python -m studio models "
    "list` shows every set and what is local), then restart with `--models sd15`. Profiles, "
    "photo verdicts, crops and identity scores use the real face models and work for real."
)

Gallery = list[tuple[str, str]]
"""Image paths with captions."""


@contextmanager
def user_errors(*uploads: str) -> Iterator[None]:
    """Show user mistakes as ``gr.Error`` (upload folders cut from the message); log any other
    exception with its traceback and show :data:`INTERNAL_ERROR`."""
    try:
        yield
    except gr.Error:
        raise
    except user_error_types() as exc:
        message = str(exc)
        for upload in uploads:
            message = message.replace(upload, Path(upload).name)
        raise gr.Error(message) from exc
    except Exception as exc:
        logger.exception("a web UI request failed")
        raise gr.Error(INTERNAL_ERROR) from exc


def pick_models(settings: Settings, requested: str = "auto") -> tuple[str, str | None]:
    """The model set to serve and a banner: ``auto`` is ``sd15`` if its base is local, else tiny."""
    if requested == "auto":
        found = ModelResolver(settings).find_local(select_model_set("sd15"), "base")
        requested = "sd15" if found else "tiny"
    model_set = select_model_set(requested)
    return requested, TINY_BANNER if model_set.name.startswith("tiny") else None


# Profiles


class ProfileView(NamedTuple):
    """What the Profiles tab shows of a profile."""

    rows: list[list[str]]
    crops: Gallery
    summary: str
    photos: list[tuple[str, str]]
    """(file name, stored name) of every photo, for the remove list."""
    name: str | None
    """The profile shown, ``None`` when none is."""


def profile_names(studio: Studio) -> list[str]:
    """Every profile's name."""
    with studio.library() as lib:
        return [summary.name for summary in lib.list()]


def _view(profile: Profile, outcomes: Sequence[PhotoOutcome] = (), note: str = "") -> ProfileView:
    rows = [
        [
            photo.file,
            "yes" if photo.accepted else "no",
            "; ".join(photo.reasons),
            "" if photo.similarity is None else f"{photo.similarity:.3f}",
        ]
        for photo in profile.photos
    ]
    skipped = [o for o in outcomes if o.status == "skipped"]
    rows += [[Path(o.file).name, "not kept", "; ".join(o.reasons), ""] for o in skipped]
    crops = [(str(photo.crop_path), photo.file) for photo in profile.accepted]
    summary = (
        f"**{profile.name}**: {len(profile.accepted)} of {len(profile.photos)} photos accepted"
        f" · {len(profile.loras)} LoRA(s)"
    )
    if note:
        summary = f"{note}\n\n{summary}"
    photos = [(photo.file, photo.stored_name) for photo in profile.photos]
    return ProfileView(rows, crops, summary, photos, profile.name)


def _uploads(files: Sequence[str] | None) -> list[str]:
    if not files:
        raise gr.Error("upload one or more photos of the person first")
    return [str(f) for f in files]


def show_profile(studio: Studio, name: str | None) -> ProfileView:
    """The profile's verdicts and accepted crops; an empty view when none is chosen."""
    if not name:
        return ProfileView([], [], "Choose a profile, or create one from photos.", [], None)
    with user_errors(), studio.library() as lib:
        return _view(lib.get(name))


def create_profile(
    studio: Studio, name: str, files: Sequence[str] | None, consent: bool
) -> ProfileView:
    """Create a profile from uploaded photos, after the consent confirmation."""
    if not (name or "").strip():
        raise gr.Error("enter a name for the profile (e.g. the person's first name)")
    uploads = _uploads(files)
    if not consent:
        raise gr.Error(
            "the profile was not created: a profile needs your consent confirmation; "
            f'tick the box "{CONSENT_STATEMENT}" and press Create again'
        )
    with user_errors(*uploads), studio.library() as lib:
        change = lib.create(name, uploads, consent=True)
    return _view(change.profile, change.photos, f"Created profile **{change.profile.name}**.")


def add_photos(studio: Studio, name: str | None, files: Sequence[str] | None) -> ProfileView:
    """Add uploaded photos to a profile; every photo is judged again."""
    if not name:
        raise gr.Error("choose the profile to add photos to")
    uploads = _uploads(files)
    with user_errors(*uploads), studio.library() as lib:
        change = lib.add(name, uploads)
    added = sum(o.status != "skipped" for o in change.photos)
    return _view(change.profile, change.photos, f"Added {added} photo(s).")


def remove_photos(studio: Studio, name: str | None, stored: Sequence[str] | None) -> ProfileView:
    """Remove photos (by stored name) from a profile; the rest are judged again."""
    if not name:
        raise gr.Error("choose the profile to remove photos from")
    if not stored:
        raise gr.Error("choose the photos to remove")
    with user_errors(), studio.library() as lib:
        change = lib.remove_photos(name, stored)
    return _view(change.profile, (), f"Removed {len(change.photos)} photo(s).")


def delete_profile(studio: Studio, name: str | None) -> ProfileView:
    """Delete a profile with its photos, crops and LoRAs."""
    if not name:
        raise gr.Error("choose the profile to delete")
    with user_errors(), studio.library() as lib:
        deleted = lib.delete(name)
    return ProfileView(
        [], [], f"Deleted profile **{deleted}** with its photos, crops and LoRAs.", [], None
    )


# Generate


def style_choices(studio: Studio) -> list[tuple[str, str]]:
    """(title, id) of every style, after a free-prompt-only choice (id ``""``)."""
    styles = [(style.title, style.id) for style in studio.styles.values()]
    return [("Free prompt only", ""), *styles]


def style_details(studio: Studio, style: str | None) -> tuple[str, float]:
    """The style's description and suggested identity strength."""
    if not style:
        return "Your prompt alone; `{subject}` marks where the person goes.", 1.0
    preset = studio.styles[style]
    tags = f"\n\n*{', '.join(preset.tags)}*" if preset.tags else ""
    return f"**{preset.title}**: {preset.description}{tags}", preset.identity_scale


class Generated(NamedTuple):
    """Portraits, best likeness first, as the Generate tab shows them."""

    gallery: Gallery
    files: list[str]
    seeds: list[int]
    notes: str


def generate(
    studio: Studio,
    profile: str | None,
    style: str | None,
    prompt: str,
    pose: str | None,
    identity_scale: float,
    num_images: float,
    seed: float | None,
    steps: float,
    progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's convention)
    *,
    edits: tuple[tuple[str, float], ...] = (),
    wplus_scale: float | None = None,
    repair: str = "off",
) -> Generated:
    """Portraits of a profile in a style and/or from a prompt, scored and saved; ``edits`` and
    ``wplus_scale`` come from the W+ section (:mod:`studio.webui_wplus`), ``repair`` is
    :mod:`studio.repair`'s choice."""
    if seed is None:
        raise gr.Error(f"enter a seed from 0 to {MAX_SEED}")
    if not 1 <= num_images <= MAX_IMAGES:
        raise gr.Error(f"make 1 to {MAX_IMAGES} images at once")
    request = PortraitRequest(
        profile=profile or "",
        style=style or None,
        prompt=prompt or "",
        pose=pose or None,
        num_images=int(num_images),
        seed=int(seed),
        steps=int(steps),
        identity_scale=float(identity_scale),
        edits=edits,
        wplus_scale=wplus_scale,
        repair=repair,
    )
    with user_errors(*filter(None, [pose])):
        result = studio.generate(request)
    gallery = [
        (str(p.path), _caption(p.score.similarity, p.seed, p.score.faces)) for p in result.portraits
    ]
    notes = [f"Likeness by **{result.scorer}**, best first.", *result.notes]
    return Generated(
        gallery,
        [str(p.path) for p in result.portraits],
        [p.seed for p in result.portraits],
        "\n\n".join(notes),
    )


def _caption(similarity: float, seed: int, faces: int) -> str:
    caption = f"{similarity:.3f} · seed {seed}"
    return caption if faces else f"{caption} · no face found"


def seed_at(seeds: Sequence[int], index: int | None) -> int:
    """The seed of the selected result, to make it again or vary it."""
    if index is None or not 0 <= index < len(seeds):
        raise gr.Error("click a result image first")
    return seeds[index]


# History


def history(studio: Studio, limit: int = HISTORY_LIMIT) -> tuple[Gallery, list[dict[str, Any]]]:
    """Saved portraits, newest first, and their parameters."""
    items = studio.history(limit)
    gallery = []
    for item in items:
        record, score = item.record, item.record.get("identity") or {}
        what = record.get("style") or "prompt"
        caption = f"{record.get('profile', '?')} · {what} · seed {record.get('seed')}"
        if "similarity" in score:
            caption += f" · {score['similarity']:.3f}"
        gallery.append((str(item.path), caption))
    return gallery, [item.record for item in items]


def history_details(records: Sequence[dict[str, Any]], index: int | None) -> dict[str, Any]:
    """The parameters of the selected history item."""
    if index is None or not 0 <= index < len(records):
        return {}
    return records[index]


# Training


@dataclass(eq=False)
class TrainingJob:
    """One background training run started from the UI."""

    profile: str
    steps: int
    resume: bool
    stop: threading.Event = field(default_factory=threading.Event)
    progress: list[TrainingProgress] = field(default_factory=list)
    result: TrainingResult | None = None
    error: str | None = None
    thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


class TrainingJobs:
    """The UI's training runs: one at a time, in a background thread, cancellable.

    ``flags`` are extra training settings (``validate_every``…); the rest fit the device and
    model set (:func:`training_defaults`). The latest job of each profile is kept for the
    progress view. When the server exits, a running job is stopped and checkpointed, so Resume
    continues it.
    """

    def __init__(self, studio: Studio, **flags: Any) -> None:
        self.studio = studio
        self.flags = flags
        self._jobs: dict[str, TrainingJob] = {}
        self._lock = threading.Lock()
        atexit.register(self.stop_all)

    def get(self, profile: str | None) -> TrainingJob | None:
        return self._jobs.get(profile or "")

    def start(self, profile: str | None, steps: float, *, resume: bool = False) -> TrainingJob:
        """Start (or resume) training in the background; raises ``gr.Error`` if it cannot."""
        if not profile:
            raise gr.Error("choose the profile to train")
        with user_errors(), self.studio.library() as lib:
            profile = lib.get(profile).name
        if resume and not self.studio.training_runs(profile):
            raise gr.Error(f"profile {profile!r} has no training run to resume; press Start")
        with self._lock:
            busy = next((job for job in self._jobs.values() if job.running), None)
            if busy is not None:
                raise gr.Error(
                    f"training of {busy.profile!r} is running; wait for it or cancel it first"
                )
            job = TrainingJob(profile, int(steps), resume)
            job.thread = threading.Thread(
                target=self._run, args=(job,), name=f"train-{profile}", daemon=True
            )
            self._jobs[profile] = job
            job.thread.start()
        return job

    def _run(self, job: TrainingJob) -> None:
        try:
            job.result = self.studio.train(
                job.profile,
                stop=job.stop,
                on_progress=job.progress.append,
                resume=job.resume,
                steps=job.steps,
                **self.flags,
            )
        except user_error_types() as exc:
            job.error = str(exc)
        except Exception:  # a background thread has no caller to raise to
            logger.exception("training of %r failed", job.profile)
            job.error = INTERNAL_ERROR

    def stop_all(self, timeout: float = 60.0) -> None:
        """Stop every running job and wait (up to ``timeout`` s each) for its checkpoint."""
        for job in list(self._jobs.values()):
            job.stop.set()
            if job.thread is not None:
                job.thread.join(timeout)

    def cancel(self, profile: str | None) -> TrainingJob:
        """Ask the running job to stop; it checkpoints, so Resume continues it."""
        job = self.get(profile)
        if job is None or not job.running:
            raise gr.Error("no training of this profile is running; nothing to cancel")
        job.stop.set()
        return job


def training_defaults(studio: Studio) -> tuple[int, str]:
    """The Train tab's default step count, and what a default run is on this machine."""
    device = studio.settings.torch_device()
    fit = fit_for({"models": studio.model_set.name}, device)
    if fit is None:
        d = TrainConfig()
        values = {**vars(d), "resolution": studio.model_set.base_family.default_size}
        return d.steps, f"Default run on the {device}: {describe(values)}."
    return int(fit.values["steps"]), (
        f"Default run for {fit.reason}: {describe(fit.values)}, sized for this machine "
        "(minutes, not hours). The time left shows beside the progress bar once the first "
        "step is measured."
    )


TrainingView = tuple[str, pd.DataFrame, pd.DataFrame]
"""Status markdown, the loss curve and the identity-similarity curve."""


def start_training(jobs: TrainingJobs, profile: str | None, steps: float) -> TrainingView:
    """Start a new LoRA training run of the profile in the background."""
    jobs.start(profile, steps)
    return training_view(jobs, profile)


def resume_training(jobs: TrainingJobs, profile: str | None, steps: float) -> TrainingView:
    """Continue the profile's latest run from its last checkpoint, up to ``steps``."""
    jobs.start(profile, steps, resume=True)
    return training_view(jobs, profile)


def cancel_training(jobs: TrainingJobs, profile: str | None) -> TrainingView:
    """Stop the profile's run at the next step; it keeps a checkpoint to resume from."""
    jobs.cancel(profile)
    return training_view(jobs, profile)


def training_view(jobs: TrainingJobs, profile: str | None) -> TrainingView:
    """The profile's training status and curves (polled by the Train tab)."""
    job = jobs.get(profile)
    progress = list(job.progress) if job else []
    loss = pd.DataFrame(
        {"step": [p.step for p in progress], "loss": [p.loss for p in progress]},
        columns=["step", "loss"],
    )
    scored = [p for p in progress if p.similarity is not None]
    similarity = pd.DataFrame(
        {"step": [p.step for p in scored], "similarity": [p.similarity for p in scored]},
        columns=["step", "similarity"],
    )
    return _status(jobs.studio, job, profile), loss, similarity


def _status(studio: Studio, job: TrainingJob | None, profile: str | None) -> str:
    if not profile:
        return "Choose a profile to train."
    if job is None:
        runs = studio.training_runs(profile)
        earlier = f" {len(runs)} earlier run(s); Resume continues the latest." if runs else ""
        return f"No training of **{profile}** in this session.{earlier}"
    last = job.progress[-1] if job.progress else None
    where = f"step {last.step}/{last.total} · loss {last.loss:.4f}" if last else "starting"
    if job.running:
        verb = "Cancelling" if job.stop.is_set() else "Training"
        status = f"{verb} **{job.profile}**: {where}"
        if last is None:
            return f"{status} (loading models and caching the photos)"
        left = "" if last.remaining_s is None else f" · about {duration(last.remaining_s)} left"
        return f"{status}\n\n`{_bar(last.step, last.total)}`{left}"
    if job.error:
        return f"Training of **{job.profile}** failed: {job.error}"
    result = job.result
    if result is None or result.status != "finished":
        return f"Cancelled **{job.profile}** at {where}; Resume continues from there."
    best = (
        f" · best identity similarity {result.best_similarity:.3f} at step {result.best_step}"
        if result.best_similarity is not None
        else ""
    )
    return (
        f"Finished **{job.profile}** after {result.step} steps{best}; LoRA "
        f"**{result.profile_lora}** is in the profile and used by Generate."
    )


def _bar(step: int, total: int, width: int = 24) -> str:
    """A text progress bar, e.g. ``██████░░░░░░ 50%``."""
    done = round(width * step / total) if total else width
    return f"{'█' * done}{'░' * (width - done)} {100 * step // max(total, 1)}%"
