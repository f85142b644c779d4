"""``analyze`` and ``compare`` from the shell: exact JSON contracts and hostile inputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hostile import BROKEN
from PIL import Image

from studio.cli import main

FACE_KEYS = {"bbox", "score", "kps", "pose", "quality"}


def run_json(capsys, *args):
    code = main(list(args))
    return code, json.loads(capsys.readouterr().out)


def test_analyze_json_contract(studio_env, faces_dir, capsys):
    code, results = run_json(capsys, "analyze", str(faces_dir / "person_a_1.jpg"), "--json")
    assert code == 0
    (entry,) = results
    assert set(entry) == {"path", "faces", "notes", "error"}
    assert entry["path"].endswith("person_a_1.jpg") and entry["error"] is None
    (face,) = entry["faces"]
    assert set(face) == FACE_KEYS
    assert len(face["bbox"]) == 4 and all(isinstance(v, float) for v in face["bbox"])
    assert len(face["kps"]) == 5 and all(len(p) == 2 for p in face["kps"])
    assert set(face["pose"]) == {"yaw", "pitch", "roll"}
    assert face["quality"] == {"ok": True, "reasons": []}
    assert 0.5 < face["score"] <= 1


@pytest.fixture
def awkward_corpus(tmp_path, faces_dir):
    """Valid but awkward encodings of a real portrait, plus photos the studio must refuse."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    portrait = Image.open(faces_dir / "person_b_2.jpg")
    rotated = portrait.transpose(Image.Transpose.ROTATE_90)  # stored sideways...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...and the camera says: rotate 90° clockwise to view
    rotated.save(folder / "exif_rotated.jpg", exif=exif)
    portrait.convert("CMYK").save(folder / "cmyk.jpg")
    grey16 = (np.asarray(portrait.convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "grey16.png")
    portrait.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    rgba = portrait.convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, np.uint8)
    alpha[:, :40] = 0
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(folder / "rgba.png")
    portrait.convert("L").save(folder / "grey.jpg")
    frames = [portrait.convert("P"), Image.new("P", portrait.size)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    portrait.resize((portrait.width * 5, portrait.height * 5)).save(folder / "huge.jpg", quality=80)
    Image.new("RGB", (400, 300), (90, 140, 200)).save(folder / "no_face.png")
    portrait.resize((portrait.width // 6, portrait.height // 6)).save(folder / "tiny_face.jpg")
    for case, write in BROKEN.items():
        path = write(folder)
        path.rename(folder / f"broken-{case}{path.suffix}")
    return folder


def test_analyze_hostile_and_awkward_corpus(studio_env, awkward_corpus, capsys):
    code, results = run_json(capsys, "analyze", str(awkward_corpus), "--json")
    assert code == 1, "some inputs failed, so the exit code is 1"
    by_name = {os.path.basename(e["path"]): e for e in results}
    broken = {n: e for n, e in by_name.items() if n.startswith("broken-")}
    assert len(broken) == len(BROKEN)
    for name, entry in broken.items():
        assert entry["faces"] == [] and entry["error"], name
        assert name in entry["error"] and "\n" not in entry["error"]
    for name in (
        "exif_rotated.jpg",
        "cmyk.jpg",
        "grey16.png",
        "palette.png",
        "rgba.png",
        "grey.jpg",
        "animated.gif",
        "huge.jpg",
    ):
        entry = by_name[name]
        assert entry["error"] is None, (name, entry["error"])
        assert len(entry["faces"]) == 1, name
        assert entry["faces"][0]["quality"]["ok"], (name, entry["faces"][0]["quality"])
    assert by_name["exif_rotated.jpg"]["notes"] == ["EXIF orientation 6 applied"]
    eyes = by_name["exif_rotated.jpg"]["faces"][0]["kps"][:2]
    assert abs(eyes[0][1] - eyes[1][1]) < 20, "face should be upright after EXIF rotation"
    assert any("first of 2 frames" in n for n in by_name["animated.gif"]["notes"])
    assert by_name["huge.jpg"]["faces"][0]["bbox"][2] > 1000, "boxes in original pixels"
    assert by_name["no_face.png"]["faces"] == [] and by_name["no_face.png"]["error"] is None
    tiny = by_name["tiny_face.jpg"]["faces"][0]["quality"]
    assert not tiny["ok"] and tiny["reasons"][0].startswith("face too small")


def test_analyze_never_prints_a_traceback(tmp_path, studio_env):
    bad = tmp_path / "photo.jpg"
    bad.write_text("not an image")
    done = subprocess.run(
        [sys.executable, "-m", "studio", "analyze", str(bad), str(tmp_path / "missing.jpg")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert "photo.jpg: error:" in done.stdout and "missing.jpg: error:" in done.stdout


@pytest.mark.parametrize("encoder", ["sface", "dlib"])
def test_compare_json_contract_and_verdicts(studio_env, faces_dir, capsys, encoder):
    a1, a2, imp = (str(faces_dir / f"{n}.jpg") for n in ("person_a_1", "person_a_2", "impostor_2"))
    code, same = run_json(capsys, "compare", a1, a2, "--encoder", encoder, "--json")
    assert code == 0
    assert set(same) == {"encoder", "similarity", "threshold", "same_person"}
    assert same["encoder"] == encoder and same["same_person"] is True
    assert same["similarity"] > same["threshold"]
    code, other = run_json(capsys, "compare", a1, imp, "--encoder", encoder, "--json")
    assert code == 0 and other["same_person"] is False and other["similarity"] < other["threshold"]


def test_compare_errors_name_the_input(studio_env, faces_dir, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), "white").save(blank)
    assert main(["compare", str(faces_dir / "person_a_1.jpg"), str(blank)]) == 1
    assert f"error: {blank}: no face found" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nope.jpg"), str(blank)]) == 1
    assert "nope.jpg: file does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", "a.jpg", "b.jpg", "--encoder", "facenet"])
    assert "invalid choice: 'facenet'" in capsys.readouterr().err


def test_compare_arcface_offline_says_where_the_weights_go(studio_env, faces_dir, capsys):
    a = str(faces_dir / "person_a_1.jpg")
    assert main(["compare", a, a, "--encoder", "arcface"]) == 1
    err = capsys.readouterr().err
    assert "component 'arcface'" in err and "w600k_r50.onnx" in err


def test_compare_arcface_uses_the_catalog_file(studio_env, faces_dir, capsys):
    from synthetic_models import arcface_like_model

    # The catalog's ArcFace for face analysis is buffalo_l's w600k_r50.onnx; a user who has it
    # places it in the models dir under the repository's layout.
    target = studio_env / "models/public-data/insightface/models/buffalo_l/w600k_r50.onnx"
    target.parent.mkdir(parents=True)
    arcface_like_model(target)
    a1, a2 = (str(faces_dir / f"{n}.jpg") for n in ("person_a_1", "person_a_2"))
    code, result = run_json(capsys, "compare", a1, a2, "--encoder", "arcface", "--json")
    assert code == 0
    assert result["encoder"] == "arcface" and result["threshold"] == 0.28
    assert -1.0 <= result["similarity"] <= 1.0
