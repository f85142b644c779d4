"""Every command meets every kind of user mistake with one line on stderr and a non-zero exit.

One line that names the input at fault and the fix, never a traceback: a missing file, an
unreadable image, a bad number, an unknown profile, style or model set, missing weights, a bad
adapter checkpoint, a bad setting.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from studio.cli import main

NOT_OURS = re.compile(
    r"^\s*$"  # what a progress bar leaves when it clears itself
    r"|\d+/\d+ \[[^\]]*\]"  # tqdm progress bars (model loading, denoising)
    r"|^[WI]\d{4} |^INFO: Created TensorFlow|^WARNING: All log messages before absl"  # mediapipe
)
"""Lines on stderr that the studio does not write: progress bars and mediapipe's native log."""


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if not NOT_OURS.search(line)]


def _fails(capsys, argv: list[str], *naming: str, code: int | None = None) -> str:
    """Run ``python -m studio ARGV`` in-process; check the one-line error; return it."""
    try:
        got = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        got = exc.code
    err = capsys.readouterr().err
    assert got != 0 and (code is None or got == code), err
    assert "Traceback" not in err
    lines = _error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in naming:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def junk(tmp_path) -> Path:
    """A file named like a photo that is not one."""
    path = tmp_path / "junk.jpg"
    path.write_text("not an image")
    return path


@pytest.fixture
def missing(tmp_path) -> str:
    return str(tmp_path / "nowhere.jpg")


# Settings every command reads


@pytest.mark.parametrize(
    "command",
    [
        ["generate", "--prompt", "x"],
        ["portrait", "--profile", "A"],
        ["analyze", "x.jpg"],
        ["compare", "a.jpg", "b.jpg"],
        ["profile", "list"],
        ["train-lora", "--photos", "x"],
        ["models", "list"],
        ["doctor"],
        ["verify-watermark", "x.png"],
    ],
)
def test_bad_settings_fail_every_command_in_one_line(studio_env, capsys, command, tmp_path):
    _fails(capsys, [*command, "--config", str(tmp_path / "none.toml")], "none.toml", "--config")
    _fails(capsys, [*command, "--device", "tpu"], "device 'tpu'", "cuda:N")
    _fails(capsys, [*command, "--weights", "faceid"], "--weights", "COMPONENT=PATH", code=2)
    _fails(capsys, [*command, "--no-such-flag"], "--no-such-flag", "--help", code=2)


# generate


def test_generate_mistakes(tiny_env, capsys, tmp_path):
    out = ["--out", str(tmp_path / "out")]
    _fails(capsys, ["generate", "--prompt", "x", "--n", "two", *out], "--n", "'two'", code=2)
    _fails(capsys, ["generate", "--prompt", "x", "--n", "99", *out], "--n 99", "use 1 to 8")
    _fails(capsys, ["generate", "--prompt", "x", "--seed", "-1", *out], "--seed -1")
    _fails(capsys, ["generate", "--prompt", "x", "--steps", "0", *out], "--steps 0")
    _fails(capsys, ["generate", "--prompt", "x", "--guidance", "99", *out], "--guidance 99")
    _fails(capsys, ["generate", "--prompt", "x", "--height", "100", *out], "--height 100")
    _fails(capsys, ["generate", "--prompt", "x", "--models", "nope", *out], "--models 'nope'")
    _fails(capsys, ["generate", "--prompt", "x", "--models", str(tmp_path), *out], "--models")
    _fails(capsys, ["generate", *out], "--prompt", code=2)
    assert not (tmp_path / "out").exists()


def test_generate_missing_weights_offline(studio_env, capsys):
    _fails(
        capsys, ["generate", "--models", "sd15", "--prompt", "x"], "component 'base'", "--weights"
    )
    _fails(
        capsys,
        ["generate", "--models", "sd15", "--prompt", "x", "--weights", "base=/nowhere"],
        "--weights base=/nowhere",
        "fix the path",
    )


# portrait


def test_portrait_mistakes_before_a_profile_exists(tiny_env, capsys):
    _fails(capsys, ["portrait"], "--profile")
    _fails(capsys, ["portrait", "--profile", "nobody", "--style", "x"], "no profile named 'nobody'")
    a = ["portrait", "--profile", "A", "--prompt", "x"]
    _fails(capsys, ["portrait", "--profile", "A"], "choose a style or write a prompt")
    _fails(capsys, [*a, "--n", "0"], "number of images 0", "use 1 to 8")
    _fails(capsys, [*a, "--identity-scale", "3"], "identity strength 3.0", "use 0 to 1.5")
    _fails(capsys, ["portrait", "--profile", "A", "--models", "nope"], "--models 'nope'")
    _fails(capsys, ["portrait", "--profile", "A", "--seed", "x"], "--seed", code=2)
    _fails(capsys, [*a, "--edit", "age"], "--edit", "'age'", "NAME=AMOUNT", code=2)
    _fails(capsys, [*a, "--edit", "age=old"], "--edit", "'age=old'", "NAME=AMOUNT", code=2)
    _fails(capsys, [*a, "--edit", "age=9"], "--edit", "amount 9 is out of range", code=2)
    _fails(capsys, [*a, "--wplus-scale", "x"], "--wplus-scale", code=2)
    _fails(capsys, [*a, "--wplus-scale", "3"], "W+ scale 3.0", "use 0 to 1.5")
    _fails(capsys, [*a, "--edit", "gills=1"], "unknown edit direction 'gills'", "age, smile")
    _fails(capsys, [*a, "--edit", "age=1", "--models", "tiny-xl"], "'tiny-xl' has none")


def test_portrait_mistakes_with_a_profile(tiny_env, faces_dir, capsys, tmp_path, missing, junk):
    photos = [str(faces_dir / f"person_a_{i}.jpg") for i in (1, 2)]
    assert main(["profile", "create", "Ada", "--photos", *photos, "--consent"]) == 0
    capsys.readouterr()
    ada = ["portrait", "--profile", "Ada", "--steps", "1", "--out", str(tmp_path / "out")]
    _fails(capsys, [*ada, "--style", "oil-paintin"], "unknown style 'oil-paintin'", "did you mean")
    _fails(capsys, [*ada, "--prompt", "x", "--pose", missing], "pose reference", "nowhere.jpg")
    _fails(capsys, [*ada, "--prompt", "x", "--pose", str(junk)], "pose reference", "junk.jpg")
    _fails(capsys, [*ada, "--prompt", "x", "--swap-face", "left"], "--swap-face 'left'", "number")
    # An adapter checkpoint that is not one, and one that is unsafe to unpickle.
    bad = tmp_path / "faceid.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    _fails(capsys, [*ada, "--prompt", "x", "--weights", f"faceid={bad}"], "faceid.safetensors")
    foreign = tmp_path / "lora.safetensors"  # readable, but no identity adapter
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 8)}, foreign)
    _fails(capsys, [*ada, "--prompt", "x", "--weights", f"faceid={foreign}"], "lora.safetensors")
    pickled = tmp_path / "faceid.bin"
    pickled.write_bytes(b"\x80\x04K\x01.")  # a pickled int, not a state dict
    _fails(capsys, [*ada, "--prompt", "x", "--weights", f"faceid={pickled}"], "faceid.bin")
    assert not (tmp_path / "out").exists()


# analyze, compare, verify-watermark


def test_analyze_and_verify_watermark_report_each_bad_input(studio_env, capsys, missing, junk):
    for command in ("analyze", "verify-watermark"):
        line = _fails(capsys, [command, missing, str(junk)], "2 of 2", "nowhere.jpg", "junk.jpg")
        assert "could not be read" in line
    _fails(capsys, ["analyze"], "PATH", code=2)


def test_compare_mistakes(studio_env, faces_dir, capsys, missing, junk, tmp_path):
    a = str(faces_dir / "person_a_1.jpg")
    _fails(capsys, ["compare", a, missing], "nowhere.jpg", "file does not exist")
    _fails(capsys, ["compare", a, str(junk)], "junk.jpg")
    _fails(capsys, ["compare", a, a, "--encoder", "facenet"], "'facenet'", code=2)
    _fails(capsys, ["compare", a, a, "--encoder", "arcface"], "component 'arcface'")
    _fails(capsys, ["compare", a], "B", code=2)


# profile


def test_profile_mistakes(studio_env, faces_dir, capsys, missing, junk):
    a = str(faces_dir / "person_a_1.jpg")
    _fails(capsys, ["profile", "create", "A", "--photos", a], "--consent")
    _fails(capsys, ["profile", "create", "a/b", "--photos", a, "--consent"], "'a/b'")
    _fails(capsys, ["profile", "create", "A", "--photos", missing, "--consent"], "nowhere.jpg")
    _fails(capsys, ["profile", "create", "A", "--photos", str(junk), "--consent"], "junk.jpg")
    _fails(capsys, ["profile", "create", "A", "--photos", a, "--encoder", "x"], "'x'", code=2)
    for action in (["add", "nobody", a], ["remove", "nobody", "x.jpg"], ["show", "nobody"]):
        _fails(capsys, ["profile", *action], "no profile named 'nobody'")
    _fails(capsys, ["profile", "delete", "nobody"], "no profile named 'nobody'")
    _fails(capsys, ["profile", "frobnicate"], "'frobnicate'", code=2)


# train-lora, and python -m studio.train_lora


def test_train_lora_mistakes(tiny_env, capsys, tmp_path, missing, junk):
    out = ["--out", str(tmp_path / "run"), "--models", "tiny"]
    _fails(capsys, ["train-lora", "--photos", missing, *out], "nowhere.jpg")
    _fails(capsys, ["train-lora", "--photos", str(junk), *out], "junk.jpg", "no usable photo")
    _fails(capsys, ["train-lora", "--profile", "nobody", *out], "no profile named 'nobody'")
    _fails(capsys, ["train-lora", "--photos", str(junk), "--steps", "0", *out], "--steps")
    _fails(capsys, ["train-lora", "--photos", str(junk), "--rank", "four"], "--rank", code=2)
    _fails(capsys, ["train-lora", "--photos", str(junk), "--models", "nope"], "'nope'")
    assert not (tmp_path / "run" / "run.json").exists()


def test_python_m_studio_train_lora_fails_in_one_line(tiny_env, tmp_path):
    """Its own entry point: a separate process, as users start it."""
    for argv, code, naming in (
        (["--photos", "x", "--steps", "0"], 2, "--steps"),
        (["--profile", "nobody", "--models", "tiny"], 1, "no profile named 'nobody'"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "studio.train_lora", *argv],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
            timeout=300,
        )
        assert done.returncode == code and "Traceback" not in done.stderr
        lines = _error_lines(done.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        assert naming in lines[0]


# models and doctor


def test_models_mistakes(studio_env, capsys):
    _fails(capsys, ["models", "fetch", "nope"], "unknown model set 'nope'", "known: tiny")
    _fails(capsys, ["models", "fetch", "sd15"], "component 'base'", "models fetch sd15")
    _fails(capsys, ["models"], "ACTION", code=2)


def test_doctor_with_a_bad_environment(studio_env, capsys, monkeypatch):
    monkeypatch.setenv("STUDIO_DTYPE", "float8")
    _fails(capsys, ["doctor"], "dtype 'float8'")
    monkeypatch.delenv("STUDIO_DTYPE")
    monkeypatch.setenv("STUDIO_FACES_DEVICE", "gpu")
    _fails(capsys, ["doctor"], "faces_device 'gpu'")


def test_a_separate_process_prints_one_line_for_a_missing_weight_file(studio_env, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "studio", "generate", "--models", "sd15", "--prompt", "x"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=300,
    )
    assert done.returncode == 1 and done.stdout == ""
    lines = _error_lines(done.stderr)
    assert len(lines) == 1 and "component 'base'" in lines[0], done.stderr
