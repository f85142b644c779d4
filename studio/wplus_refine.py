"""Refine one photo's W+ by latent optimisation, and check the result with a held-out recognizer.

The entry point::

    refine_photo_wplus(
        e4e: E4E,                   # adapters.e4e.load_e4e(...)
        image: np.ndarray,          # the photo, RGB uint8 (H, W, 3)
        points: np.ndarray,         # its FFHQ anchor points (eyes, mouth corners), as photo_wplus
        steps: int,                 # Adam steps; 0 returns the start unchanged
        *,
        w_plus: torch.Tensor | None = None,  # start from this W+ (a profile's); else e4e's
        recognizer: IRSE50Recognizer | str | os.PathLike | None = None,
                                    # the model or the path of model_ir_se50.pth; a path with
                                    # no file there means pixel loss only
        analyzer: FaceAnalyzer | None = None,  # held-out check (SFace); None skips it
        settings: RefineSettings | None = None,
        on_progress: Callable[[int, int, float], None] | None = None,  # (step, total, loss)
        stop: threading.Event | None = None,
    ) -> PhotoRefinement  # .w_plus [1, n, dim], .start, .refinement, .held_out, .report()

The photo's 256-px FFHQ crop is the target (the anchor points define it, so they are needed
even when ``w_plus`` is given). A tqdm bar tracks the steps (``gr.Progress(track_tqdm=True)``
picks it up). The held-out check compares the photo's crop with the rendering before and after
refinement through the analyzer's SFace embeddings (ONNX, so it only evaluates, never steers the
optimisation); when the analyzer finds no face in a rendering, it says it could not check.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from adapters.e4e import E4E
from adapters.ir_se50 import IR_SE50_FILE, IRSE50Recognizer, load_ir_se50
from adapters.wplus_refine import ProgressFn, Refinement, RefineSettings, refine_wplus
from studio.faces.analyzer import DEFAULT_ENCODER, FaceAnalyzer
from studio.faces.encoders import IdentityEmbedding
from studio.wplus import e4e_crop, to_image, to_model_input

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldOutCheck:
    """Cosine of the held-out ``encoder``'s embeddings of the photo's crop and the rendering,
    before and after refinement; ``None`` where no face was found (``note`` says which)."""

    encoder: str
    before: float | None
    after: float | None
    note: str = ""

    @property
    def checked(self) -> bool:
        return self.before is not None and self.after is not None


@dataclass(frozen=True)
class PhotoRefinement:
    """The refined W+, the W+ it started from, the run, and the held-out check (``None`` when
    no analyzer was given). ``loss_terms`` says what the loss was made of."""

    w_plus: torch.Tensor
    start: torch.Tensor
    refinement: Refinement
    loss_terms: str
    held_out: HeldOutCheck | None

    def report(self) -> str:
        """A few lines for the CLI, the UI and logs."""
        run = self.refinement
        lines = [f"W+ refinement: {run.steps}/{run.requested} steps, {self.loss_terms}"]
        if run.stopped:
            lines.append(f"stopped after {run.steps} of {run.requested} steps")
        if run.losses:
            lines.append(f"loss {run.first_loss:.4f} -> {run.last_loss:.4f}")
        check = self.held_out
        if check is None:
            lines.append("held-out identity check: not run (no face analyzer)")
        elif check.checked:
            lines.append(
                f"held-out {check.encoder} similarity to the photo: "
                f"{check.before:.3f} -> {check.after:.3f}"
            )
        else:
            lines.append(f"held-out {check.encoder} similarity: could not check ({check.note})")
        return "\n".join(lines)


def refine_photo_wplus(
    e4e: E4E,
    image: np.ndarray,
    points: np.ndarray,
    steps: int,
    *,
    w_plus: torch.Tensor | None = None,
    recognizer: IRSE50Recognizer | str | os.PathLike | None = None,
    analyzer: FaceAnalyzer | None = None,
    settings: RefineSettings | None = None,
    on_progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
) -> PhotoRefinement:
    """Refine the W+ of the face with anchor ``points`` in ``image``; see the module docstring."""
    from tqdm.auto import tqdm

    crop = e4e_crop(image, points).image
    device = e4e.latent_avg.device
    target = to_model_input(crop).to(device)
    if w_plus is None:
        with torch.no_grad():
            w_plus = e4e.encode(target)
    expected = tuple(e4e.latent_avg.shape)
    if tuple(w_plus.shape) != (1, *expected):
        raise ValueError(
            f"w_plus must be [1, {expected[0]}, {expected[1]}] for this e4e, got "
            f"{list(w_plus.shape)}"
        )
    w_plus = w_plus.to(device)
    model, loss_terms = _recognizer(recognizer, device)

    with tqdm(total=steps, desc="refining W+", unit="step") as bar:

        def progress(step: int, total: int, loss: float) -> None:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.update(1)
            if on_progress is not None:
                on_progress(step, total, loss)

        run = refine_wplus(
            e4e.decoder,
            w_plus,
            target,
            steps,
            recognizer=model,
            settings=settings,
            on_progress=progress,
            stop=stop,
        )
    held_out = None
    if analyzer is not None:
        held_out = held_out_check(e4e, crop, w_plus, run.w_plus, analyzer)
    return PhotoRefinement(run.w_plus, w_plus.detach(), run, loss_terms, held_out)


def held_out_check(
    e4e: E4E,
    crop: np.ndarray,
    before: torch.Tensor,
    after: torch.Tensor,
    analyzer: FaceAnalyzer,
) -> HeldOutCheck:
    """Similarity of the photo's FFHQ ``crop`` to the renderings of ``before`` and ``after``,
    by the analyzer's SFace (its first encoder when it has no SFace)."""
    names = list(analyzer.encoders)
    if not names:
        raise ValueError("the held-out check needs a face analyzer with an encoder, e.g. sface")
    encoder = DEFAULT_ENCODER if DEFAULT_ENCODER in names else names[0]
    reference = _embedding(analyzer, encoder, crop)
    if reference is None:
        return HeldOutCheck(encoder, None, None, "no face found in the photo's crop")
    similarities = []
    for w in (before, after):
        with torch.no_grad():
            rendered = to_image(e4e.render(w))
        rendered = cv2.resize(rendered, crop.shape[:2][::-1], interpolation=cv2.INTER_AREA)
        embedding = _embedding(analyzer, encoder, rendered)
        similarities.append(None if embedding is None else reference.similarity(embedding))
    missing = [name for name, s in zip(("before", "after"), similarities, strict=True) if s is None]
    note = f"no face found in the rendering {' and '.join(missing)} refinement" if missing else ""
    return HeldOutCheck(encoder, *similarities, note)


def _embedding(analyzer: FaceAnalyzer, encoder: str, image: np.ndarray) -> IdentityEmbedding | None:
    faces = analyzer.analyze(image)
    return IdentityEmbedding(encoder, faces[0].embeddings[encoder]) if faces else None


def _recognizer(
    recognizer: IRSE50Recognizer | str | os.PathLike | None, device: torch.device
) -> tuple[IRSE50Recognizer | None, str]:
    """The identity model (loaded when a path is given) and the words for the loss terms."""
    if isinstance(recognizer, IRSE50Recognizer):
        return recognizer.to(device), "pixel + identity loss (IR-SE50)"
    if recognizer is None:
        return None, "pixel loss only (no identity model given)"
    path = Path(recognizer)
    if not path.is_file():
        logger.info("no %s at %s: W+ refinement uses pixel loss only", IR_SE50_FILE, path)
        return None, f"pixel loss only ({IR_SE50_FILE} not found at {path})"
    return load_ir_se50(path, device=device), f"pixel + identity loss ({path.name})"
