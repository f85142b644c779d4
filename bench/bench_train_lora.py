"""Identity-LoRA training speed and memory at the full-size SD1.5 architecture (random weights).

Builds a full-size SD1.5 diffusers folder (random weights, no download) and a 10-photo set of
one person from the test portraits, runs the real trainer (``studio.training.trainer.Trainer``
with ``--models <folder>``), then, in the same process, a naive baseline: the same UNet + LoRA
step written the DreamBooth-LoRA-script way (VAE-encode the image and text-encode the prompt at
every step, no caches). Prints steps/s of both (the first step left out), their ratio and the
peak memory of each phase.

CPU (default): fp32 at 128x128, 6 steps, no validation.
``--device cuda``: bf16 at 512x512, 500 steps, validation (4 images x 25 steps) every 100 steps,
and the time to the best checkpoint (target on an H100: <= 60 s for 10 photos).

    .venv/bin/python bench/bench_train_lora.py [--device cuda] [--steps N] [--resolution PX]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import logging
import math
import os
import random
import resource
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

FACES = Path(__file__).resolve().parents[1] / "tests" / "data" / "faces"
SEED = 0
CLIP_L = {  # ViT-L/14's text tower, as in SD1.5
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}
SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "prediction_type": "epsilon",
    "steps_offset": 1,
}
# (scale, border cropped off each side, JPEG quality): 5 files per source photo, all different
# bytes; person_a_2 (722x899) is also halved, person_a_1 (204x244) is never shrunk.
VARIANTS = ((1.0, 0.0, 95), (1.15, 0.0, 90), (1.3, 0.04, 92), (1.0, 0.06, 85), (1.5, 0.02, 88))
SOURCES = (("person_a_1", 1.0), ("person_a_2", 0.5))
GIB = 2**30


def isolate(root: Path, device: str) -> None:
    """Point every studio directory at ``root`` and keep the hub offline."""
    config = root / "config.toml"
    config.write_text("")
    for name in ("data", "models", "output"):
        os.environ[f"STUDIO_{name.upper()}_DIR"] = str(root / name)
    os.environ.update(
        STUDIO_CONFIG=str(config), STUDIO_DEVICE=device, HF_HUB_OFFLINE="1", STUDIO_OFFLINE="1"
    )
    os.environ.pop("STUDIO_DTYPE", None)


def build_base(folder: Path, device: str) -> None:
    """A full-size SD1.5 pipeline folder with random weights, in safetensors."""
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from adapters.synthetic import SD15_UNET, SD15_VAE
    from studio.models.clip_vocab import build_clip_tokenizer

    torch.manual_seed(SEED)
    with torch.device(device):  # random init of ~1 B parameters is much faster on a GPU
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L))
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(folder / "tokenizer"),
        scheduler=DDPMScheduler(**SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def make_photos(out: Path) -> Path:
    """10 files of one person: rescaled, cropped, re-encoded copies of two test portraits."""
    from PIL import Image

    out.mkdir(parents=True)
    for name, base in SOURCES:
        src = Image.open(FACES / f"{name}.jpg").convert("RGB")
        w, h = src.size
        for i, (scale, crop, quality) in enumerate(VARIANTS):
            dx, dy = round(w * crop), round(h * crop)
            image = src.crop((dx, dy, w - dx, h - dy))
            size = (round(image.width * scale * base), round(image.height * scale * base))
            image = image.resize(size, Image.Resampling.LANCZOS)
            image.save(out / f"{name}_{i}.jpg", quality=quality)
    return out


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back, so the next phase's RSS starts clean."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Phase:
    """Wall time and peak memory of one phase: the CUDA allocator's, and sampled RSS."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.gpu_peak = None

    def __enter__(self) -> Phase:
        release_memory()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.rss_start = self.rss_peak = rss()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()
        self.start = time.perf_counter()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self.rss_peak = max(self.rss_peak, rss())

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.gpu_peak = torch.cuda.max_memory_allocated() / GIB
        self.wall = time.perf_counter() - self.start
        self._stop.set()
        self._poller.join()
        self.rss_peak = max(self.rss_peak, rss())

    def memory(self) -> dict:
        out = {"rss_peak_gib": self.rss_peak / GIB, "rss_growth_gib": self.rss_growth}
        return out if self.gpu_peak is None else {"gpu_peak_gib": self.gpu_peak, **out}

    @property
    def rss_growth(self) -> float:
        return (self.rss_peak - self.rss_start) / GIB


def trainer_flags(args, base: Path, photos: Path, out: Path) -> list[str]:
    flags = {"--photos": photos, "--models": base, "--out": out, "--steps": args.steps}
    flags.update({"--resolution": args.resolution, "--seed": SEED, "--validate-every": 0})
    if args.device == "cuda":
        flags.update({"--mixed-precision": "bf16", "--validate-every": 100})
        flags.update({"--validation-images": 4, "--validation-inference-steps": 25})
    return [str(x) for item in flags.items() for x in item]


def run_trainer(flags: list[str]) -> dict:
    """The real trainer on ``flags``; step times from its ``log.jsonl``, validation timed."""
    from studio.settings import load_settings
    from studio.train_lora import parse_args
    from studio.training.config import config_from_flags, given_flags
    from studio.training.trainer import Trainer

    given = given_flags(parse_args(flags))
    config = config_from_flags(given)
    start = time.perf_counter()
    trainer = Trainer(config, load_settings(), given=given)
    setup = time.perf_counter() - start
    extra: dict[str, dict[int, float]] = {"validation": {}, "checkpoint": {}}

    def timed(kind, fn):
        def wrapper():
            t = time.perf_counter()
            try:
                return fn()
            finally:
                extra[kind][trainer.step] = time.perf_counter() - t

        return wrapper

    trainer.validate = timed("validation", trainer.validate)
    trainer.checkpoint = timed("checkpoint", trainer.checkpoint)
    cpu: dict[int, float] = {}  # process CPU time at each step's end: robust to a busy machine
    result = trainer.run(on_progress=lambda p: cpu.__setitem__(p.step, time.process_time()))
    total = time.perf_counter() - start
    records = [json.loads(line) for line in trainer.folder.log.read_text().splitlines()]
    elapsed = {r["step"]: r["elapsed_s"] for r in records if r["kind"] == "train"}
    # Step s's interval also holds what ran after step s-1 (validation, checkpoint): left out.
    busy = set(extra["validation"]) | set(extra["checkpoint"])
    steps = [s for s in sorted(elapsed)[1:] if s - 1 not in busy]
    times = [elapsed[s] - elapsed[s - 1] for s in steps]
    validated = sorted(extra["validation"])
    best = result.best_step or (validated[-1] if validated else None)
    return {
        "times": times,
        "cpu": [cpu[s] - cpu[s - 1] for s in steps if s not in busy],
        "setup_s": setup,
        "total_s": total,
        "validations": len(validated),
        "validation_s": statistics.mean(extra["validation"].values()) if validated else None,
        "best_step": result.best_step,
        # With real weights the best is one of the validated steps, so the last one bounds it.
        "to_best_s": None if best is None else elapsed[best] + extra["validation"][best],
        "to_best_is_bound": result.best_step is None and best is not None,
        "crops": sorted((trainer.folder.root / "crops").glob("*.png")),
        "config": config,
    }


def run_naive(base: Path, crops: list[Path], config, device: str, bf16: bool) -> dict:
    """The DreamBooth-LoRA-script step: read the image, VAE- and text-encode at every step."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig
    from PIL import Image
    from transformers import AutoTokenizer, CLIPTextModel

    from studio.training.captions import caption
    from studio.training.model import UNET_TARGETS

    dtype = torch.bfloat16 if bf16 else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(base, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    for module in (text_encoder, vae, unet):
        module.requires_grad_(False)
        module.to(device, dtype)
    torch.manual_seed(SEED)
    unet.add_adapter(
        LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,
            init_lora_weights="gaussian",
            target_modules=list(UNET_TARGETS),
        )
    )
    cast_training_params(unet, dtype=torch.float32)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=1e-2)
    prompt = caption(config.trigger, config.class_word, ())
    unet.train()
    times, cpu = [], []
    for step in range(config.steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        image = Image.open(crops[step % len(crops)]).convert("RGB")
        if torch.rand(()) < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
        ids = tokenizer(
            prompt,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        with torch.no_grad():
            dist = vae.encode(pixels.to(device, dtype)).latent_dist
            latents = dist.sample() * vae.config.scaling_factor
            hidden = text_encoder(ids.to(device))[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), device=device)
        noisy = scheduler.add_noise(latents, noise, t)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            pred = unet(noisy, t, hidden).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # logged every step, as the script (and the trainer) do: a device sync
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"times": times[1:], "cpu": cpu[1:]}


def rate(times: list[float]) -> float:
    """Steps per second from the median step time."""
    return 1 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, help="default: 6 on the CPU, 500 on cuda")
    parser.add_argument("--resolution", type=int, help="default: 128 on the CPU, 512 on cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: 1 on the CPU)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.steps = args.steps or (500 if cuda else 6)
    args.resolution = args.resolution or (512 if cuda else 128)
    if args.steps < 3:
        parser.error("--steps must be at least 3 (the first step is warm-up)")
    root = Path(tempfile.mkdtemp(prefix="bench-train-lora-"))
    isolate(root, args.device)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads or not cuda:
        torch.set_num_threads(args.threads or 1)
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    gpu = f" ({torch.cuda.get_device_name(0)})" if cuda else ""
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}{gpu},"
        f" {args.resolution}x{args.resolution}, {args.steps} steps, work dir {root}"
    )
    try:
        base = root / "sd15-random"
        with Phase(cuda) as build:
            build_base(base, args.device)
        photos = make_photos(root / "photos")
        print(f"built the full-size SD1.5 folder in {build.wall:.1f} s")
        with Phase(cuda) as cached:
            ours = run_trainer(trainer_flags(args, base, photos, root / "run"))
        crops, config = ours.pop("crops"), ours.pop("config")
        with Phase(cuda) as naive:
            theirs = run_naive(base, crops, config, args.device, bf16=cuda)
        report(args, ours, theirs, cached, naive, len(crops))
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def report(args, ours: dict, theirs: dict, cached: Phase, naive: Phase, n: int) -> None:
    cuda = args.device == "cuda"
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    print(f"\n{n} photos; steps/s = 1 / median step time, the first step (warm-up) left out")
    head = ("path", "steps", "steps/s", "median s", "mean s", "CPU s/step", "peak memory")
    print("{:<24} {:>5} {:>8} {:>9} {:>7} {:>10} {:>28}".format(*head))
    for label, run, phase in (("studio Trainer (cached)", ours, cached), ("naive", theirs, naive)):
        mem, times = phase.memory(), run["times"]
        where = (
            f"GPU {mem['gpu_peak_gib']:.2f} GiB"
            if cuda
            else f"RSS {mem['rss_peak_gib']:.2f} GiB (+{mem['rss_growth_gib']:.2f})"
        )
        print(
            f"{label:<24} {len(times):>5} {rate(times):>8.3f} {statistics.median(times):>9.3f}"
            f" {statistics.mean(times):>7.3f} {median(run['cpu']):>10.3f} {where:>28}"
        )
    ratio = rate(ours["times"]) / rate(theirs["times"])
    cpu_ratio = median(theirs["cpu"]) / median(ours["cpu"])
    print(f"cached steps/s / naive steps/s: {ratio:.3f}", end="")
    print("" if cuda else f" (by CPU time, less sensitive to a busy machine: {cpu_ratio:.3f})")
    print(
        f"trainer setup (photos, models, caches): {ours['setup_s']:.1f} s;"
        f" whole run {ours['total_s']:.1f} s; process peak RSS {peak_rss:.2f} GiB"
    )
    if ours["validations"]:
        print(f"validation: {ours['validations']} x {ours['validation_s']:.1f} s")
    if ours["to_best_s"] is not None:
        which = (
            "at most; no validation image had a face (random weights), so this is the time"
            " to the last validation"
            if ours["to_best_is_bound"]
            else f"best step {ours['best_step']}"
        )
        print(f"time to the best checkpoint: {ours['to_best_s']:.1f} s ({which}); target <= 60 s")
    summary = {
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "threads": torch.get_num_threads(),
        "resolution": args.resolution,
        "steps": args.steps,
        "cached_steps_per_s": round(rate(ours["times"]), 4),
        "naive_steps_per_s": round(rate(theirs["times"]), 4),
        "ratio": round(ratio, 3),
        "cpu_time_ratio": None if cuda or math.isnan(cpu_ratio) else round(cpu_ratio, 3),
        "memory_gib": {
            "cached": {k: round(v, 2) for k, v in cached.memory().items()},
            "naive": {k: round(v, 2) for k, v in naive.memory().items()},
            "process_peak_rss": round(peak_rss, 2),
        },
        **{k: ours[k] for k in ("validations", "best_step", "to_best_is_bound")},
        **{k: rounded(ours[k]) for k in ("setup_s", "total_s", "validation_s", "to_best_s")},
    }
    print(json.dumps(summary))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


if __name__ == "__main__":
    main()
