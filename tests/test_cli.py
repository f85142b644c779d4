"""The command line: generate end to end, models list, doctor, and clean user errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from studio.cli import main


def test_generate_end_to_end_writes_png_with_parameters(tiny_env, tmp_path):
    out = tmp_path / "portraits"
    cmd = [
        sys.executable,
        "-m",
        "studio",
        "generate",
        "--models",
        "tiny",
        "--prompt",
        "a studio portrait",
        "--negative-prompt",
        "blurry",
        "--seed",
        "7",
        "--steps",
        "2",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert done.returncode == 0, done.stderr
    path = done.stdout.strip().splitlines()[-1]
    png = Image.open(path)
    assert png.format == "PNG" and png.size == (64, 64)
    params = png.text["parameters"]
    assert params.startswith("a studio portrait\nNegative prompt: blurry\n")
    for field in (
        "Steps: 2",
        "Seed: 7",
        "Size: 64x64",
        "Model: tiny",
        "Sampler: EulerDiscrete",
        "Version: portrait-studio 0.1.0",
        "diffusers ",
    ):
        assert field in params
    sidecar = json.loads(Path(path).with_suffix(".json").read_text())
    assert sidecar["seed"] == 7 and sidecar["model_set"] == "tiny" and sidecar["steps"] == 2
    assert sidecar["versions"]["torch"].startswith("2.")


def test_same_seed_same_pixels_and_n_images(tiny_env, tmp_path, capsys):
    args = ["generate", "--models", "tiny", "--prompt", "a face", "--steps", "2", "--out"]
    assert main([*args, str(tmp_path / "a"), "--seed", "3", "--n", "2"]) == 0
    assert main([*args, str(tmp_path / "b"), "--seed", "4"]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 3
    a3, a4, b4 = (np.asarray(Image.open(p)) for p in printed)
    assert np.array_equal(a4, b4), "seed 4 alone differs from seed 4 as the second of a batch"
    assert not np.array_equal(a3, a4)


def test_generate_xl_family(tiny_env, tmp_path, capsys):
    assert (
        main(
            [
                "generate",
                "--models",
                "tiny-xl",
                "--prompt",
                "x",
                "--steps",
                "1",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert "Model: tiny-xl" in Image.open(capsys.readouterr().out.strip()).text["parameters"]


def test_user_errors_exit_1_with_one_clear_line(tiny_env, tmp_path, capsys):
    assert main(["generate", "--prompt", " ", "--out", str(tmp_path)]) == 1
    assert (
        capsys.readouterr().err.strip() == "error: --prompt is empty; describe the image you want"
    )
    assert main(["generate", "--prompt", "x", "--width", "65", "--out", str(tmp_path)]) == 1
    assert "--width 65 is unusable; use a multiple of 8" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--models", "nope", "--out", str(tmp_path)]) == 1
    assert (
        "--models 'nope' is neither a model set (tiny, tiny-xl, sd15, sdxl)"
        in capsys.readouterr().err
    )
    assert not list(tmp_path.iterdir()), "a failed request wrote files"


def test_generate_with_missing_weights_fails_offline_with_advice(studio_env, capsys):
    assert main(["generate", "--models", "sd15", "--prompt", "x"]) == 1
    err = capsys.readouterr().err
    assert "component 'base'" in err and "stable-diffusion-v1-5/stable-diffusion-v1-5" in err
    assert "offline" in err and "Traceback" not in err


def test_local_diffusers_folder_as_model_set(tiny_env, tiny_models_dir, tmp_path, capsys):
    from studio.models.tiny import built_path

    folder = built_path(tiny_models_dir, "tiny-sd15")
    assert (
        main(
            [
                "generate",
                "--models",
                str(folder),
                "--prompt",
                "x",
                "--steps",
                "1",
                "--width",
                "64",
                "--height",
                "64",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert Image.open(capsys.readouterr().out.strip()).size == (64, 64)


def test_models_list_shows_sets_and_local_status(tiny_env, capsys):
    assert main(["models", "list", "--json"]) == 0
    report = {s["set"]: s for s in json.loads(capsys.readouterr().out)}
    assert report["tiny"]["usable"] and report["tiny-xl"]["usable"]
    assert not report["sd15"]["usable"]
    faceid = next(c for c in report["sd15"]["components"] if c["name"] == "faceid")
    assert faceid["status"] == "missing" and "ip-adapter-faceid_sd15.bin" in faceid["origin"]
    assert main(["models", "list"]) == 0
    text = capsys.readouterr().out
    assert "sd15 [sd15, needs weights]" in text and "tiny [sd15, usable]" in text


def test_models_fetch_offline_names_component(studio_env, capsys):
    assert main(["models", "fetch", "sdxl"]) == 1
    err = capsys.readouterr().err
    assert "component 'base'" in err and "stabilityai/stable-diffusion-xl-base-1.0" in err


def test_doctor_reports_hardware_and_sets(tiny_env, capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "device         cpu" in out
    assert "CPUExecutionProvider" in out
    assert "face models    CPUExecutionProvider (setting: auto)" in out
    assert "set tiny       usable" in out and "set sd15       needs weights" in out


def test_help_lists_subcommands():
    done = subprocess.run(
        [sys.executable, "-m", "studio", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    for name in ("generate", "models", "doctor"):
        assert name in done.stdout


def test_outputs_are_ordinary_readable_files(tiny_env, tmp_path, capsys):
    assert main(["generate", "--prompt", "x", "--steps", "1", "--out", str(tmp_path)]) == 0
    png = Path(capsys.readouterr().out.strip())
    assert png.stat().st_mode & 0o777 == 0o644
    assert png.with_suffix(".json").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == [png.with_suffix(".json").name, png.name]
