"""A default identity-LoRA run on the tiny set, before and after the fitted defaults (issue 15).

One process measures, side by side, the units a run is made of under the old defaults (512 px,
validation of 4 images x 25 denoising steps, torch's default threads) and the new ones fitted
to the tiny set (64 px, 2 images x 4 steps, one thread): a training step, one guided denoising
step of one image, one VAE decode, and composes each into the issue's 4-step run with a
validation at steps 2 and 4. Then it times that run for real, end to end, as a user starts it:
``python -m studio.train_lora --photos A B --models tiny --out RUN --steps 4`` in a subprocess
(target: <= 30 s wall). ``--full`` adds the full-size SD1.5 architecture (random weights) at
128 px: a step and a validation of the CPU defaults (1 image x 10 steps) as a multiple of it.

    .venv/bin/python bench/bench_train_tiny.py [--full]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from bench_train_lora import build_base, isolate, make_photos

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "tests" / "data" / "faces"
PHOTOS = ("person_b_1.jpg", "person_b_2.jpg")  # the issue's two photos
ISSUE_RUN = {"steps": 4, "validate_every": 2}


@contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def timed(fn, repeat: int) -> float:
    """The median wall time of ``fn()`` over ``repeat`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def units(flags: list[str], fitted: bool, n_threads: int, repeat: int) -> dict:
    """Setup, one training step, one guided denoising step and one decode, each of one image."""
    from studio.settings import load_settings
    from studio.train_lora import parse_args
    from studio.training.config import config_from_flags, given_flags
    from studio.training.trainer import Trainer
    from studio.training.validation import GUIDANCE, decode, denoise, vae_scale_factor

    given = given_flags(parse_args(flags))
    config = config_from_flags(given, "cpu" if fitted else None)
    with threads(n_threads):
        start = time.perf_counter()
        trainer = Trainer(replace(config, validate_every=0), load_settings(), given=given)
        setup = time.perf_counter() - start
        step = timed(trainer._update, repeat)
        validator, unet = trainer.validator, trainer._unwrapped()[0]
        conditioning = validator.conditioning()
        one = replace(conditioning, hidden=conditioning.hidden[[0, len(validator.prompts)]])
        size = config.resolution_for(trainer.record.family) // vae_scale_factor(trainer.models.vae)
        from diffusers import DPMSolverMultistepScheduler

        scheduler = DPMSolverMultistepScheduler.from_config(trainer.models.noise_scheduler.config)
        latents = None

        def denoise_one():
            nonlocal latents
            latents = denoise(
                unet,
                scheduler,
                one,
                size=size,
                steps=1,
                guidance=GUIDANCE["sd15"],
                seeds=[0],
                sdxl_resolution=None,
                stop=trainer.stop,
            )

        unet.eval()
        with torch.no_grad():
            pair = timed(denoise_one, repeat)
            decoded = timed(lambda: decode(trainer.models.vae, latents), repeat)
        shutil.rmtree(trainer.folder.root)
    return {
        "config": config,
        "threads": n_threads,
        "setup_s": setup,
        "step_s": step,
        "pair_s": pair,
        "decode_s": decoded,
    }


def composed(u: dict, steps: int = 4, validations: int = 2) -> dict:
    """The issue's run from the units: setup, 4 steps, 2 validations of K images x N steps."""
    c = u["config"]
    validation = c.validation_images * (c.validation_inference_steps * u["pair_s"] + u["decode_s"])
    return {
        "validation_s": validation,
        "validation_in_steps": validation / u["step_s"],
        "run_s": u["setup_s"] + steps * u["step_s"] + validations * validation,
    }


def cli_run(photos: list[Path], out: Path) -> dict:
    """The issue's command, timed end to end in a fresh process (imports included)."""
    argv = [sys.executable, "-m", "studio.train_lora", "--photos", *map(str, photos)]
    argv += ["--models", "tiny", "--out", str(out), "--steps", "4", "--validate-every", "2"]
    start = time.perf_counter()
    proc = subprocess.run(
        argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    elapsed = {r["step"]: r["elapsed_s"] for r in records if r["kind"] == "train"}
    plan = next(line for line in proc.stderr.splitlines() if line.startswith("defaults for"))
    return {
        "wall_s": wall,
        "first_step_at_s": elapsed[1],  # run folder, photos, models and caches before it
        "step_s": elapsed[4] - elapsed[3],
        "step_2_to_3_s": elapsed[3] - elapsed[2],  # step 3 plus the validation of step 2
        "plan": plan,
    }


def full_size(root: Path, repeat: int) -> dict:
    """Full-size SD1.5 (random weights) at 128 px with the CPU defaults' validation."""
    base = root / "sd15-random"
    build_base(base, "cpu")
    photos = make_photos(root / "photos10")
    flags = ["--photos", str(photos), "--models", str(base), "--out", str(root / "full")]
    flags += ["--resolution", "128", "--augment-variants", "1"]
    u = units(flags, fitted=True, n_threads=torch.get_num_threads(), repeat=repeat)
    return {**u, **composed(u, steps=0, validations=1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats of each unit")
    parser.add_argument("--full", action="store_true", help="also full-size SD1.5 at 128 px")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-train-tiny-"))
    isolate(root, "cpu")
    photos = [shutil.copy(FACES / name, root / name) for name in PHOTOS]
    photos = [Path(p) for p in photos]
    load = os.getloadavg()[0]
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, default {torch.get_num_threads()}"
        f" threads, load average {load:.1f} at the start, work dir {root}"
    )
    try:
        from studio.models.tiny import build
        from studio.settings import load_settings

        build(load_settings().models_dir, "tiny-sd15")
        flags = ["--photos", *map(str, photos), "--models", "tiny"]
        default_threads = torch.get_num_threads()
        rows = {
            "before (512 px, 4x25 validation)": units(
                [*flags, "--out", str(root / "before")], False, default_threads, args.repeat
            ),
            f"fitted, {default_threads} threads": units(
                [*flags, "--out", str(root / "after2")], True, default_threads, args.repeat
            ),
            "after (fitted, 1 thread)": units(
                [*flags, "--out", str(root / "after")], True, 1, args.repeat
            ),
        }
        print("\nunits in seconds (median of", args.repeat, "after a warm-up); the issue's run")
        print("(setup, 4 steps, validation at steps 2 and 4) composed from them")
        head = ("settings", "setup", "step", "pair", "decode", "validation", "=steps", "run")
        print("{:<34} {:>7} {:>7} {:>7} {:>7} {:>10} {:>7} {:>8}".format(*head))
        for label, u in rows.items():
            c = composed(u)
            print(
                f"{label:<34} {u['setup_s']:>7.2f} {u['step_s']:>7.3f} {u['pair_s']:>7.3f}"
                f" {u['decode_s']:>7.3f} {c['validation_s']:>10.2f}"
                f" {c['validation_in_steps']:>7.1f} {c['run_s']:>8.1f}"
            )
        before, after = (
            composed(rows["before (512 px, 4x25 validation)"]),
            composed(rows["after (fitted, 1 thread)"]),
        )
        print(f"run before / after: {before['run_s'] / after['run_s']:.0f}x")
        cli = cli_run(photos, root / "cli")
        print(f"\nthe issue's command, end to end: {cli['wall_s']:.1f} s wall (target <= 30 s)")
        print(
            f"  first step done {cli['first_step_at_s']:.1f} s into the run; a step"
            f" {cli['step_s']:.3f} s; step 3 with the validation of step 2"
            f" {cli['step_2_to_3_s']:.2f} s\n  it said: {cli['plan']}"
        )
        summary = {
            "load_average": round(load, 1),
            "rows": {
                k: {
                    **{n: round(v, 4) for n, v in u.items() if n.endswith("_s")},
                    **{n: round(v, 2) for n, v in composed(u).items()},
                }
                for k, u in rows.items()
            },
            "cli": {k: round(v, 3) if isinstance(v, float) else v for k, v in cli.items()},
        }
        if args.full:
            full = full_size(root, max(1, args.repeat - 1))
            print(
                f"\nfull-size SD1.5 at 128 px, {full['threads']} threads: step"
                f" {full['step_s']:.2f} s, guided pair {full['pair_s']:.2f} s, decode"
                f" {full['decode_s']:.2f} s; a validation of 1 image x 10 steps"
                f" {full['validation_s']:.1f} s = {full['validation_in_steps']:.1f} steps"
            )
            summary["full_sd15_128"] = {
                k: round(v, 3) for k, v in full.items() if isinstance(v, float)
            }
        print(json.dumps(summary))
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
