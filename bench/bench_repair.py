"""Attribute repair (FreeCure) overhead: one repair call vs plain generation, side by side.

Both run the same FaceID pipeline, prompt, seed, size, steps and guidance, to decoded images.
"plain" is ``PortraitPipeline(...)``; "repair" is ``PortraitRepairPipeline.from_pipe(...)``
repairing one attribute on a fixed mask (pass 1 with personalized and foundation rows in one
batch, then pass 2 on the personalized rows with FASA on the recorded foundation keys/values),
at the published FASA step range (every step), with FASA from 50 % of the steps (pass 2
starts from pass 1's latents there), and for named attributes (``compare=False``: pass 1 is the
foundation alone, as ``--repair hair`` runs it). Runs are interleaved; medians of whole calls
are compared (target: repair <= 2.2x plain).

Models: ``--models tiny`` (the tiny SD1.5 set, 64 px: per-call overhead dominates) or
``--models sd15`` (the full-size SD1.5 architecture with random weights, no download; 256 px on
the CPU, 512 px on CUDA).

    PYTHONPATH=. .venv/bin/python bench/bench_repair.py [--models sd15|tiny] [--steps 4]
        [--repeats 3] [--threads 1 --cpu-time] [--device cuda]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from adapters.fasa import FasaConfig
from pipelines.repair import PortraitRepairPipeline

PROMPT = "a portrait photo of a person, red hair"


def pipelines(models: str, device: str, dtype: torch.dtype, workdir: Path):
    """The FaceID portrait pipeline and its derived repair pipeline (shared weights)."""
    if models == "tiny":
        from adapters import write_checkpoint
        from pipelines import PortraitPipeline
        from studio.models.tiny import build

        pipe = PortraitPipeline.from_pretrained(build(workdir, "tiny-sd15"))
        checkpoint = write_checkpoint("faceid-sd15", workdir / "faceid.bin", unet=pipe.unet)
        pipe.load_identity_adapter(checkpoint)
        pipe.to(device, dtype)
    else:
        from bench.bench_adapter_overhead import sd15_pipelines

        _, pipe, _ = sd15_pipelines(device, dtype, workdir)
    pipe.set_progress_bar_config(disable=True)
    repair = PortraitRepairPipeline.from_pipe(pipe)
    repair.set_progress_bar_config(disable=True)
    return pipe, repair


def timed(fn, clock) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = clock()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return clock() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sd15", choices=("sd15", "tiny"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cpu-time", action="store_true", help="time by process CPU time")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    cuda = args.device == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    size = 64 if args.models == "tiny" else (512 if cuda else 256)
    pipe, repair = pipelines(args.models, args.device, dtype, Path(tempfile.mkdtemp()))
    embeds = torch.nn.functional.normalize(torch.randn(1, 512), dim=-1).to(args.device, dtype)
    mask = np.zeros((size, size), dtype=bool)
    mask[: size // 3] = True  # "hair": the top third

    common = {
        "num_inference_steps": args.steps,
        "guidance_scale": 5.0,
        "height": size,
        "width": size,
        "identity_embeds": embeds,
    }

    def generator():
        return torch.Generator("cpu").manual_seed(0)

    def run_repair(fasa: FasaConfig, compare: bool = True):
        return lambda: repair(
            PROMPT,
            attributes={"hair": "red hair"},
            mask_function=lambda p, f, names: [{"hair": mask}],
            fasa=fasa,
            compare=compare,
            generator=generator(),
            **common,
        )

    runs = {
        "plain generation": lambda: pipe(PROMPT, generator=generator(), **common),
        "repair, FASA every step (published)": run_repair(FasaConfig()),
        "repair, FASA from 50 % of the steps": run_repair(FasaConfig(start=0.5)),
        "repair of named attributes (no compare)": run_repair(FasaConfig(), compare=False),
    }
    samples = {name: [] for name in runs}
    for run in runs.values():  # warm-up
        run()
    for _ in range(args.repeats):
        for name, run in runs.items():
            samples[name].append(timed(run, clock))

    where = torch.cuda.get_device_name(0) if cuda else (platform.processor() or "CPU")
    print(
        f"{date.today()}; {where}; torch {torch.__version__}; {torch.get_num_threads()} threads; "
        f"{'CPU' if args.cpu_time else 'wall'} time; {args.models} at {size}x{size}, "
        f"{args.steps} steps, CFG, FaceID, {dtype}"
    )
    base = statistics.median(samples["plain generation"])
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"  {name:<42} {median:8.2f} s/image  x{median / base:.2f}")
    print("target: repair (pass 1 + one repair pass) <= 2.2x plain")


if __name__ == "__main__":
    main()
