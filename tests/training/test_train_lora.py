"""End-to-end identity-LoRA training on the tiny sets, with the real face models, offline."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from studio.settings import load_settings
from studio.train_lora import EXIT_INTERRUPTED, main, parse_args
from studio.training.checkpoint import list_checkpoints
from studio.training.config import config_from_flags, given_flags
from studio.training.trainer import train

pytestmark = pytest.mark.slow

FAST = [
    "--models",
    "tiny",
    "--resolution",
    "64",
    "--augment-variants",
    "2",
    "--validation-images",
    "1",
    "--validation-inference-steps",
    "2",
]


@pytest.fixture
def photos(tmp_path, faces_dir) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("person_a_1.jpg", "person_a_2.jpg"):
        shutil.copy(faces_dir / name, folder / name)
    return folder


def _run(argv: list[str]) -> int:
    return main(parse_args(argv))


def _train_log(run_dir: Path) -> list[dict]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def _tiny_pipeline(tiny_env):
    from diffusers import StableDiffusionPipeline

    from studio.models.tiny import built_path

    base = built_path(Path(os.environ["STUDIO_MODELS_DIR"]), "tiny-sd15")
    pipe = StableDiffusionPipeline.from_pretrained(
        base, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(pipe) -> np.ndarray:
    return pipe(
        "a photo of ohwx person",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]


def test_trained_lora_loads_in_stock_diffusers_and_changes_the_output(tiny_env, photos, capsys):
    out = tiny_env / "run"
    argv = [
        "--photos",
        str(photos),
        "--out",
        str(out),
        "--steps",
        "4",
        "--lr",
        "1e-2",
        "--validate-every",
        "2",
        "--export-kohya",
        *FAST,
    ]
    assert _run(argv) == 0
    assert f"LoRA: {out / 'pytorch_lora_weights.safetensors'}" in capsys.readouterr().out

    pipe = _tiny_pipeline(tiny_env)
    before = _image(pipe)
    pipe.load_lora_weights(out)
    after = _image(pipe)
    assert np.abs(after - before).max() > 1e-3

    # The kohya export is the same LoRA for A1111 / ComfyUI users.
    kohya = next(out.glob("*_kohya.safetensors"))
    fresh = _tiny_pipeline(tiny_env)
    fresh.load_lora_weights(out, weight_name=kohya.name)
    np.testing.assert_allclose(_image(fresh), after, atol=1e-4)

    # Validation scored identity at steps 2 and 4; the report and lora.json say so.
    validations = [
        json.loads(x)
        for x in (out / "log.jsonl").read_text().splitlines()
        if json.loads(x)["kind"] == "validation"
    ]
    assert [v["step"] for v in validations] == [2, 4]
    assert all(isinstance(v["similarity"], float) and len(v["scores"]) == 1 for v in validations)
    report = json.loads((out / "report.json").read_text())
    assert [p["step"] for p in report["similarities"]] == [2, 4]
    assert report["status"] == "finished" and len(report["losses"]) == 4
    assert sorted(report["used"]) == ["person_a_1.jpg", "person_a_2.jpg"]
    assert any("likeness will suffer" in w for w in report["warnings"])
    lora = json.loads((out / "lora.json").read_text())
    assert lora["trigger"] == "ohwx" and lora["class_word"] == "person"
    assert len(list((out / "validation").glob("step-*/00.png"))) == 2


def test_interrupted_run_resumes_exactly_where_it_stopped(tiny_env, photos):
    settings = load_settings()
    flags = [
        "--photos",
        str(photos),
        "--steps",
        "6",
        "--checkpoint-every",
        "2",
        "--validate-every",
        "0",
        *FAST,
    ]

    def config(*extra):
        given = given_flags(parse_args([*flags, *extra]))
        return config_from_flags(given), given

    whole, given = config("--out", str(tiny_env / "whole"))
    train(whole, settings, given=given)

    stop = threading.Event()
    broken, given = config("--out", str(tiny_env / "broken"))
    first = train(
        broken, settings, given=given, stop=stop, on_progress=lambda p: p.step == 3 and stop.set()
    )
    assert (first.status, first.step, first.weights) == ("interrupted", 3, None)
    assert (tiny_env / "broken/checkpoints/checkpoint-000003").is_dir()

    resumed, given = config("--out", str(tiny_env / "broken"), "--resume", "latest")
    second = train(resumed, settings, given=given)
    assert (second.status, second.step) == ("finished", 6)

    expected, got = _train_log(tiny_env / "whole"), _train_log(tiny_env / "broken")
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in got] == [r["loss"] for r in expected]
    a = load_file(tiny_env / "whole/pytorch_lora_weights.safetensors")
    b = load_file(tiny_env / "broken/pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_writes_a_checkpoint_and_says_how_to_resume(tiny_env, photos, capsys):
    out = tiny_env / "run"

    def interrupt_after_two_steps():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (out / "log.jsonl").exists() and len(_train_log(out)) >= 2:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.02)

    threading.Thread(target=interrupt_after_two_steps, daemon=True).start()
    code = _run(
        [
            "--photos",
            str(photos),
            "--out",
            str(out),
            "--steps",
            "10000",
            "--checkpoint-every",
            "1000",
            "--validate-every",
            "0",
            *FAST,
        ]
    )
    assert code == EXIT_INTERRUPTED
    assert "--resume latest" in capsys.readouterr().err
    steps = [r["step"] for r in _train_log(out)]
    assert steps == list(range(1, steps[-1] + 1))
    assert (out / f"checkpoints/checkpoint-{steps[-1]:06d}/state.json").is_file()
    assert json.loads((out / "report.json").read_text())["status"] == "interrupted"


def test_a_killed_accelerate_launch_run_resumes_from_its_last_checkpoint(tiny_env, photos):
    """``accelerate launch -m studio.train_lora`` works; SIGKILL loses only unsaved steps."""
    out = tiny_env / "run"
    launcher = Path(sys.executable).with_name("accelerate")
    proc = subprocess.Popen(
        [
            str(launcher),
            "launch",
            "--cpu",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "studio.train_lora",
            "--photos",
            str(photos),
            "--out",
            str(out),
            "--steps",
            "10000",
            "--checkpoint-every",
            "2",
            "--checkpoints-total-limit",
            "2",
            "--validate-every",
            "0",
            *FAST,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (out / "checkpoints/checkpoint-000006").is_dir():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Never more complete checkpoints than the limit, wherever the kill landed (a checkpoint
    # being written stays a .tmp folder, removed by the next one).
    kept = [step for step, _ in list_checkpoints(out)]
    assert 1 <= len(kept) <= 2 and kept[-1] >= 6
    last = kept[-1]

    assert _run(["--out", str(out), "--resume", "latest", "--steps", str(last + 2)]) == 0
    assert [r["step"] for r in _train_log(out)] == list(range(1, last + 3))
    assert [p.name for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")] == []


def test_bad_files_are_left_out_with_reasons_and_the_rest_trains(tiny_env, photos):
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "notes.jpg").write_text("not a photo")
    out = tiny_env / "run"
    assert (
        _run(
            [
                "--photos",
                str(photos),
                "--out",
                str(out),
                "--steps",
                "1",
                "--validate-every",
                "0",
                *FAST,
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    rejected = {Path(r["file"]).name: r["reasons"] for r in report["rejected"]}
    assert set(rejected) == {"empty.jpg", "notes.jpg"} and all(rejected.values())
    markdown = (out / "report.md").read_text()
    assert "empty.jpg" in markdown and "notes.jpg" in markdown


def test_no_usable_photo_stops_with_every_file_and_its_reason(tiny_env, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a photo")
    assert _run(["--photos", str(folder), "--out", str(tmp_path / "run"), *FAST]) == 1
    err = capsys.readouterr().err
    assert "empty.jpg" in err and "notes.jpg" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "run.json").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--photos"),
        (["--photos", "x", "--prior-preservation"], "--class-images"),
        (["--photos", "x", "--class-images", "d"], "--prior-preservation"),
        (["--photos", "x", "--text-encoder-lr", "1e-5"], "--train-text-encoder"),
        (["--photos", "x", "--steps", "0"], "--steps"),
        (["--photos", "x", "--resolution", "100"], "--resolution"),
        (["--photos", "x", "--trigger", "two words"], "--trigger"),
        (["--photos", "x", "--trigger", "person"], "--trigger"),
    ],
)
def test_flag_combinations_are_checked(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_a_run_is_never_overwritten_and_a_resume_keeps_its_settings(tiny_env, photos, capsys):
    out = tiny_env / "run"
    base = ["--photos", str(photos), "--out", str(out), "--validate-every", "0", *FAST]
    assert _run([*base, "--steps", "1"]) == 0
    assert _run([*base, "--steps", "2"]) == 1
    assert "--resume latest" in capsys.readouterr().err
    assert _run(["--out", str(out), "--resume", "latest", "--rank", "4"]) == 1
    assert "--rank 4 differs" in capsys.readouterr().err


def test_profile_training_registers_the_lora(tiny_env, faces_dir, capsys):
    from studio.profiles.library import ProfileLibrary

    settings = load_settings()
    with ProfileLibrary.from_settings(settings) as library:
        library.create(
            "Ada", [faces_dir / "person_a_1.jpg", faces_dir / "person_a_2.jpg"], consent=True
        )
    assert (
        _run(
            [
                "--profile",
                "Ada",
                "--steps",
                "2",
                "--validate-every",
                "0",
                "--lora-name",
                "first",
                *FAST,
            ]
        )
        == 0
    )
    assert "registered in profile 'Ada' as 'first'" in capsys.readouterr().out
    with ProfileLibrary.from_settings(settings) as library:
        (lora,) = library.get("Ada").loras
    assert (lora.name, lora.trigger, lora.steps) == ("first", "ohwx", 2)
    assert load_file(lora.weights)  # the copy in the profile is a complete LoRA file


def test_sdxl_with_text_encoders_prior_preservation_and_min_snr(tiny_env, photos, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from PIL import Image

    from studio.models.tiny import built_path

    classes = tmp_path / "classes"
    classes.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(
            classes / f"{i}.png"
        )
    out = tiny_env / "run"
    argv = [
        "--photos",
        str(photos),
        "--out",
        str(out),
        "--steps",
        "2",
        "--validate-every",
        "0",
        "--train-text-encoder",
        "--prior-preservation",
        "--class-images",
        str(classes),
        "--snr-gamma",
        "5",
        "--gradient-checkpointing",
        *FAST,
        "--models",
        "tiny-xl",
    ]
    assert _run(argv) == 0
    keys = load_file(out / "pytorch_lora_weights.safetensors").keys()
    assert {k.split(".")[0] for k in keys} == {"unet", "text_encoder", "text_encoder_2"}
    pipe = StableDiffusionXLPipeline.from_pretrained(
        built_path(Path(os.environ["STUDIO_MODELS_DIR"]), "tiny-sdxl")
    )
    pipe.load_lora_weights(out)
    for module in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
        assert any("lora" in name for name, _ in module.named_parameters())
    assert all(np.isfinite(r["loss"]) for r in _train_log(out))


def test_python_m_studio_train_lora_is_the_same_command(tiny_env, photos, capsys):
    from studio.cli import main as studio

    out = tiny_env / "run"
    argv = ["train-lora", "--photos", str(photos), "--out", str(out), "--steps", "1"]
    assert studio([*argv, "--validate-every", "0", *FAST]) == 0
    assert f"LoRA: {out / 'pytorch_lora_weights.safetensors'}" in capsys.readouterr().out
    assert studio(["train-lora", "--photos", str(photos), "--prior-preservation"]) == 1
    assert "--class-images" in capsys.readouterr().err


def test_fp16_on_the_cpu_is_refused_before_anything_is_written(tiny_env, photos, capsys):
    out = tiny_env / "run"
    assert _run(["--photos", str(photos), "--out", str(out), "--mixed-precision", "fp16"]) == 1
    assert "fp16 needs a CUDA GPU" in capsys.readouterr().err and not out.exists()


def test_the_most_similar_checkpoint_is_kept_across_an_interruption(tiny_env, photos, monkeypatch):
    """Tiny random models never draw a face, so validation scores are scripted here (a model
    that draws the person cannot exist offline); what is tested is keeping the best LoRA."""
    from studio.training.validation import ValidationResult, Validator

    scripted = {2: 0.2, 4: 0.5, 6: 0.3, 8: 0.1}

    def run(self, unet, out_dir, step):
        return ValidationResult(step, [scripted[step]], [1])

    monkeypatch.setattr(Validator, "run", run)
    out = tiny_env / "run"
    stop = threading.Event()
    flags = [
        "--photos",
        str(photos),
        "--out",
        str(out),
        "--steps",
        "8",
        "--validate-every",
        "2",
        "--checkpoint-every",
        "2",
        "--lr",
        "1e-2",
        *FAST,
    ]
    given = given_flags(parse_args(flags))
    first = train(
        config_from_flags(given),
        load_settings(),
        given=given,
        stop=stop,
        on_progress=lambda p: p.step == 5 and stop.set(),
    )
    assert (first.status, first.best_step) == ("interrupted", 4)

    given = given_flags(parse_args(["--out", str(out), "--resume", "latest"]))
    result = train(config_from_flags(given), load_settings(), given=given)
    assert (result.best_step, result.best_similarity) == (4, 0.5)
    assert sorted(p.name for p in out.glob("best-*")) == ["best-000004"]
    best = load_file(out / "best-000004/pytorch_lora_weights.safetensors")
    final = load_file(out / "pytorch_lora_weights.safetensors")
    last = load_file(out / "checkpoints/checkpoint-000008/pytorch_lora_weights.safetensors")
    assert all(torch.equal(final[k], best[k]) for k in best)
    assert not all(torch.equal(final[k], last[k]) for k in last)
    assert json.loads((out / "lora.json").read_text())["best_step"] == 4
    report = json.loads((out / "report.json").read_text())
    assert report["best_step"] == 4
    assert [p["step"] for p in report["similarities"]] == [2, 4, 6, 8]


def test_an_unusable_out_or_class_folder_stops_before_anything_is_written(tiny_env, photos, capsys):
    out = tiny_env / "run"
    (tiny_env / "a-file").write_text("")
    assert _run(["--photos", str(photos), "--out", str(tiny_env / "a-file"), *FAST]) == 1
    assert "is a file; give a folder" in capsys.readouterr().err
    argv = ["--photos", str(photos), "--out", str(out), "--prior-preservation"]
    assert _run([*argv, "--class-images", str(tiny_env / "nope"), *FAST]) == 1
    assert "is not a folder" in capsys.readouterr().err and not out.exists()
    (tiny_env / "empty").mkdir()
    assert _run([*argv, "--class-images", str(tiny_env / "empty"), *FAST]) == 1
    assert "no readable image" in capsys.readouterr().err and not out.exists()
