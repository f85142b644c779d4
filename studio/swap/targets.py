"""Which faces of a target photo to swap: by index, all of them, or the one most like a photo."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from studio.errors import StudioError
from studio.faces.encoders import IdentityEmbedding
from studio.faces.types import Face
from studio.images import ImageLoadError, load_image

ALL = "all"
MATCH = "match:"


@dataclass(frozen=True)
class FaceChoice:
    """``--face``: an index (from 0, largest face first), every face, or a reference photo."""

    index: int | None = 0
    every: bool = False
    match: Path | None = None

    @classmethod
    def parse(cls, text: str | int | None, flag: str = "--face") -> FaceChoice:
        """``N``, ``all`` or ``match:PHOTO``; anything else is refused with the three forms
        (errors name the option ``flag``)."""
        text = "0" if text is None else str(text).strip()
        if text.lower() == ALL:
            return cls(index=None, every=True)
        if text.lower().startswith(MATCH):
            photo = text[len(MATCH) :].strip()
            if not photo:
                raise StudioError(f"{flag} match: needs a photo, e.g. {flag} match:me.jpg")
            return cls(index=None, match=Path(photo))
        try:
            index = int(text)
        except ValueError:
            raise StudioError(
                f"{flag} {text!r}: use a face number (0 is the largest face), 'all', or "
                "'match:PHOTO' to pick the face most like a photo"
            ) from None
        if index < 0:
            raise StudioError(f"{flag} {index}: face numbers start at 0 (the largest face)")
        return cls(index=index)

    def __str__(self) -> str:
        if self.every:
            return ALL
        return f"{MATCH}{self.match}" if self.match is not None else str(self.index)


def choose_faces(
    faces: Sequence[Face],
    choice: FaceChoice,
    *,
    target: str,
    reference: IdentityEmbedding | None = None,
    threshold: float | None = None,
    flag: str = "--face",
) -> list[int]:
    """The indices of ``faces`` (largest first) that ``choice`` picks in the photo ``target``.

    ``match:`` compares each face's embedding from ``reference``'s encoder with ``reference``
    and picks the most similar one, refusing it below ``threshold``.
    """
    if not faces:
        raise StudioError(
            f"target photo {target}: no face found; use a photo with a clearly visible face"
        )
    if choice.every:
        return list(range(len(faces)))
    if choice.match is None:
        if choice.index >= len(faces):
            count = f"{len(faces)} face" + ("s" if len(faces) > 1 else "")
            raise StudioError(
                f"{flag} {choice.index}: target photo {target} has {count} (numbers 0 to "
                f"{len(faces) - 1}, largest first)"
            )
        return [choice.index]
    if reference is None:
        raise StudioError(f"{flag} {choice}: no face found in the reference photo")
    encoder = reference.encoder
    scores = [
        reference.similarity(IdentityEmbedding(encoder, face.embeddings[encoder])) for face in faces
    ]
    best = max(range(len(faces)), key=scores.__getitem__)
    if threshold is not None and scores[best] < threshold:
        raise StudioError(
            f"{flag} {choice}: no face in target photo {target} looks like {choice.match.name} "
            f"(best similarity {scores[best]:.2f} by {reference.encoder}, below its threshold "
            f"{threshold:.2f}); choose the face by number instead"
        )
    return [best]


def load_target(path: str | Path, what: str = "target photo") -> np.ndarray:
    """A target or reference photo as RGB; an unreadable file is a user error naming it."""
    try:
        return load_image(path).rgb
    except ImageLoadError as exc:
        raise StudioError(f"{what}: {exc}") from exc


def match_reference(
    photo: Path, analyze: Callable[[np.ndarray], list[Face]], encoder: str, flag: str = "--face"
) -> IdentityEmbedding | None:
    """The largest face's ``encoder`` embedding in a ``match:`` photo (``None``: no face);
    ``analyze`` must describe faces with that encoder."""
    faces = analyze(load_target(photo, f"{flag} match:{photo}"))
    return IdentityEmbedding(encoder, faces[0].embeddings[encoder]) if faces else None
