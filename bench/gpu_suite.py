"""Every GPU target of the speed issue in one run, written to JSON and markdown.

On full-size architectures with random weights (as ``bench_adapter_overhead.py`` builds them):

1. SD1.5 512², CFG, batch 1, FaceID on: it/s eager and compiled (``studio.speed``'s regional
   compilation), and the FaceID step-time ratio vs plain diffusers on the same weights
   (eager and compiled). Targets: >= 120 it/s, ratio <= 1.03.
2. SDXL 1024² InstantID, 30 steps: s/image and peak memory without offload, with model CPU
   offload and with group offload (VAE tiled when offloading). Targets: <= 2.5 s/image, peak
   <= 16 GB without offload, <= 10 GB with.
3. A 10-photo identity LoRA to its best checkpoint (``bench_train_lora.py --device cuda``).
   Target: <= 60 s.
4. Attribute repair's cost as a ratio to plain generation, SD1.5 512², 20 steps
   (``bench_repair.py --device cuda``). Target: <= 2.2x for one repair pass including pass 1.

``--smoke`` runs the same code on the CPU with the tiny model sets at 64² and 2 steps (compile
backend ``eager``), to check the script, not to measure.

    PYTHONPATH=. .venv/bin/python bench/gpu_suite.py [--smoke] [--out bench-results] [--skip-train]
        [--skip-repair]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from studio.speed import compile_denoiser, fit_vae, place


def _sibling(name: str):
    """A script of this folder as a module (``bench/`` is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_overhead = _sibling("bench_adapter_overhead")
identity, sd15_pipelines = _overhead.identity, _overhead.sd15_pipelines
sdxl_pipelines, step_times = _overhead.sdxl_pipelines, _overhead.step_times


def tiny_pipelines(workdir: Path):
    """Tiny SD1.5 plain + FaceID and tiny SDXL plain + InstantID, for ``--smoke``."""
    from diffusers import ControlNetModel, StableDiffusionPipeline, StableDiffusionXLPipeline

    from adapters.synthetic import write_checkpoint, write_identitynet
    from pipelines import PortraitPipeline, PortraitXLPipeline
    from studio.models.tiny import build, built_path

    build(workdir, "tiny-sd15")
    build(workdir, "tiny-sdxl")
    sd15, sdxl = built_path(workdir, "tiny-sd15"), built_path(workdir, "tiny-sdxl")
    plain = StableDiffusionPipeline.from_pretrained(sd15, safety_checker=None)
    portrait = PortraitPipeline.from_pretrained(sd15)
    portrait.load_identity_adapter(
        write_checkpoint("faceid-sd15", workdir / "faceid.bin", unet=portrait.unet)
    )
    plain_xl = StableDiffusionXLPipeline.from_pretrained(sdxl)
    identitynet = ControlNetModel.from_pretrained(
        write_identitynet(
            workdir / "ControlNetModel", plain_xl.unet, vae_scale_factor=plain_xl.vae_scale_factor
        )
    )
    instantid = PortraitXLPipeline.from_pretrained(sdxl, identitynet=identitynet)
    instantid.load_identity_adapter(
        write_checkpoint("instantid", workdir / "ip-adapter.bin", unet=instantid.unet)
    )
    for pipe in (plain, portrait, plain_xl, instantid):
        pipe.set_progress_bar_config(disable=True)
    return (plain, portrait), (plain_xl, instantid)


def median_step(pipe, steps: int, size: int, repeats: int, **kwargs) -> float:
    return statistics.median(
        t for _ in range(repeats) for t in step_times(pipe, steps, size, **kwargs)
    )


def sd15_section(plain, portrait, *, device, dtype, size, steps, repeats, backend) -> dict:
    embeds = identity(device, dtype)
    runs = {
        "plain": lambda: median_step(plain, steps, size, repeats),
        "faceid": lambda: median_step(portrait, steps, size, repeats, identity_embeds=embeds),
    }
    eager = {name: run() for name, run in runs.items()}
    for pipe in (plain, portrait):
        compile_denoiser(pipe, backend=backend)
        step_times(pipe, 2, size, **({"identity_embeds": embeds} if pipe is portrait else {}))
    compiled = {name: run() for name, run in runs.items()}
    return {
        "size": size,
        "faceid_it_s_eager": 1 / eager["faceid"],
        "faceid_it_s_compiled": 1 / compiled["faceid"],
        "plain_it_s_eager": 1 / eager["plain"],
        "plain_it_s_compiled": 1 / compiled["plain"],
        "faceid_overhead_eager": eager["faceid"] / eager["plain"],
        "faceid_overhead_compiled": compiled["faceid"] / compiled["plain"],
    }


def timed_image(pipe, *, steps: int, size: int, cuda: bool, **kwargs) -> tuple[float, float]:
    """Seconds for one image (encode, denoise, decode) and peak GPU GiB (0 on the CPU)."""
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    pipe(
        "a portrait photo of a person",
        num_inference_steps=steps,
        height=size,
        width=size,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(0),
        **kwargs,
    )
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    return time.perf_counter() - start, peak


def sdxl_section(instantid, *, device, dtype, size, steps) -> dict:
    cuda = device == "cuda"
    embeds = identity(device, dtype)
    keypoints = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    call = {"identity_embeds": embeds, "keypoint_image": keypoints}
    results = {"size": size, "steps": steps}
    for mode in ("none", "model", "group"):
        if mode != "none":
            instantid.to("cpu")
            place(instantid, mode, device)
        fit_vae(instantid, width=size, height=size, mode="auto" if mode == "none" else "on")
        timed_image(instantid, steps=2, size=size, cuda=cuda, **call)  # warm-up
        seconds, peak = timed_image(instantid, steps=steps, size=size, cuda=cuda, **call)
        results[f"s_per_image_offload_{mode}"] = seconds
        results[f"peak_gib_offload_{mode}"] = peak
        if mode == "model":
            instantid.remove_all_hooks()
    return results


def train_section(smoke: bool) -> dict:
    command = [sys.executable, str(Path(__file__).with_name("bench_train_lora.py"))]
    command += ["--steps", "3", "--resolution", "64"] if smoke else ["--device", "cuda"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = re.search(r"time to the best checkpoint: ([\d.]+) s \(([^)]*)\)", done.stdout)
    return {
        "command": " ".join(command[1:]),
        "returncode": done.returncode,
        "to_best_s": float(found.group(1)) if found else None,
        "to_best_note": found.group(2) if found else None,
        "tail": done.stdout[-2000:] + done.stderr[-1000:],
    }


def repair_section(smoke: bool) -> dict:
    command = [sys.executable, str(Path(__file__).with_name("bench_repair.py"))]
    command += ["--models", "tiny", "--steps", "2", "--repeats", "1"]
    if not smoke:
        command = [*command[:2], "--device", "cuda", "--steps", "20", "--repeats", "3"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    rows = re.findall(r"^  (\S.*?)\s+([\d.]+) s/image  x([\d.]+)$", done.stdout, re.MULTILINE)
    return {
        "command": " ".join(command[1:]),
        "returncode": done.returncode,
        "ratios": {name: float(ratio) for name, _, ratio in rows},
        "seconds": {name: float(seconds) for name, seconds, _ in rows},
        "tail": done.stdout[-2000:] + done.stderr[-1000:],
    }


def markdown(result: dict) -> str:
    sd15, sdxl, train = result["sd15"], result["sdxl"], result.get("train")
    rows = [
        f"# GPU suite: {result['machine']} · {result['date']}",
        "",
        f"torch {result['torch']}, diffusers {result['diffusers']}, {result['dtype']}, "
        f"smoke={result['smoke']}, compile backend {result['backend']}",
        "",
        "| measure | ours | target | anchor |",
        "|---|---|---|---|",
        f"| SD1.5 {sd15['size']}² FaceID it/s, eager | {sd15['faceid_it_s_eager']:.1f} | ≥ 120 "
        "| diffusers eager 54.5 (H100) |",
        f"| SD1.5 {sd15['size']}² FaceID it/s, compiled | {sd15['faceid_it_s_compiled']:.1f} "
        "| ≥ 120 | torch.compile 66, stable-fast 104.6 (H100) |",
        f"| FaceID step overhead vs plain, eager | {sd15['faceid_overhead_eager']:.3f} | ≤ 1.03 "
        "| 1.18 before (H200) |",
        f"| FaceID step overhead vs plain, compiled | {sd15['faceid_overhead_compiled']:.3f} "
        "| ≤ 1.03 | — |",
    ]
    for mode in ("none", "model", "group"):
        rows.append(
            f"| SDXL {sdxl['size']}² InstantID {sdxl['steps']} steps, offload {mode}: s/image, "
            f"peak GiB | {sdxl[f's_per_image_offload_{mode}']:.2f} s, "
            f"{sdxl[f'peak_gib_offload_{mode}']:.2f} GiB | ≤ 2.5 s; peak ≤ "
            f"{16 if mode == 'none' else 10} GB | InstantID: 24 GB, OOM at 12 GB |"
        )
    if train is not None:
        value = f"{train['to_best_s']:.1f} s ({train['to_best_note']})"
        if train["to_best_s"] is None:  # the CPU runs no validation, so it has no best step
            value = "failed" if train["returncode"] else "not validated (CPU)"
        rows.append(
            f"| 10-photo LoRA to best checkpoint | {value} | ≤ 60 s | FaceChain 5–20 min (A10) |"
        )
    repair = result.get("repair")
    if repair is not None:
        if not repair["ratios"]:
            rows.append("| attribute repair vs plain | failed | ≤ 2.2x | — |")
        for name, ratio in repair["ratios"].items():
            if name != "plain generation":
                rows.append(f"| {name} vs plain | {ratio:.2f}x | ≤ 2.2x | — |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-repair", action="store_true")
    args = parser.parse_args()
    import diffusers

    smoke = args.smoke
    device = "cpu" if smoke else "cuda"
    cuda = device == "cuda"
    dtype = torch.float32 if smoke else torch.float16
    backend = "eager" if smoke else "inductor"
    workdir = Path(tempfile.mkdtemp())
    if smoke:
        (plain, portrait), (_, instantid) = tiny_pipelines(workdir)
    else:
        plain, portrait, _ = sd15_pipelines(device, dtype, workdir)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "smoke": smoke,
        "backend": backend,
    }
    result["sd15"] = sd15_section(
        plain,
        portrait,
        device=device,
        dtype=dtype,
        size=64 if smoke else 512,
        steps=3 if smoke else 20,
        repeats=1 if smoke else args.repeats,
        backend=backend,
    )
    print(json.dumps(result["sd15"], indent=1), flush=True)
    del plain, portrait
    if cuda:
        torch.cuda.empty_cache()
        _, instantid = sdxl_pipelines(device, dtype, workdir)
    result["sdxl"] = sdxl_section(
        instantid,
        device=device,
        dtype=dtype,
        size=64 if smoke else 1024,
        steps=2 if smoke else 30,
    )
    print(json.dumps(result["sdxl"], indent=1), flush=True)
    del instantid
    if not args.skip_train:
        result["train"] = train_section(smoke)
    if not args.skip_repair:
        result["repair"] = repair_section(smoke)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_suite.json").write_text(json.dumps(result, indent=1))
    (args.out / "gpu_suite.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
