"""Hostile image files for the loader's tests, written at test time (no binary junk in git).

Each writer builds one file in the given folder from Pillow, numpy or raw bytes and returns its
path. :data:`BROKEN` maps a case id to the writer of a file that the studio must refuse.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BOMB_SIDE = 30_000


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, *, bit_depth: int, color_type: int, scanlines: bytes) -> bytes:
    """A PNG written by hand, for what Pillow will not write (16-bit RGB, a lying header).

    ``scanlines`` are the filtered rows (a filter byte, then the samples, per row); they are
    compressed into a single IDAT chunk whatever the header claims.
    """
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(scanlines))
        + png_chunk(b"IEND", b"")
    )


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random RGB ``uint8`` pixels: they compress badly, so a cut lands inside the image data."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def write_empty(folder: Path) -> Path:
    path = folder / "empty.jpg"
    path.write_bytes(b"")
    return path


def write_truncated_jpeg(folder: Path) -> Path:
    data = encoded(noise(64, 64), "JPEG")
    path = folder / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    return path


def write_truncated_png(folder: Path) -> Path:
    data = encoded(noise(64, 64), "PNG")
    path = folder / "truncated.png"
    path.write_bytes(data[: len(data) * 6 // 10])
    return path


def write_text_as_jpeg(folder: Path) -> Path:
    path = folder / "notes.jpg"
    path.write_text("shopping list: eggs, milk, a better camera\n")
    return path


def write_png_bomb(folder: Path) -> Path:
    """A valid-looking 8-bit grayscale PNG whose header claims 30000x30000 (900 MB of pixels)."""
    path = folder / "bomb.png"
    one_row = b"\x00" + bytes(BOMB_SIDE)
    path.write_bytes(raw_png(BOMB_SIDE, BOMB_SIDE, bit_depth=8, color_type=0, scanlines=one_row))
    return path


def write_heic(folder: Path) -> Path:
    """The start of an iPhone HEIC: an ISO-BMFF ``ftyp`` box with the ``heic`` brand."""
    path = folder / "IMG_0001.heic"
    ftyp = b"ftyp" + b"heic" + bytes(4) + b"mif1" + b"heic"
    path.write_bytes(struct.pack(">I", 4 + len(ftyp)) + ftyp + bytes(64))
    return path


BROKEN: dict[str, Callable[[Path], Path]] = {
    "empty": write_empty,
    "truncated-jpeg": write_truncated_jpeg,
    "truncated-png": write_truncated_png,
    "text-named-jpg": write_text_as_jpeg,
    "png-bomb": write_png_bomb,
    "heic-without-pillow-heif": write_heic,
}
