"""Attribute repair (FreeCure) overhead: one repair call vs plain generation, side by side.

Both run the same FaceID pipeline, prompt, seed, size, steps and guidance, to decoded images.
"plain" is ``PortraitPipeline(...)``; the repairs are ``PortraitRepairPipeline.from_pipe(...)``
repairing one attribute on a fixed mask:

- ``--repair auto`` as the studio runs it: one batch ``[personalized, foundation]``, the x0
  previews decoded and checked at 30 % of the steps, FASA from there on in the same run;
- the automatic check on the final images: pass 1 as above to the end, then pass 2 on the
  personalized rows with FASA at the published step range (every step) on the recorded
  foundation keys/values;
- named attributes (``compare=False``: pass 1 is the foundation alone, as ``--repair hair``).

Runs are interleaved; medians of whole calls are compared (target: repair <= 2.2x plain).
Then the attribute check alone (face detection and mesh parsing of an image pair, the test
portrait at 256² and 512²), which ``--repair auto`` runs on the previews and the final images.

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

from pipelines.repair import PortraitRepairPipeline
from studio.repair import CHECK_STEP

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


def check_seconds(side: int, repeats: int, clock) -> float:
    """Median time of one attribute check (hair and glasses) of a portrait against a
    foundation image, both the test portrait at ``side``², as ``--repair auto`` makes it: face
    detection with the scoring recognizer (SFace), then the mesh parser on each image."""
    from PIL import Image

    from studio.faces.analyzer import analyzer_from_settings
    from studio.faces.mesh_parser import MeshFaceParser
    from studio.repair import AttributeChecker
    from studio.settings import load_settings

    photo = Image.open(Path(__file__).parents[1] / "tests/data/faces/person_a_1.jpg")
    image = photo.convert("RGB").resize((side, side))
    analyzer = analyzer_from_settings(load_settings(), ("sface",))
    checker = AttributeChecker(analyzer.analyze, MeshFaceParser())
    checker([image], [image], ("hair", "glasses"))  # warm-up
    return statistics.median(
        timed(lambda: checker([image], [image], ("hair", "glasses")), clock) for _ in range(repeats)
    )


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

    def hair(personalized, foundation, names):
        """The top third as the "hair" mask, at the size of the images checked."""
        mask = np.zeros(foundation[0].size[::-1], dtype=bool)
        mask[: mask.shape[0] // 3] = True
        return [{"hair": mask}]

    common = {
        "num_inference_steps": args.steps,
        "guidance_scale": 5.0,
        "height": size,
        "width": size,
        "identity_embeds": embeds,
    }

    def generator():
        return torch.Generator("cpu").manual_seed(0)

    def run_repair(check_step: float | None = None, compare: bool = True):
        return lambda: repair(
            PROMPT,
            attributes={"hair": "red hair"},
            mask_function=hair,
            check_step=check_step,
            compare=compare,
            generator=generator(),
            **common,
        )

    runs = {
        "plain generation": lambda: pipe(PROMPT, generator=generator(), **common),
        "repair auto (previews at 30 %, in the run)": run_repair(CHECK_STEP),
        "repair, final check + pass 2 (published)": run_repair(),
        "repair of named attributes (no compare)": run_repair(compare=False),
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
        print(f"  {name:<44} {median:8.2f} s/image  x{median / base:.2f}")
    print("target: repair (pass 1 + one repair pass) <= 2.2x plain")
    for side in (256, 512):  # the previews and the images of SD1.5
        seconds = check_seconds(side, args.repeats, clock)
        print(f"  attribute check of one image pair at {side}x{side}: {seconds:.3f} s")


if __name__ == "__main__":
    main()
