"""What a face swap is asked for and what it gives back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from studio.errors import StudioError
from studio.limits import MAX_SEED, MAX_STEPS, check_range

METHODS = ("diffusion", "inswapper")
DEFAULT_STRENGTH = 0.85
"""Path B: the fraction of the denoising steps that repaint the face."""
REFINE_STRENGTH = 0.3
"""Path A with ``refine``: a light diffusion pass over the inswapper's 128-px face."""


@dataclass(frozen=True)
class SwapRequest:
    """Put ``profile``'s face on the chosen faces of the photo ``target``.

    ``face``: a number (0 = largest), ``all`` or ``match:PHOTO``. ``method``: ``diffusion``
    (path B, any profile) or ``inswapper`` (path A, needs ArcFace embeddings and the model;
    ``refine`` adds a light diffusion pass).
    """

    profile: str
    target: Path
    face: str = "0"
    method: str = "diffusion"
    strength: float = DEFAULT_STRENGTH
    refine: bool = False
    seed: int = 0
    steps: int | None = None

    def validate(self) -> None:
        if not self.profile.strip():
            raise StudioError("choose a profile: whose face goes into the photo")
        if self.method not in METHODS:
            raise StudioError(f"--method {self.method!r}: use one of {', '.join(METHODS)}")
        check_range("strength", self.strength, 0.05, 1.0)
        check_range("seed", self.seed, 0, MAX_SEED)
        if self.steps is not None:
            check_range("steps", self.steps, 1, MAX_STEPS)


@dataclass(frozen=True, eq=False)
class FaceEdit:
    """A photo with one face replaced, and the weight it was pasted with (``uint8``, canvas
    pixels): where the weight is 0 the photo is unchanged bit for bit."""

    image: np.ndarray
    weight: np.ndarray
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SwapResult:
    """The saved photo, the faces swapped (numbers, largest first), notes for the user."""

    path: Path
    faces: tuple[int, ...]
    faces_found: int
    method: str
    notes: tuple[str, ...] = ()
