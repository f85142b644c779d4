"""Stopping a run anywhere (inside validation, inside caching) and default runs on the tiny set."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from studio.settings import load_settings
from studio.train_lora import EXIT_INTERRUPTED, parse_args, train_command
from studio.training.config import config_from_flags, given_flags
from studio.training.trainer import train

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
UNUSED = (
    "transformers.models.clip.image_processing_clip",
    "diffusers.pipelines.stable_diffusion",
    "pipelines",  # this project's PortraitPipeline package
)
"""Modules a training run has no use for: image processors and pipeline classes."""
CHEAP = ["--models", "tiny", "--augment-variants", "2", "--seed", "3"]


@pytest.fixture
def photos(tmp_path, faces_dir) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("person_a_1.jpg", "person_a_2.jpg"):
        shutil.copy(faces_dir / name, folder / name)
    return folder


def _records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


class _OnValidation(logging.Handler):
    """Sets ``started`` when a validation begins (the validator logs it)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.started = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "validating" in record.getMessage():
            self.started.set()


def test_sigterm_during_validation_stops_quickly_and_the_run_resumes_exactly(tiny_env, photos):
    """A validation of 4 images x 1000 denoising steps (about a minute here) is abandoned
    within seconds of SIGTERM; the resume redoes it and the run ends as an unbroken one."""
    settings = load_settings()
    flags = ["--photos", str(photos), "--steps", "4", "--validate-every", "2", *CHEAP]
    cheap_validation = ["--validation-images", "1", "--validation-inference-steps", "2"]
    whole = tiny_env / "whole"
    assert (
        train_command(parse_args([*flags, *cheap_validation, "--out", str(whole)]), settings) == 0
    )

    hook = _OnValidation()
    logger = logging.getLogger("studio.training.validation")
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(hook)
    sent: list[float] = []

    def terminate_inside_validation():
        if hook.started.wait(120):
            time.sleep(1.0)  # well into the denoising loop
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGTERM)

    broken = tiny_env / "broken"
    slow_validation = ["--validation-images", "4", "--validation-inference-steps", "1000"]
    threading.Thread(target=terminate_inside_validation, daemon=True).start()
    try:
        code = train_command(parse_args([*flags, *slow_validation, "--out", str(broken)]), settings)
        stopped = time.monotonic()
    finally:
        logger.removeHandler(hook)
        logger.setLevel(previous_level)
    assert code == EXIT_INTERRUPTED and sent
    assert stopped - sent[0] < 15, f"stopped {stopped - sent[0]:.1f} s after SIGTERM"
    # The validation was abandoned, not finished: no record, no images; step 2 is checkpointed.
    assert _records(broken, "validation") == []
    assert not (broken / "validation/step-000002").exists()
    assert (broken / "checkpoints/checkpoint-000002/state.json").is_file()

    resume = ["--out", str(broken), "--resume", "latest", *cheap_validation]
    assert train_command(parse_args(resume), settings) == 0
    for kind in ("train", "validation"):
        expected = [{k: r[k] for k in r if k != "elapsed_s"} for r in _records(whole, kind)]
        got = [{k: r[k] for k in r if k != "elapsed_s"} for r in _records(broken, kind)]
        assert got == expected
    for step in (2, 4):  # the redone validation drew the very same image
        name = f"validation/step-{step:06d}/00.png"
        assert (broken / name).read_bytes() == (whole / name).read_bytes()
    a = load_file(whole / "pytorch_lora_weights.safetensors")
    b = load_file(broken / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_stop_while_caching_leaves_a_run_that_resumes_from_the_start(tiny_env, photos):
    settings = load_settings()
    out = tiny_env / "run"
    given = given_flags(
        parse_args(["--photos", str(photos), "--out", str(out), "--steps", "2", *CHEAP])
    )
    stop = threading.Event()
    stop.set()  # before the first batch of crops is encoded
    first = train(config_from_flags(given, "cpu"), settings, given=given, stop=stop)
    assert (first.status, first.step, first.weights) == ("interrupted", 0, None)
    assert not (out / "checkpoints").exists()
    assert json.loads((out / "report.json").read_text())["status"] == "interrupted"

    given = given_flags(parse_args(["--out", str(out), "--resume", "latest"]))
    second = train(config_from_flags(given, "cpu"), settings, given=given)
    assert (second.status, second.step) == ("finished", 2)
    assert [r["step"] for r in _records(out, "train")] == [1, 2]


def test_a_default_cli_run_on_the_tiny_set_is_small_and_loads_no_image_processor(tiny_env, photos):
    """``python -m studio.train_lora --models tiny`` with no sizes given: fitted defaults,
    said up front; neither a CLIP image processor nor a pipeline module is imported."""
    out = tiny_env / "run"
    script = (
        "import sys\n"
        f"UNUSED = {UNUSED!r}\n"
        "from studio.train_lora import main, parse_args\n"
        "code = main(parse_args())\n"
        "print('LOADED', [m for m in sys.modules if m.startswith(UNUSED)])\n"
        "sys.exit(code)\n"
    )
    argv = ["--photos", str(photos), "--models", "tiny", "--out", str(out), "--steps", "4"]
    proc = subprocess.run(
        [sys.executable, "-c", script, *argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED []" in proc.stdout  # no CLIP image processor, no pipeline module
    assert "CLIPImageProcessor" not in proc.stderr
    assert "defaults for the tiny set (random weights): 64 px, 4 steps" in proc.stdout
    params = json.loads((out / "report.json").read_text())["params"]
    assert (params["resolution"], params["validation_images"]) == (64, 2)
    assert [r["step"] for r in _records(out, "validation")] == [2, 4]
