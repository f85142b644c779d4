"""User photo loading: the one edge where files become RGB arrays.

Every photo enters the studio through :func:`load_image` (or :func:`load_image_bytes` for
uploads) and comes out as an upright RGB ``uint8`` array of shape ``(H, W, 3)``: EXIF orientation
applied, transparency composited on white, CMYK, palette, grayscale and 16-bit data converted,
the first frame of an animation taken. Whatever the loader had to decide is kept in
``LoadedImage.notes``.

A file that cannot become a photo raises :class:`ImageLoadError` with a one-line message naming
the file, the reason and what to do; :func:`load_many` collects those and goes on with the batch.
Truncated files are errors (Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone),
and images above ``max_pixels`` are refused after reading their header, before any pixel is
decoded. Images are never downscaled here: the detector downscales its own copy.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps

from studio.errors import StudioError

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 64_000_000
"""Largest ``width * height`` :func:`load_image` accepts by default (64 MP, about 190 MB as RGB)."""

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif"}
)
"""Suffixes (lower case) that :func:`iter_images` picks up when it expands a folder."""

# ISO-BMFF major brands of HEIF still images (mif1/msf1 are shared with AVIF, which Pillow reads).
_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)
# Exceptions after which Pillow's own ``Image.open`` tries the next format plugin.
_NOT_THIS_FORMAT = (SyntaxError, IndexError, TypeError, struct.error)
_WHITE = (255, 255, 255, 255)
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]+")


class ImageLoadError(StudioError):
    """A file that cannot become a photo; the message is one line: file, reason, what to do."""


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded photo.

    ``rgb`` is upright (EXIF orientation applied), ``uint8``, shape ``(H, W, 3)``, at full size.
    ``original_size`` is ``(width, height)`` as stored in the file, before EXIF orientation.
    ``notes`` are short remarks on what the loader converted or chose, e.g. the frame it used.
    """

    path: Path
    rgb: np.ndarray = field(repr=False)
    notes: tuple[str, ...]
    original_size: tuple[int, int]


def load_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Load a photo file as upright RGB; raise :class:`ImageLoadError` if it cannot be used."""
    path = Path(path)
    label = str(path)
    if not path.exists():
        raise _error(label, "file does not exist", "check the path")
    if path.is_dir():
        raise _error(label, "is a folder, not an image file", "choose a photo inside it")
    if not path.is_file():
        raise _error(label, "is not a regular file", "choose a photo file")
    try:
        fp = path.open("rb")
    except PermissionError:
        raise _error(
            label, "permission denied", "make the file readable or copy it somewhere readable"
        ) from None
    except OSError as exc:
        raise _error(label, f"cannot be read ({exc.strerror})", "choose another photo") from exc
    with fp:
        if os.fstat(fp.fileno()).st_size == 0:
            raise _error(label, "file is empty (0 bytes)", "choose another photo")
        return _decode(fp, path, max_pixels)


def load_image_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Load an uploaded photo from its bytes; ``name`` (the upload's file name) labels errors."""
    if not data:
        raise _error(name, "file is empty (0 bytes)", "choose another photo")
    return _decode(io.BytesIO(data), Path(name), max_pixels)


def iter_images(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Expand folders into their image files; pass every other path through, once each.

    A folder yields its files whose suffix is in :data:`IMAGE_EXTENSIONS` (any case), sorted by
    name, not recursing and skipping hidden files such as macOS ``._IMG_0001.jpg``. Files named
    explicitly are kept whatever their suffix, and paths that do not exist are yielded too, so
    that :func:`load_image` reports them in the batch instead of this generator raising.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                child
                for child in path.iterdir()
                if child.suffix.lower() in IMAGE_EXTENSIONS
                and not child.name.startswith(".")
                and child.is_file()
            )
            if not found:
                logger.warning("%s: folder has no image files", path)
        else:
            found = [path]
        for image_path in found:
            key = image_path.resolve()
            if key not in seen:
                seen.add(key)
                yield image_path


def load_many(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[list[LoadedImage], list[tuple[Path, str]]]:
    """Load every photo under ``paths`` (see :func:`iter_images`), never stopping on a bad one.

    Returns the loaded photos and, for each file that failed, ``(path, one-line reason)``.
    """
    loaded: list[LoadedImage] = []
    failures: list[tuple[Path, str]] = []
    for path in iter_images(paths):
        try:
            loaded.append(load_image(path, max_pixels))
        except ImageLoadError as exc:
            logger.warning("%s", exc)
            failures.append((path, str(exc)))
    return loaded, failures


def _error(label: str, reason: str, fix: str) -> ImageLoadError:
    return ImageLoadError(_CONTROL_CHARS.sub(" ", f"{label}: {reason}; {fix}"))


def _decode(fp: BinaryIO, path: Path, max_pixels: int) -> LoadedImage:
    label = str(path)
    try:
        with _identify(fp, label) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise _error(
                    label,
                    f"{width}x{height} = {width * height:,} pixels is above the limit of "
                    f"{max_pixels:,} pixels ({max_pixels / 1e6:g} MP)",
                    "downscale the photo, or raise max_pixels if you trust it",
                )
            rgb, notes = _first_frame_rgb(im)
    except ImageLoadError:
        raise
    except Exception as exc:  # Pillow's decoders raise many exception types on hostile data.
        detail = str(exc) or type(exc).__name__
        reason = f"file is truncated or damaged ({detail})"
        raise _error(label, reason, "re-export it or choose another photo") from exc
    for note in notes:
        logger.info("%s: %s", label, note)
    return LoadedImage(path=path, rgb=rgb, notes=notes, original_size=(width, height))


def _identify(fp: BinaryIO, label: str) -> ImageFile.ImageFile:
    """Read the header with the first format plugin that accepts it; decode no pixels.

    This is the plugin loop of ``PIL.Image.open`` without its decompression-bomb check, so that
    our own ``max_pixels`` check decides, with a message that names the file and the limit.
    """
    prefix = fp.read(16)
    im = _open_header(fp, prefix, label)
    if im is None and prefix[4:8] == b"ftyp" and prefix[8:12] in _HEIF_BRANDS:
        if not _enable_heif():
            raise _error(
                label,
                "HEIC/HEIF is not supported by this install",
                "convert to JPEG or `pip install pillow-heif`",
            )
        im = _open_header(fp, prefix, label)
    if im is None:
        raise _error(label, "not an image file this install can read", "choose a JPEG or PNG photo")
    return im


def _open_header(fp: BinaryIO, prefix: bytes, label: str) -> ImageFile.ImageFile | None:
    Image.init()
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        verdict = accept(prefix) if accept else True
        if not verdict or isinstance(verdict, str):  # a str says the plugin lacks its library
            continue
        fp.seek(0)
        try:
            return factory(fp, label)
        except _NOT_THIS_FORMAT:
            continue
    return None


@functools.cache
def _enable_heif() -> bool:
    """Register pillow-heif's HEIC/HEIF opener with Pillow if it is installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    logger.info("registered pillow-heif's HEIC/HEIF opener")
    return True


def _first_frame_rgb(im: ImageFile.ImageFile) -> tuple[np.ndarray, tuple[str, ...]]:
    """Decode the first frame, turn it upright and convert it to RGB ``uint8``."""
    notes: list[str] = []
    if getattr(im, "is_animated", False) and im.format != "MPO":  # MPO: photo + its previews
        kind = "multi-page" if im.format == "TIFF" else "animated"
        notes.append(f"{kind} image: used the first of {im.n_frames} frames")
    # 16-bit RGB(A) and LA open as 8-bit modes; their raw mode in the tile still says ";16".
    wide = any(";16" in str(tile.args) for tile in im.tile)
    im.load()
    orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation in range(2, 9):
        notes.append(f"EXIF orientation {orientation} applied")
    upright = ImageOps.exif_transpose(im)

    if upright.mode.startswith("I"):  # 16-bit (or 32-bit integer) grayscale
        levels = np.clip(np.asarray(upright), 0, 65535).astype(np.uint16)
        gray = (levels >> 8).astype(np.uint8)
        notes.append("16-bit image scaled to 8 bits")
        return np.repeat(gray[:, :, None], 3, axis=2), tuple(notes)
    if wide:
        notes.append("16-bit image scaled to 8 bits")

    if upright.has_transparency_data:
        rgba = upright.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes.append("transparency composited on white")
            rgba = Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba)
        rgb = rgba.convert("RGB")
    else:
        if upright.mode == "CMYK":
            notes.append("CMYK converted to RGB")
        elif upright.mode == "1":
            notes.append("1-bit image converted to RGB")
        elif upright.mode == "L":
            notes.append("grayscale image converted to RGB")
        rgb = upright.convert("RGB")
    return np.array(rgb, dtype=np.uint8), tuple(notes)
