"""Photo selection for identity-LoRA training: which photos train, as head crops, and why not.

Photos go through the profile intake's analysis (load, duplicates, face, quality), then the
profile's outlier rule (:func:`studio.profiles.selection.judge`) on one encoder's embeddings;
the rest become head-and-shoulders crops at the training resolution, with tags from an optional
caption file beside each photo.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

from studio.faces.align import HEAD_CROP_FACE_FRACTION
from studio.faces.analyzer import FaceAnalyzer
from studio.faces.encoders import IdentityEmbedding
from studio.profiles.errors import NoUsablePhotosError
from studio.profiles.intake import AnalysedPhoto, analyse_photos, listing
from studio.profiles.selection import judge
from studio.profiles.types import PhotoOutcome
from studio.training.types import PhotoSet, TrainingPhoto

logger = logging.getLogger(__name__)

MIN_RECOMMENDED_PHOTOS = 4
"""Fewer used photos than this get a warning: the LoRA sees too few views of the face."""

MAX_CAPTION_BYTES = 2048
"""Larger caption files are ignored (with a note): tags are a few words, not a document."""

CAPTION_SUFFIX = ".txt"
_TAG_SEPARATOR = re.compile(r"[,\n]")
_ADVICE = (
    "Use 5–20 sharp, well-lit photos of the person's face, one person per photo, "
    "from different angles"
)


def select_photos(
    paths: Iterable[str | Path],
    analyzer: FaceAnalyzer,
    *,
    resolution: int,
    encoder: str = "sface",
    face_fraction: float = HEAD_CROP_FACE_FRACTION,
) -> PhotoSet:
    """Analyse the photos under ``paths`` (files or folders) and keep those of one person.

    Unusable files are skipped and photos unlike the rest (by ``encoder``'s embeddings and
    same-person threshold) rejected, each with its reasons. Raises
    :class:`~studio.profiles.errors.NoUsablePhotosError` listing every file when none is left.
    """
    if encoder not in analyzer.encoders:
        raise ValueError(
            f"encoder {encoder!r} is not loaded by the face analyzer "
            f"(it has {', '.join(analyzer.encoders) or 'none'}); build it with that encoder"
        )
    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    results = analyse_photos(
        paths,
        analyzer,
        encoder=encoder,
        crop=lambda rgb, face: analyzer.crop(rgb, face, resolution, face_fraction).image,
    )
    analysed = {i: r for i, r in enumerate(results) if isinstance(r, AnalysedPhoto)}
    verdicts = judge(
        {i: IdentityEmbedding(encoder, r.face.embeddings[encoder]) for i, r in analysed.items()},
        analyzer.encoders[encoder].threshold,
    )

    used: list[TrainingPhoto] = []
    left_out: list[PhotoOutcome] = []
    for i, result in enumerate(results):
        if isinstance(result, PhotoOutcome):
            left_out.append(result)
        elif verdicts[i].accepted:
            used.append(_training_photo(result, encoder))
        else:
            verdict = verdicts[i]
            logger.info("%s: rejected: %s", result.source, "; ".join(verdict.reasons))
            left_out.append(
                PhotoOutcome(
                    file=str(result.source),
                    status="rejected",
                    reasons=verdict.reasons,
                    similarity=verdict.similarity,
                    notes=result.notes,
                )
            )
    if not used:
        raise NoUsablePhotosError(_listing(left_out))
    warnings: list[str] = []
    if len(used) < MIN_RECOMMENDED_PHOTOS:
        warnings.append(
            f"only {len(used)} usable photo{'s' if len(used) > 1 else ''}: likeness will suffer. "
            f"{_ADVICE}."
        )
    for warning in warnings:
        logger.warning(warning)
    return PhotoSet(tuple(used), tuple(left_out), tuple(warnings))


def read_tags(photo: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Tags from the caption file beside ``photo`` (``x.jpg`` → ``x.txt``), and notes on it.

    A missing file gives no tags; an unreadable or oversized one gives a note instead.
    """
    path = photo.with_suffix(CAPTION_SUFFIX)
    if not path.exists():
        return (), ()
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CAPTION_BYTES + 1)
        if len(data) > MAX_CAPTION_BYTES:
            return (), (f"caption file {path.name} ignored: larger than {MAX_CAPTION_BYTES} bytes",)
        text = data.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        return (), (f"caption file {path.name} ignored: {reason}",)
    return tuple(tag for raw in _TAG_SEPARATOR.split(text) if (tag := raw.strip())), ()


def _training_photo(photo: AnalysedPhoto, encoder: str) -> TrainingPhoto:
    tags, caption_notes = read_tags(photo.source)
    logger.info("%s: used (face %d of %d)", photo.source, photo.face_index + 1, photo.face_count)
    return TrainingPhoto(
        source=photo.source,
        crop=photo.crop,
        embedding=IdentityEmbedding(encoder, photo.face.embeddings[encoder]),
        tags=tags,
        notes=(*photo.notes, *caption_notes),
    )


def _listing(outcomes: list[PhotoOutcome]) -> str:
    if not outcomes:
        return f"no photo found to train on. {_ADVICE}."
    return f"{listing('no usable photo to train on', outcomes)}\n{_ADVICE}, then run again."
