"""Training photo selection (real portraits), crop augmentation and captions."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hostile import noise, write_empty, write_text_as_jpeg
from PIL import Image

from studio.errors import ConfigError
from studio.faces.analyzer import FaceAnalyzer
from studio.faces.encoders import SFACE_COSINE_THRESHOLD
from studio.profiles.errors import NoUsablePhotosError
from studio.training.augment import AugmentConfig, augment, variants
from studio.training.captions import caption, check_token
from studio.training.photos import MAX_CAPTION_BYTES, read_tags, select_photos
from studio.training.types import PhotoSet

RESOLUTION = 256


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, faces_dir) -> Path:
    """person_b's two photos (one with a caption file), an impostor and two broken files."""
    folder = tmp_path_factory.mktemp("mixed")
    for name in ("person_b_1", "person_b_2", "impostor_1"):
        shutil.copy(faces_dir / f"{name}.jpg", folder)
    (folder / "person_b_1.txt").write_text("smiling,  outdoors ,,\n")
    write_empty(folder)
    write_text_as_jpeg(folder)
    return folder


@pytest.fixture(scope="module")
def selected(mixed, analyzer) -> PhotoSet:
    return select_photos(mixed, analyzer, resolution=RESOLUTION)


def _outcomes(photos: PhotoSet) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {Path(o.file).name: (o.status, o.reasons) for o in photos.rejected}


def test_the_persons_photos_are_used_the_impostor_rejected_and_bad_files_skipped(selected):
    assert [p.source.name for p in selected.used] == ["person_b_1.jpg", "person_b_2.jpg"]
    assert [p.tags for p in selected.used] == [("smiling", "outdoors"), ()]
    assert all(p.embedding.encoder == "sface" for p in selected.used)
    assert selected.used[0].embedding.similarity(selected.used[1].embedding) > 0.5

    outcomes = _outcomes(selected)
    assert outcomes["empty.jpg"] == ("skipped", ("file is empty (0 bytes); choose another photo",))
    status, reasons = outcomes["notes.jpg"]
    assert status == "skipped" and reasons[0].startswith("not an image file")
    (impostor,) = [o for o in selected.rejected if o.status == "rejected"]
    assert Path(impostor.file).name == "impostor_1.jpg"
    assert impostor.similarity is not None and impostor.similarity < SFACE_COSINE_THRESHOLD
    assert impostor.reasons == (
        f"does not match the other photos (similarity {impostor.similarity:.2f} < 0.363)",
    )

    (warning,) = selected.warnings
    assert warning.startswith("only 2 usable photos: likeness will suffer") and "5–20" in warning


def test_crops_are_square_rgb_at_the_resolution_with_the_face_centred(selected, analyzer):
    for photo in selected.used:
        assert photo.crop.shape == (RESOLUTION, RESOLUTION, 3) and photo.crop.dtype == np.uint8
        (face,) = analyzer.analyze(photo.crop)
        x, y, w, h = face.bbox
        centre = np.array([x + w / 2, y + h / 2]) / RESOLUTION
        assert np.all(np.abs(centre - 0.5) < 0.1), centre
        assert 0.15 < w / RESOLUTION < 0.6  # head and shoulders, not a face close-up
        assert face.embeddings["sface"] @ photo.embedding.vector > 0.8


def test_caption_file_problems_become_notes(tmp_path):
    photo = tmp_path / "a.jpg"
    assert read_tags(photo) == ((), ())
    (tmp_path / "a.txt").write_text("x, " * MAX_CAPTION_BYTES)
    assert read_tags(photo) == ((), ("caption file a.txt ignored: larger than 2048 bytes",))
    (tmp_path / "a.txt").write_bytes(b"\xff\xfe smiling")
    assert read_tags(photo) == ((), ("caption file a.txt ignored: not UTF-8 text",))
    (tmp_path / "a.txt").unlink()
    (tmp_path / "a.txt").mkdir()
    tags, notes = read_tags(photo)
    assert tags == () and notes[0].startswith("caption file a.txt ignored: ")
    (tmp_path / "b.txt").write_text("\ufeffred hair\nglasses , ")
    assert read_tags(tmp_path / "b.png") == (("red hair", "glasses"), ())


def test_no_usable_photo_raises_listing_every_file(tmp_path, faces_dir, analyzer):
    for name in ("person_a_1", "person_b_1"):
        shutil.copy(faces_dir / f"{name}.jpg", tmp_path)
    Image.fromarray(noise(200, 200)).save(tmp_path / "noise.png")
    write_empty(tmp_path)
    with pytest.raises(NoUsablePhotosError) as caught:
        select_photos(tmp_path, analyzer, resolution=RESOLUTION)
    lines = str(caught.value).splitlines()
    assert lines[0] == "no usable photo to train on:"
    assert lines[1] == f"  {tmp_path / 'empty.jpg'}: file is empty (0 bytes); choose another photo"
    assert lines[2].startswith(f"  {tmp_path / 'noise.png'}: no face found")
    for line, name in zip(lines[3:5], ("person_a_1", "person_b_1"), strict=True):
        assert line.startswith(f"  {tmp_path / name}.jpg: the two photos do not match each other")
    assert len(lines) == 6 and "5–20" in lines[5] and lines[5].endswith("then run again.")

    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(NoUsablePhotosError, match="no photo found to train on"):
        select_photos(empty, analyzer, resolution=RESOLUTION)


def test_an_encoder_the_analyzer_lacks_is_a_clear_error(faces_dir, analyzer):
    with pytest.raises(ValueError, match=r"encoder 'arcface' is not loaded .*\(it has sface\)"):
        select_photos([faces_dir], analyzer, resolution=RESOLUTION, encoder="arcface")


# Augmentation


def test_variants_are_the_crop_its_mirror_then_deterministic_jitter(selected, analyzer):
    photo = selected.used[0]
    crop = photo.crop
    first = variants(crop, 6, seed=7)
    assert len(first) == 6 and all(v.shape == crop.shape and v.dtype == np.uint8 for v in first)
    assert np.array_equal(first[0], crop) and np.array_equal(first[1], np.fliplr(crop))
    assert all(np.array_equal(a, b) for a, b in zip(first, variants(crop, 6, seed=7), strict=True))
    assert not np.array_equal(first[2], variants(crop, 3, seed=8)[2])
    assert [len(variants(crop, n, seed=0)) for n in (1, 2)] == [1, 2]
    for variant in first[2:]:
        difference = np.abs(variant.astype(np.float32) - crop).mean()
        assert 1.0 < difference < 64.0
        (face,) = analyzer.analyze(variant)
        assert face.embeddings["sface"] @ photo.embedding.vector > 0.8
    with pytest.raises(ValueError, match="count must be at least 1"):
        variants(crop, 0, seed=0)


def test_augment_limits_are_applied(selected):
    crop = selected.used[1].crop
    still = AugmentConfig(flip_probability=0, scale=0, shift=0, brightness=0, contrast=0)
    unchanged = AugmentConfig(**{**vars(still), "saturation": 0})
    assert np.array_equal(augment(crop, np.random.default_rng(0), unchanged), crop)
    mirrored = AugmentConfig(**{**vars(unchanged), "flip_probability": 1})
    assert np.array_equal(augment(crop, np.random.default_rng(0), mirrored), np.fliplr(crop))
    # Saturation alone leaves gray pixels as they were.
    gray = np.repeat(crop.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    assert np.array_equal(augment(gray, np.random.default_rng(1), still), gray)
    with pytest.raises(ValueError, match="expected an RGB uint8"):
        augment(crop.astype(np.float32), np.random.default_rng(0))


# Captions


def test_captions_and_token_checks():
    assert caption("ohwx", "person") == "a photo of ohwx person"
    assert caption("ohwx", "woman", ("smiling", "outdoors")) == (
        "a photo of ohwx woman, smiling, outdoors"
    )
    for good in ("ohwx", "<sks>", "zoë_b-2", "x" * 32):
        assert check_token(good, "--trigger") == good
    for bad in ("", "two words", "a,b", "x" * 33, " ohwx"):
        with pytest.raises(ConfigError, match="^--class-word "):
            check_token(bad, "--class-word")
