"""Invisible watermark: robustness, no false positives, provenance in saved PNGs, the CLI."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from skimage import data

from studio import watermark
from studio.cli import main
from studio.images import load_image
from studio.outputs import DIGITAL_SOURCE_TYPE, GenerationRecord, read_provenance, save_image

PORTRAIT = "person_b_1.jpg"


def _record(width: int, height: int) -> GenerationRecord:
    return GenerationRecord(
        prompt="a portrait",
        negative_prompt="",
        seed=5,
        steps=2,
        guidance=5.0,
        width=width,
        height=height,
        sampler="EulerDiscrete",
        model_set="tiny",
    )


def _reencode(rgb: np.ndarray, fmt: str, **kwargs) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **kwargs)
    return np.asarray(Image.open(buf).convert("RGB"))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.fixture(scope="module", params=["astronaut", PORTRAIT])
def pair(request, faces_dir) -> tuple[np.ndarray, np.ndarray]:
    """An original RGB image and its marked copy."""
    name = request.param
    rgb = data.astronaut() if name == "astronaut" else load_image(faces_dir / name).rgb
    return rgb, watermark.embed(rgb)


def test_mark_is_invisible_and_survives_png(pair):
    original, marked = pair
    assert marked.shape == original.shape and marked.dtype == np.uint8
    assert _psnr(original, marked) >= 38
    reloaded = _reencode(marked, "PNG")
    assert np.array_equal(reloaded, marked)
    assert watermark.detect(reloaded) == watermark.WatermarkResult(True, 1.0)


@pytest.mark.parametrize(
    "edit",
    [
        lambda rgb: _reencode(rgb, "JPEG", quality=90),
        lambda rgb: np.asarray(ImageEnhance.Brightness(Image.fromarray(rgb)).enhance(1.1)),
        lambda rgb: np.clip(rgb.astype(np.int16) - 8, 0, 255).astype(np.uint8),
    ],
    ids=["jpeg90", "brightness+10%", "darker-8"],
)
def test_mark_survives_mild_edits(pair, edit):
    result = watermark.detect(edit(pair[1]))
    assert result.found and result.bit_accuracy >= watermark.THRESHOLD


def test_mark_is_gone_after_a_crop(pair):
    assert not watermark.detect(pair[1][8:, 8:]).found


def test_unmarked_photos_are_not_detected(faces_dir):
    photos = [data.astronaut()] + [load_image(p).rgb for p in sorted(faces_dir.glob("*.jpg"))]
    for rgb in photos:
        result = watermark.detect(rgb)
        assert not result.found and result.bit_accuracy < watermark.THRESHOLD


def test_odd_sizes_mark_only_the_block_region_and_keep_pil_type():
    rgb = np.ascontiguousarray(data.astronaut()[3:304, 5:462])  # 301 x 457
    marked = watermark.embed(Image.fromarray(rgb))
    assert isinstance(marked, Image.Image) and marked.size == (457, 301)
    out = np.asarray(marked)
    assert np.array_equal(out[288:], rgb[288:]) and np.array_equal(out[:, 448:], rgb[:, 448:])
    assert not np.array_equal(out[:288, :448], rgb[:288, :448])
    assert watermark.detect(marked).found


def test_small_images_are_left_unmarked_with_a_reason():
    rgb = data.astronaut()[:255, :400].copy()
    assert np.array_equal(watermark.embed(rgb), rgb)
    result = watermark.detect(rgb)
    assert not result.found and "256" in result.reason


def test_rejects_arrays_that_are_not_rgb_uint8():
    with pytest.raises(ValueError, match="RGB uint8"):
        watermark.embed(np.zeros((300, 300), np.uint8))


def test_save_image_writes_a_marked_png_with_provenance(tmp_path):
    image = Image.fromarray(data.astronaut())
    path = save_image(image, _record(512, 512), tmp_path)
    png = Image.open(path)
    assert png.text["parameters"].startswith("a portrait\n")
    assert watermark.detect(png).found
    prov = read_provenance(path)
    assert prov["ai_generated"] == "true" and prov["model_set"] == "tiny"
    assert prov["software"].startswith("Portrait Studio ")
    assert prov["digital_source_type"] == DIGITAL_SOURCE_TYPE
    assert prov["watermark"] == watermark.WATERMARK_ID
    assert DIGITAL_SOURCE_TYPE in png.info["XML:com.adobe.xmp"]
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["provenance"] == prov and sidecar["seed"] == 5


def test_save_image_says_when_an_image_was_too_small_to_mark(tmp_path):
    path = save_image(Image.new("RGB", (64, 64), "gray"), _record(64, 64), tmp_path)
    assert read_provenance(path)["watermark"].startswith("none")


def test_verify_watermark_cli(tmp_path, studio_env, capsys):
    marked = save_image(Image.fromarray(data.astronaut()), _record(512, 512), tmp_path / "out")
    plain = tmp_path / "plain.png"
    Image.fromarray(data.astronaut()).save(plain)

    assert main(["verify-watermark", str(marked), str(plain)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{marked}: Portrait Studio mark found (bit accuracy 1.00)"
    assert "  ai_generated: true" in lines and "  model_set: tiny" in lines
    assert lines[-1].startswith(f"{plain}: Portrait Studio mark not found")

    assert main(["verify-watermark", "--json", str(marked), str(plain)]) == 0
    got = json.loads(capsys.readouterr().out)
    keys = {"path", "found", "bit_accuracy", "reason", "provenance", "error"}
    assert [set(e) for e in got] == [keys, keys]
    assert got[0]["found"] and got[0]["bit_accuracy"] == 1.0
    assert got[0]["provenance"]["digital_source_type"] == DIGITAL_SOURCE_TYPE
    assert not got[1]["found"] and got[1]["provenance"] == {} and got[1]["error"] is None


def test_verify_watermark_cli_reports_unreadable_files(tmp_path, studio_env, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    missing = Path(tmp_path / "missing.png")
    assert main(["verify-watermark", str(broken), str(missing)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{broken}: error:") and lines[1].startswith(f"{missing}: error:")
