"""The ranges a generation request may ask for: one set for the CLI, the studio and the web UI."""

from __future__ import annotations

from studio.errors import StudioError

MAX_IMAGES = 8
"""Images made in one request: one batch on the GPU."""
MAX_SEED = 2**32 - 1
MAX_STEPS = 200
MAX_GUIDANCE = 30
MAX_IDENTITY_SCALE = 1.5
MAX_WPLUS_SCALE = 1.5
MAX_EDIT_AMOUNT = 5.0
"""Largest W+ edit amount either way (e4e's InterFaceGAN edits use about 3)."""
MAX_REFINE_STEPS = 500
"""Latent-optimisation steps of one W+ refinement."""
MIN_SIDE = 64
MAX_SIDE = 2048
SIDE_MULTIPLE = 8


def check_range(what: str, value: float, low: float, high: float) -> None:
    """Raise a :class:`StudioError` naming ``what`` (a flag or field) unless it is in range."""
    if not low <= value <= high:
        raise StudioError(f"{what} {value} is out of range; use {low} to {high}")


def check_side(what: str, value: int) -> None:
    """Raise a :class:`StudioError` unless ``value`` is a usable image width or height."""
    if value % SIDE_MULTIPLE or not MIN_SIDE <= value <= MAX_SIDE:
        raise StudioError(
            f"{what} {value} is unusable; use a multiple of {SIDE_MULTIPLE} from {MIN_SIDE} "
            f"to {MAX_SIDE}"
        )
