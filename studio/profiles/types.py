"""Typed values the profile library hands out: profiles, their photos and LoRAs, and edits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from studio.faces.encoders import IdentityEmbedding

CONSENT_STATEMENT = (
    "I am the person pictured in these photos, or I have that person's consent to use them."
)
"""What the user confirms when creating a profile; stored with the profile."""


@dataclass(frozen=True)
class Consent:
    """The user's confirmation that the pictured person agrees, and when (UTC) it was given."""

    given: bool
    at: datetime
    statement: str


@dataclass(frozen=True)
class EncoderInfo:
    """An identity encoder a profile keeps embeddings for, with its same-person threshold."""

    name: str
    dim: int
    threshold: float


@dataclass(frozen=True, eq=False)
class WPlus:
    """A StyleGAN W+ latent ``[1, rows, dim]`` float32 (``[1, 18, 512]`` for FFHQ), as e4e
    returns it: not unit-norm and not an identity embedding.

    ``e4e`` names the weights that made it (W+ of different e4e files never mix). A photo's
    W+ may be missing with a ``reason`` (e4e could not encode its face); ``refine_steps`` counts
    the latent-optimisation steps that refined it. A profile's W+ is the mean over its ``photos``
    accepted photos.
    """

    e4e: str
    latent: np.ndarray | None
    computed: datetime
    photos: int = 1
    refine_steps: int = 0
    reason: str | None = None


class WPlusEncoder(Protocol):
    """Photos to W+ for the profile library (the torch side lives in :mod:`studio.wplus`)."""

    key: str
    """Which e4e weights make the W+ (stored with each W+)."""

    def encode(self, photo: Path, face_index: int, face_count: int) -> np.ndarray:
        """The W+ ``[1, rows, dim]`` of face ``face_index`` of ``face_count`` in ``photo``;
        raises a :class:`~studio.profiles.errors.PhotoWPlusError` saying why this face cannot be
        encoded (any other error, e.g. missing weights, stops the edit)."""


@dataclass(frozen=True, eq=False)
class Photo:
    """One photo of a profile, its 512-px head crop, embeddings and verdict.

    ``file`` is the name the user's file had; ``stored_name`` is the copy's name in the
    profile's ``photos`` folder. ``similarity`` is the cosine to the mean of the profile's other
    photos (``None`` when there is nothing to compare with); ``reasons`` say why a photo is not
    accepted; ``notes`` record what the loader converted and which face was used.
    """

    file: str
    stored_name: str
    path: Path
    crop_path: Path
    sha256: str
    added: datetime
    face_index: int
    face_count: int
    accepted: bool
    reasons: tuple[str, ...]
    similarity: float | None
    notes: tuple[str, ...]
    embeddings: Mapping[str, IdentityEmbedding]
    wplus: Mapping[str, WPlus] = field(default_factory=dict)
    """The photo's W+ by e4e key (see :class:`WPlus`)."""


@dataclass(frozen=True, kw_only=True)
class LoraRecord:
    """The facts of a trained identity LoRA, the same wherever it goes: its ``lora.json``
    (:class:`~studio.training.types.LoraMetadata`), the library's row and the profile's view.

    The prompt that calls up the person is ``"<trigger> <class_word>"``; ``family`` and
    ``model_set`` say which base it was trained on; ``best_step`` and ``best_similarity`` are
    the validation step whose images looked most like the person, if validation ran.
    """

    trigger: str
    class_word: str
    family: str
    model_set: str
    rank: int
    steps: int
    best_step: int | None = None
    best_similarity: float | None = None

    @property
    def instance_prompt(self) -> str:
        """The phrase that calls up the identity, e.g. ``"ohwx person"``."""
        return f"{self.trigger} {self.class_word}"

    def record_fields(self) -> dict[str, Any]:
        """The :class:`LoraRecord` fields alone, to build another record type from this one."""
        return {f.name: getattr(self, f.name) for f in fields(LoraRecord)}


@dataclass(frozen=True, kw_only=True)
class ProfileLora(LoraRecord):
    """A LoRA trained from a profile's photos, kept in the profile's ``loras`` folder.

    ``path`` is its folder, ``weights`` the diffusers LoRA file in it and ``report`` the training
    report's JSON (``None`` when none was kept); ``created`` is when it was added (UTC).
    """

    name: str
    path: Path
    weights: Path
    report: Path | None
    created: datetime


@dataclass(frozen=True, eq=False)
class Profile:
    """A person's identity profile: photos, verdicts, a mean embedding per encoder, LoRAs.

    ``encoders`` come in order of preference; the first one decides which photos match.
    ``means`` holds the normalised mean of the accepted photos' embeddings, per encoder, and is
    empty when no photo is accepted. ``loras`` come in the order they were added, newest last.
    """

    name: str
    path: Path
    created: datetime
    updated: datetime
    consent: Consent
    encoders: tuple[EncoderInfo, ...]
    photos: tuple[Photo, ...]
    means: Mapping[str, IdentityEmbedding]
    loras: tuple[ProfileLora, ...]
    wplus: Mapping[str, WPlus] = field(default_factory=dict)
    """The mean W+ of the accepted photos by e4e key; present once every accepted photo has
    been through that e4e."""

    @property
    def accepted(self) -> tuple[Photo, ...]:
        return tuple(photo for photo in self.photos if photo.accepted)


@dataclass(frozen=True)
class ProfileSummary:
    """One line of the library's listing."""

    name: str
    path: Path
    created: datetime
    photos: int
    accepted: int
    encoders: tuple[str, ...]
    loras: int


PhotoStatus = Literal["accepted", "rejected", "skipped", "removed"]
"""``rejected``: kept in the profile but not used; ``skipped``: not kept at all."""


@dataclass(frozen=True)
class PhotoOutcome:
    """What an edit did with one photo; ``file`` is the name as the user gave it."""

    file: str
    status: PhotoStatus
    reasons: tuple[str, ...] = ()
    similarity: float | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class ProfileChange:
    """The result of create, add or remove.

    ``photos`` has one outcome per photo the user named; ``changed`` lists photos already in the
    profile whose verdict flipped because the set of photos changed.
    """

    profile: Profile
    photos: tuple[PhotoOutcome, ...]
    changed: tuple[PhotoOutcome, ...]
