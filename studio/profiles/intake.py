"""Photo intake: user files become staged profile photos (copy, head crop, embeddings).

Each file is loaded through :func:`studio.images.load_image`, hashed (the same content twice is
a duplicate), analysed, and, when one usable face is found, copied into a staging folder as
``photos/<hash><suffix>`` with its 512 px head crop as ``crops/<hash>.png``. Everything else is
skipped with a one-line reason and the batch goes on. In a photo with several faces the face
matching the other photos is used; those photos are analysed first to know who that is.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image

from studio.faces.analyzer import FaceAnalyzer
from studio.faces.encoders import IdentityEmbedding, mean_embedding
from studio.faces.types import Face
from studio.fileio import atomic_write, atomic_write_bytes
from studio.images import ImageLoadError, LoadedImage, iter_images, load_image
from studio.profiles.selection import pick_face
from studio.profiles.store import StoredPhoto
from studio.profiles.types import PhotoOutcome

logger = logging.getLogger(__name__)

CROP_SIZE = 512
"""Side of the stored head crop, in pixels."""

PHOTOS_DIR = "photos"
CROPS_DIR = "crops"
HASH_PREFIX_LENGTH = 16
"""Hex digits of a photo's SHA-256 in its stored file name (unique within a profile)."""

_SAFE_SUFFIX = re.compile(r"\.[a-z0-9]{1,5}")
_NO_FACE = "no face found; use a photo where the face is clearly visible"


@dataclass(frozen=True, eq=False)
class StagedPhoto:
    """A photo whose copy and crop are written to the staging folder; ``source`` as given."""

    source: Path
    photo: StoredPhoto


@dataclass(frozen=True, eq=False)
class _Analysed:
    source: Path
    image: LoadedImage
    data: bytes
    sha256: str
    faces: list[Face]


def write_crop(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB crop as a PNG, atomically."""
    return atomic_write(path, lambda fh: Image.fromarray(rgb).save(fh, format="PNG"))


def stage_photos(
    paths: Iterable[str | Path],
    analyzer: FaceAnalyzer,
    encoders: Sequence[str],
    folder: Path,
    *,
    known: Mapping[str, str],
    reference: Sequence[IdentityEmbedding],
    added: datetime,
) -> list[StagedPhoto | PhotoOutcome]:
    """Stage every photo under ``paths`` into ``folder``; one result per file, in order.

    ``known`` maps the SHA-256 of photos already in the profile to their file names;
    ``reference`` holds embeddings (of ``encoders[0]``) of photos known to show the person,
    which decide, with the batch's single-face photos, which face of a group photo to use.
    """
    (folder / PHOTOS_DIR).mkdir(parents=True, exist_ok=True)
    (folder / CROPS_DIR).mkdir(parents=True, exist_ok=True)
    primary = encoders[0]
    results: list[StagedPhoto | PhotoOutcome | _Analysed] = []
    seen: dict[str, Path] = {}
    for path in iter_images(paths):
        analysed = _analyse(path, analyzer, known, seen)
        if isinstance(analysed, _Analysed) and len(analysed.faces) == 1:
            results.append(_stage(analysed, 0, None, analyzer, encoders, folder, added))
        else:
            results.append(analysed)  # group photos wait until the batch says who to look for

    known_faces = [r.photo.embeddings[primary] for r in results if isinstance(r, StagedPhoto)]
    mean = mean_embedding([*reference, *known_faces]) if reference or known_faces else None
    staged: list[StagedPhoto | PhotoOutcome] = []
    for result in results:
        if isinstance(result, _Analysed):
            candidates = [
                IdentityEmbedding(primary, face.embeddings[primary]) for face in result.faces
            ]
            index, note = pick_face(candidates, mean)
            result = _stage(result, index, note, analyzer, encoders, folder, added)
        staged.append(result)
    return staged


def _analyse(
    path: Path, analyzer: FaceAnalyzer, known: Mapping[str, str], seen: dict[str, Path]
) -> _Analysed | PhotoOutcome:
    """Load, hash and detect; a :class:`PhotoOutcome` says why the photo is skipped."""
    try:
        image = load_image(path)
        data = path.read_bytes()
    except ImageLoadError as exc:
        return _skipped(path, str(exc).removeprefix(f"{path}: "))
    except OSError as exc:
        return _skipped(path, f"cannot be read ({exc.strerror or exc})")
    sha256 = hashlib.sha256(data).hexdigest()
    if sha256 in known:
        return _skipped(path, f"same photo as {known[sha256]!r}, already in the profile")
    if sha256 in seen:
        return _skipped(path, f"same photo as {str(seen[sha256])!r}, given earlier")
    seen[sha256] = path
    faces = analyzer.analyze(image.rgb)
    if not faces:
        return _skipped(path, _NO_FACE, notes=image.notes)
    return _Analysed(path, image, data, sha256, faces)


def _stage(
    analysed: _Analysed,
    index: int,
    note: str | None,
    analyzer: FaceAnalyzer,
    encoders: Sequence[str],
    folder: Path,
    added: datetime,
) -> StagedPhoto | PhotoOutcome:
    """Write the copy and head crop of one face's photo, unless that face is unusable."""
    face = analysed.faces[index]
    notes = (*analysed.image.notes, *([note] if note else []))
    if face.quality is not None and not face.quality.ok:
        return _skipped(analysed.source, *face.quality.reasons, notes=notes)
    prefix = analysed.sha256[:HASH_PREFIX_LENGTH]
    suffix = analysed.source.suffix.lower()
    stored_name = prefix + (suffix if _SAFE_SUFFIX.fullmatch(suffix) else "")
    crop_name = f"{prefix}.png"
    atomic_write_bytes(folder / PHOTOS_DIR / stored_name, analysed.data)
    write_crop(
        folder / CROPS_DIR / crop_name, analyzer.crop(analysed.image.rgb, face, CROP_SIZE).image
    )
    logger.info(
        "%s: staged as %s (face %d of %d)",
        analysed.source,
        stored_name,
        index + 1,
        len(analysed.faces),
    )
    return StagedPhoto(
        source=analysed.source,
        photo=StoredPhoto(
            original_name=analysed.source.name,
            stored_name=stored_name,
            crop_name=crop_name,
            sha256=analysed.sha256,
            added=added,
            face_index=index,
            face_count=len(analysed.faces),
            notes=notes,
            embeddings={name: IdentityEmbedding(name, face.embeddings[name]) for name in encoders},
        ),
    )


def _skipped(path: Path, *reasons: str, notes: Sequence[str] = ()) -> PhotoOutcome:
    logger.info("%s: skipped: %s", path, "; ".join(reasons))
    return PhotoOutcome(file=str(path), status="skipped", reasons=reasons, notes=tuple(notes))
