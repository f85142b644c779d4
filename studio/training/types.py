"""Typed values handed between the training stages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from studio.faces.encoders import IdentityEmbedding
from studio.profiles.types import PhotoOutcome


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


@dataclass(frozen=True)
class LoraMetadata:
    """What a trained LoRA needs to be used well; written as ``lora.json`` beside the weights."""

    trigger: str
    class_word: str
    family: str
    model_set: str
    rank: int
    alpha: float
    text_encoder: bool
    resolution: int
    steps: int
    best_step: int | None = None
    best_similarity: float | None = None
    score_encoder: str = "sface"

    @property
    def instance_prompt(self) -> str:
        """The phrase that calls up the identity, e.g. ``"ohwx person"``."""
        return f"{self.trigger} {self.class_word}"
