"""Typed values handed between the training stages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from studio.faces.encoders import IdentityEmbedding
from studio.profiles.types import LoraRecord, PhotoOutcome


@dataclass(frozen=True, eq=False)
class TrainingPhoto:
    """One usable photo: its head-and-shoulders crop at the training resolution.

    ``embedding`` is the scoring encoder's embedding of the face in the original photo (the
    reference validation compares generated faces with); ``tags`` come from an optional caption
    file beside the photo (``photo.jpg`` → ``photo.txt``), comma-separated.
    """

    source: Path
    crop: np.ndarray
    embedding: IdentityEmbedding
    tags: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class PhotoSet:
    """The outcome of photo selection: what trains, what was left out and why, and warnings."""

    used: tuple[TrainingPhoto, ...]
    rejected: tuple[PhotoOutcome, ...]
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class LoraMetadata(LoraRecord):
    """What a trained LoRA needs to be used well; written as ``lora.json`` beside the weights."""

    alpha: float
    text_encoder: bool
    resolution: int
    score_encoder: str = "sface"
