"""Photo loading: awkward files become upright RGB, hostile ones a one-line reason."""

from __future__ import annotations

import os
import shutil
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
from hostile import BOMB_SIDE, BROKEN, raw_png
from PIL import ExifTags, Image, ImageFile

from studio import images
from studio.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    LoadedImage,
    iter_images,
    load_image,
    load_image_bytes,
    load_many,
)

RED = (255, 0, 0)
COLOUR = (200, 30, 40)
WHITE = (255, 255, 255)

EXPECTED_REASON = {
    "empty": "file is empty (0 bytes); choose another photo",
    "truncated-jpeg": "file is truncated or damaged (image file is truncated",
    "truncated-png": "file is truncated or damaged (image file is truncated",
    "text-named-jpg": "not an image file this install can read",
    "png-bomb": (
        f"{BOMB_SIDE}x{BOMB_SIDE} = {BOMB_SIDE**2:,} pixels is above the limit of "
        f"{DEFAULT_MAX_PIXELS:,} pixels (64 MP)"
    ),
    "heic-without-pillow-heif": (
        "HEIC/HEIF is not supported by this install; convert to JPEG or `pip install pillow-heif`"
    ),
}


@pytest.fixture(autouse=True)
def _without_pillow_heif(monkeypatch):
    """Run as on an install without pillow-heif, whatever this environment has."""
    monkeypatch.setitem(sys.modules, "pillow_heif", None)
    images._enable_heif.cache_clear()
    yield
    images._enable_heif.cache_clear()


def _save(path: Path, image: Image.Image, **params) -> Path:
    image.save(path, **params)
    return path


def _assert_reason(message: str, path: Path, fragment: str) -> None:
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert fragment in message


# --- real photos -------------------------------------------------------------------------


def test_real_portraits_load_as_rgb(faces_dir):
    for path in sorted(faces_dir.glob("*.jpg")):
        loaded = load_image(path)
        with Image.open(path) as im:
            expected = np.asarray(im.convert("RGB"))
        assert loaded.rgb.dtype == np.uint8
        assert loaded.rgb.shape == (*expected.shape[:2], 3)
        np.testing.assert_array_equal(loaded.rgb, expected)
        assert loaded.original_size == (expected.shape[1], expected.shape[0])
        assert loaded.notes == ()
        assert loaded.path == path


def test_bytes_load_like_the_file_and_errors_name_the_upload(faces_dir):
    path = faces_dir / "person_a_1.jpg"
    from_bytes = load_image_bytes(path.read_bytes(), "upload.jpg")
    np.testing.assert_array_equal(from_bytes.rgb, load_image(path).rgb)
    assert from_bytes.path == Path("upload.jpg")
    with pytest.raises(ImageLoadError) as caught:
        load_image_bytes(b"<html>404</html>", "upload.jpg")
    _assert_reason(str(caught.value), Path("upload.jpg"), "not an image file")


# --- hostile files ---------------------------------------------------------------------


@pytest.mark.parametrize("case", list(EXPECTED_REASON), ids=list(EXPECTED_REASON))
def test_broken_file_is_refused_with_one_line_reason(case, tmp_path):
    path = BROKEN[case](tmp_path)
    with pytest.raises(ImageLoadError) as caught:
        load_image(path)
    _assert_reason(str(caught.value), path, EXPECTED_REASON[case])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_every_broken_case_has_an_expected_reason():
    assert set(EXPECTED_REASON) == set(BROKEN)


def test_bomb_is_refused_from_its_header_without_decoding(tmp_path, monkeypatch):
    decoded: list[ImageFile.ImageFile] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: decoded.append(im))
    path = BROKEN["png-bomb"](tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not fire either
        with pytest.raises(ImageLoadError, match="above the limit"):
            load_image(path)
    assert decoded == []


def test_pixel_limit_is_inclusive_and_overridable(tmp_path):
    at_limit = _save(tmp_path / "at.png", Image.new("L", (200, 200)))
    above = _save(tmp_path / "above.png", Image.new("L", (201, 200)))
    assert load_image(at_limit, max_pixels=40_000).rgb.shape == (200, 200, 3)
    with pytest.raises(ImageLoadError) as caught:
        load_image(above, max_pixels=40_000)
    _assert_reason(str(caught.value), above, "40,200 pixels is above the limit of 40,000 pixels")


def test_pillows_own_bomb_limit_is_not_in_charge(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    path = _save(tmp_path / "big.png", Image.new("RGB", (100, 100), COLOUR))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_image(path)
    assert loaded.rgb.shape == (100, 100, 3)


def test_huge_legal_photo_is_kept_at_full_size(tmp_path):
    path = _save(tmp_path / "huge.png", Image.new("L", (6000, 5000), 40))
    loaded = load_image(path)
    assert loaded.rgb.shape == (5000, 6000, 3)
    assert loaded.original_size == (6000, 5000)
    assert loaded.rgb[-1, -1].tolist() == [40, 40, 40]


def test_missing_path_and_folder_are_refused(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageLoadError) as caught:
        load_image(missing)
    _assert_reason(str(caught.value), missing, "file does not exist")
    with pytest.raises(ImageLoadError) as caught:
        load_image(tmp_path)
    _assert_reason(str(caught.value), tmp_path, "is a folder, not an image file")


def test_unreadable_file_is_refused(tmp_path):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("running as root, where file permissions do not stop reading")
    path = _save(tmp_path / "locked.png", Image.new("RGB", (4, 4)))
    path.chmod(0)
    try:
        with pytest.raises(ImageLoadError) as caught:
            load_image(path)
    finally:
        path.chmod(0o644)
    _assert_reason(str(caught.value), path, "permission denied")


def test_control_characters_in_a_name_stay_on_one_line():
    with pytest.raises(ImageLoadError) as caught:
        load_image_bytes(b"", "evil\nname.jpg")
    assert str(caught.value) == "evil name.jpg: file is empty (0 bytes); choose another photo"


def test_heif_opener_is_registered_when_pillow_heif_is_installed(tmp_path, monkeypatch):
    calls: list[str] = []
    fake = types.SimpleNamespace(register_heif_opener=lambda: calls.append("registered"))
    monkeypatch.setitem(sys.modules, "pillow_heif", fake)
    path = BROKEN["heic-without-pillow-heif"](tmp_path)
    with pytest.raises(ImageLoadError, match="not an image file"):  # the fake opens nothing
        load_image(path)
    load_image(_save(tmp_path / "plain.png", Image.new("RGB", (2, 2))))
    assert calls == ["registered"]


# --- awkward but valid files -----------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "shape", "corner"),
    [
        (1, (40, 60), "top-left"),
        (3, (40, 60), "bottom-right"),
        (6, (60, 40), "top-right"),
        (8, (60, 40), "bottom-left"),
    ],
    ids=["normal", "rotate-180", "rotate-90-cw", "rotate-90-ccw"],
)
def test_exif_orientation_is_applied(orientation, shape, corner, tmp_path):
    landscape = Image.new("RGB", (60, 40), (128, 128, 128))
    landscape.paste(RED, (0, 0, 12, 12))  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    path = _save(tmp_path / "phone.jpg", landscape, exif=exif, quality=95)

    loaded = load_image(path)

    assert loaded.rgb.shape == (*shape, 3)
    assert loaded.original_size == (60, 40)
    patches = {
        "top-left": loaded.rgb[:6, :6],
        "top-right": loaded.rgb[:6, -6:],
        "bottom-left": loaded.rgb[-6:, :6],
        "bottom-right": loaded.rgb[-6:, -6:],
    }
    for name, patch in patches.items():
        red = patch[..., 0].mean() > 200 and patch[..., 1].mean() < 60
        assert red == (name == corner), name
    assert any("orientation" in note for note in loaded.notes) == (orientation != 1)


def test_16_bit_grayscale_png_uses_the_full_range(tmp_path):
    levels = np.tile(np.arange(256, dtype=np.uint16) * 257, (4, 1))  # 0 .. 65535
    path = _save(tmp_path / "scan16.png", Image.fromarray(levels))
    with Image.open(path) as im:
        assert im.mode == "I;16"

    loaded = load_image(path)

    np.testing.assert_array_equal(loaded.rgb[0, :, 0], np.arange(256))
    np.testing.assert_array_equal(loaded.rgb[..., 0], loaded.rgb[..., 2])
    assert "16-bit image scaled to 8 bits" in loaded.notes


def test_16_bit_rgb_png_is_scaled_per_channel(tmp_path):
    ramp = np.arange(256, dtype=np.uint32) * 257
    samples = np.stack([ramp, 65535 - ramp, np.full(256, 0x8000)], axis=1).astype(">u2")
    scanlines = (b"\x00" + samples.tobytes()) * 2
    path = tmp_path / "rgb16.png"
    path.write_bytes(raw_png(256, 2, bit_depth=16, color_type=2, scanlines=scanlines))

    loaded = load_image(path)

    np.testing.assert_array_equal(loaded.rgb[0, :, 0], np.arange(256))
    np.testing.assert_array_equal(loaded.rgb[0, :, 1], 255 - np.arange(256))
    assert set(loaded.rgb[..., 2].ravel().tolist()) == {128}
    assert "16-bit image scaled to 8 bits" in loaded.notes


def _rgba_png(folder: Path) -> Path:
    image = Image.new("RGBA", (2, 1))
    image.putdata([(0, 0, 0, 0), (*COLOUR, 255)])
    return _save(folder / "rgba.png", image)


def _la_png(folder: Path) -> Path:
    image = Image.new("LA", (2, 1))
    image.putdata([(0, 0), (COLOUR[0], 255)])
    return _save(folder / "la.png", image)


def _palette(colours: list[tuple[int, int, int]]) -> Image.Image:
    image = Image.new("P", (len(colours), 1))
    image.putpalette([channel for colour in colours for channel in colour])
    image.putdata(list(range(len(colours))))
    return image


def _palette_png_with_transparency(folder: Path) -> Path:
    return _save(folder / "p-trns.png", _palette([(0, 0, 0), COLOUR]), transparency=0)


def _gif_with_transparency(folder: Path) -> Path:
    return _save(folder / "p-trns.gif", _palette([(0, 0, 0), COLOUR]), transparency=0)


def _webp_rgba(folder: Path) -> Path:
    with Image.open(_rgba_png(folder)) as image:
        return _save(folder / "rgba.webp", image, lossless=True)


@pytest.mark.parametrize(
    ("write", "opaque"),
    [
        (_rgba_png, COLOUR),
        (_la_png, (COLOUR[0],) * 3),
        (_palette_png_with_transparency, COLOUR),
        (_gif_with_transparency, COLOUR),
        (_webp_rgba, COLOUR),
    ],
    ids=["rgba-png", "la-png", "palette-trns-png", "palette-trns-gif", "rgba-webp"],
)
def test_transparency_is_composited_on_white(write, opaque, tmp_path):
    loaded = load_image(write(tmp_path))
    assert loaded.rgb[0, 0].tolist() == list(WHITE)
    assert loaded.rgb[0, 1].tolist() == list(opaque)
    assert "transparency composited on white" in loaded.notes


def test_half_transparent_black_turns_mid_grey(tmp_path):
    path = _save(tmp_path / "half.png", Image.new("RGBA", (2, 2), (0, 0, 0, 128)))
    assert np.all(np.abs(load_image(path).rgb.astype(int) - 127) <= 1)


def test_opaque_alpha_channel_leaves_no_note(tmp_path):
    path = _save(tmp_path / "opaque.png", Image.new("RGBA", (2, 2), (*COLOUR, 255)))
    loaded = load_image(path)
    assert loaded.notes == ()
    assert loaded.rgb[0, 0].tolist() == list(COLOUR)


@pytest.mark.parametrize(
    ("name", "image", "params", "expected", "note"),
    [
        ("gray.png", Image.new("L", (8, 8), 77), {}, (77, 77, 77), "grayscale"),
        ("bilevel.png", Image.new("1", (8, 8), 1), {}, WHITE, "1-bit"),
        ("palette.png", _palette([COLOUR] * 8), {}, COLOUR, None),
        ("print.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0)), {}, RED, "CMYK"),
        ("plain.bmp", Image.new("RGB", (8, 8), COLOUR), {}, COLOUR, None),
        ("plain.tif", Image.new("RGB", (8, 8), COLOUR), {}, COLOUR, None),
        ("plain.webp", Image.new("RGB", (8, 8), COLOUR), {"lossless": True}, COLOUR, None),
    ],
    ids=["grayscale", "1-bit", "palette", "cmyk-jpeg", "bmp", "tiff", "webp"],
)
def test_colour_modes_become_rgb(name, image, params, expected, note, tmp_path):
    loaded = load_image(_save(tmp_path / name, image, **params))
    assert loaded.rgb.dtype == np.uint8
    assert loaded.rgb.shape[2] == 3
    np.testing.assert_allclose(loaded.rgb.reshape(-1, 3).mean(axis=0), expected, atol=2)
    if note is None:
        assert loaded.notes == ()
    else:
        assert any(note in n for n in loaded.notes), loaded.notes


@pytest.mark.parametrize(
    ("name", "params"),
    [("clip.gif", {}), ("clip.webp", {"lossless": True}), ("clip.png", {})],
    ids=["gif", "webp", "apng"],
)
def test_animation_uses_the_first_frame(name, params, tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, (0, 255, 0), (0, 0, 255))]
    path = _save(tmp_path / name, frames[0], save_all=True, append_images=frames[1:], **params)

    loaded = load_image(path)

    assert set(map(tuple, loaded.rgb.reshape(-1, 3).tolist())) == {RED}
    assert "animated image: used the first of 3 frames" in loaded.notes


# --- batches ---------------------------------------------------------------------------


def test_iter_images_expands_folders_and_keeps_explicit_files(tmp_path):
    album = tmp_path / "album"
    album.mkdir()
    for name in ("b.JPG", "a.png", "c.heic", "readme.txt", "._a.png"):
        (album / name).write_bytes(b"x")
    (album / "nested.jpg").mkdir()
    explicit = tmp_path / "scan.dat"
    explicit.write_bytes(b"x")
    missing = tmp_path / "missing.jpg"

    found = list(iter_images([album, explicit, missing, album / "a.png"]))

    assert found == [album / "a.png", album / "b.JPG", album / "c.heic", explicit, missing]
    assert list(iter_images(str(explicit))) == [explicit]


def test_load_many_keeps_going_past_every_bad_file(faces_dir, tmp_path):
    folder = tmp_path / "upload"
    folder.mkdir()
    faces = sorted(faces_dir.glob("*.jpg"))
    for face in faces:
        shutil.copy(face, folder)
    bad = {write(folder) for write in BROKEN.values()}
    missing = tmp_path / "gone.jpg"

    loaded, failures = load_many([folder, missing])

    assert all(isinstance(item, LoadedImage) for item in loaded)
    assert [item.path.name for item in loaded] == [face.name for face in faces]
    assert len(failures) == len(bad) + 1
    assert {path for path, _ in failures} == bad | {missing}
    for path, reason in failures:
        assert reason.startswith(f"{path}: ")
        assert "\n" not in reason
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
