"""What a portrait request asks for and the identity it is made of: the studio's and the stages'
shared types."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from studio.directions import check_edits
from studio.errors import StudioError
from studio.faces.encoders import IdentityEmbedding
from studio.limits import (
    MAX_GUIDANCE,
    MAX_IDENTITY_SCALE,
    MAX_IMAGES,
    MAX_SEED,
    MAX_STEPS,
    MAX_WPLUS_SCALE,
    check_range,
)
from studio.profiles.types import ProfileLora


@dataclass(frozen=True)
class PortraitRequest:
    """What a person asks for. ``prompt`` alone is a free prompt; with ``style`` it is added
    to the style's. ``{subject}`` in a free prompt marks where the person goes (else first)."""

    profile: str
    style: str | None = None
    prompt: str = ""
    negative_prompt: str = ""
    pose: str | Path | None = None
    num_images: int = 1
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    identity_scale: float | None = None
    use_lora: bool = True
    stages: tuple[str, ...] = ()
    """Registered stages (:mod:`studio.stages`) to run on every image, in this order."""
    edits: tuple[tuple[str, float], ...] = ()
    """W+ edits, ``(direction, amount)`` in order, e.g. ``(("age", 2.0), ("smile", -1.0))``
    (see :mod:`studio.directions`); they need a model set with the W+ adapter."""
    wplus_scale: float | None = None
    """Strength of the W+ adapter (0 to 1.5); ``None`` keeps the adapter's (1.0)."""
    swap_target: str | Path | None = None
    """The ``swap`` stage's template photo: the person's face goes onto its ``swap_face``."""
    swap_face: str = "0"
    """The template's face(s) the ``swap`` stage repaints: a number (0: the largest), ``all``,
    or ``match:PHOTO`` (the face most like the photo's)."""
    repair: str = "off"
    """Attribute repair (:mod:`studio.repair`): ``off``, ``auto`` or names (``hair,glasses``)."""

    def validate(self) -> None:
        """Raise a :class:`StudioError` naming the first unusable field and its range."""
        if not self.profile.strip():
            raise StudioError("choose a profile (create one from photos first)")
        if not self.style and not self.prompt.strip():
            raise StudioError("choose a style or write a prompt")
        check_range("number of images", self.num_images, 1, MAX_IMAGES)
        check_range("seed", self.seed, 0, MAX_SEED)
        if self.steps is not None:
            check_range("steps", self.steps, 1, MAX_STEPS)
        if self.guidance is not None:
            check_range("guidance", self.guidance, 0, MAX_GUIDANCE)
        if self.identity_scale is not None:
            check_range("identity strength", self.identity_scale, 0, MAX_IDENTITY_SCALE)
        check_edits(self.edits)
        if self.wplus_scale is not None:
            check_range("W+ scale", self.wplus_scale, 0, MAX_WPLUS_SCALE)
        from studio.repair import parse_repair
        from studio.swap.targets import FaceChoice

        parse_repair(self.repair)
        FaceChoice.parse(self.swap_face, "--swap-face")


@dataclass(frozen=True, eq=False)
class Identity:
    """A profile made ready for generation and scoring."""

    profile: str
    encoder: str
    embeds: torch.Tensor
    reference: IdentityEmbedding
    lora: ProfileLora | None
    subject: str
    keypoints_photo: Path
    encodings: Mapping[str, IdentityEmbedding] = field(default_factory=dict)
    """The mean embedding of the accepted photos per encoder (the adapter's and the scorer's)."""
