"""Photo intake: user files become staged profile photos (copy, head crop, embeddings).

Each file is loaded through :func:`studio.images.load_image`, hashed (the same content twice is
a duplicate), analysed, and, when one usable face is found, copied into a staging folder as
``photos/<hash><suffix>`` with its 512 px head crop as ``crops/<hash>.png``. Everything else is
skipped with a one-line reason and the batch goes on. In a photo with several faces the face
matching the other photos is used; those photos are analysed first to know who that is.
:func:`analyse_photos` is that analysis alone, shared with training's photo selection.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image

from studio.faces.analyzer import FaceAnalyzer
from studio.faces.encoders import IdentityEmbedding, mean_embedding
from studio.faces.types import Face
from studio.fileio import atomic_write, atomic_write_bytes
from studio.images import ImageLoadError, iter_images, load_image
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
class AnalysedPhoto:
    """A loaded photo and its usable face; ``source`` as given, ``data`` the file's bytes.

    ``face_index`` counts from 0 among the photo's ``face_count`` faces (largest first);
    ``notes`` are the loader's notes and, for a group photo, which face was used.
    """

    source: Path
    crop: np.ndarray
    data: bytes
    sha256: str
    face: Face
    face_index: int
    face_count: int
    notes: tuple[str, ...]


Cropper = Callable[[np.ndarray, Face], np.ndarray]
"""Makes the crop a caller keeps of a face, from the RGB photo (the photo is not kept)."""


@dataclass(frozen=True, eq=False)
class _Detected:
    """A photo with faces. Only a group photo keeps its pixels, until its face is chosen; a
    one-face photo keeps just its crop, so a large batch does not hold every decoded photo."""

    source: Path
    notes: tuple[str, ...]
    data: bytes
    sha256: str
    faces: list[Face]
    rgb: np.ndarray | None
    crop: np.ndarray | None


def write_crop(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB crop as a PNG, atomically."""
    return atomic_write(path, lambda fh: Image.fromarray(rgb).save(fh, format="PNG"))


def analyse_photos(
    paths: Iterable[str | Path],
    analyzer: FaceAnalyzer,
    *,
    encoder: str,
    crop: Cropper,
    known: Mapping[str, str] = MappingProxyType({}),
    reference: Sequence[IdentityEmbedding] = (),
) -> list[AnalysedPhoto | PhotoOutcome]:
    """Load, hash, detect and quality-check every photo under ``paths``; one result per file.

    A file that cannot be used (unreadable, a duplicate, no face, poor quality) becomes a
    skipped :class:`PhotoOutcome`. ``known`` maps the SHA-256 of photos already kept elsewhere
    to their names (duplicates of them are skipped). In a group photo the face most like the
    mean of ``reference`` (embeddings of ``encoder``) and the batch's usable single-face photos
    is used. ``crop`` makes each usable face's crop.
    """
    seen: dict[str, Path] = {}
    detected = [_detect(path, analyzer, known, seen, crop) for path in iter_images(paths)]
    singles = [
        IdentityEmbedding(encoder, r.faces[0].embeddings[encoder])
        for r in detected
        if isinstance(r, _Detected) and len(r.faces) == 1 and _usable(r.faces[0])
    ]
    everyone = [*reference, *singles]
    mean = mean_embedding(everyone) if everyone else None
    return [r if isinstance(r, PhotoOutcome) else _choose(r, encoder, mean, crop) for r in detected]


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
    results = analyse_photos(
        paths,
        analyzer,
        encoder=encoders[0],
        crop=lambda rgb, face: analyzer.crop(rgb, face, CROP_SIZE).image,
        known=known,
        reference=reference,
    )
    return [
        r if isinstance(r, PhotoOutcome) else _stage(r, encoders, folder, added) for r in results
    ]


def _detect(
    path: Path,
    analyzer: FaceAnalyzer,
    known: Mapping[str, str],
    seen: dict[str, Path],
    crop: Cropper,
) -> _Detected | PhotoOutcome:
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
    if len(faces) == 1:
        return _Detected(path, image.notes, data, sha256, faces, None, crop(image.rgb, faces[0]))
    return _Detected(path, image.notes, data, sha256, faces, image.rgb, None)


def _choose(
    detected: _Detected, encoder: str, mean: IdentityEmbedding | None, crop: Cropper
) -> AnalysedPhoto | PhotoOutcome:
    """The face to use (the one like ``mean`` in a group photo), unless its quality is poor."""
    candidates = [IdentityEmbedding(encoder, face.embeddings[encoder]) for face in detected.faces]
    index, note = pick_face(candidates, mean)
    face = detected.faces[index]
    notes = (*detected.notes, *([note] if note else []))
    if face.quality is not None and not face.quality.ok:
        return _skipped(detected.source, *face.quality.reasons, notes=notes)
    return AnalysedPhoto(
        source=detected.source,
        crop=detected.crop if detected.rgb is None else crop(detected.rgb, face),
        data=detected.data,
        sha256=detected.sha256,
        face=face,
        face_index=index,
        face_count=len(detected.faces),
        notes=notes,
    )


def _usable(face: Face) -> bool:
    return face.quality is None or face.quality.ok


def _stage(
    analysed: AnalysedPhoto,
    encoders: Sequence[str],
    folder: Path,
    added: datetime,
) -> StagedPhoto:
    """Write the copy and head crop of an analysed photo."""
    prefix = analysed.sha256[:HASH_PREFIX_LENGTH]
    suffix = analysed.source.suffix.lower()
    stored_name = prefix + (suffix if _SAFE_SUFFIX.fullmatch(suffix) else "")
    crop_name = f"{prefix}.png"
    atomic_write_bytes(folder / PHOTOS_DIR / stored_name, analysed.data)
    write_crop(folder / CROPS_DIR / crop_name, analysed.crop)
    logger.info(
        "%s: staged as %s (face %d of %d)",
        analysed.source,
        stored_name,
        analysed.face_index + 1,
        analysed.face_count,
    )
    return StagedPhoto(
        source=analysed.source,
        photo=StoredPhoto(
            original_name=analysed.source.name,
            stored_name=stored_name,
            crop_name=crop_name,
            sha256=analysed.sha256,
            added=added,
            face_index=analysed.face_index,
            face_count=analysed.face_count,
            notes=analysed.notes,
            embeddings={
                name: IdentityEmbedding(name, analysed.face.embeddings[name]) for name in encoders
            },
        ),
    )


def listing(headline: str, outcomes: Sequence[PhotoOutcome]) -> str:
    """``headline:`` and a line per photo with its reasons, for "no usable photo" errors."""
    lines = [f"  {o.file}: {'; '.join(o.reasons) or o.status}" for o in outcomes]
    return "\n".join([f"{headline}:", *lines]) if lines else f"{headline}: no photo found"


def _skipped(path: Path, *reasons: str, notes: Sequence[str] = ()) -> PhotoOutcome:
    logger.info("%s: skipped: %s", path, "; ".join(reasons))
    return PhotoOutcome(file=str(path), status="skipped", reasons=reasons, notes=tuple(notes))
