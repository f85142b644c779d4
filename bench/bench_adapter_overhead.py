"""Identity adapter and ControlNet overhead on full-size architectures (random weights).

CPU mode (default): the SD1.5 UNet, text encoder and VAE built from their standard configs
(random weights, no download) at 256x256. Plain ``StableDiffusionPipeline`` and
``PortraitPipeline`` with the FaceID adapter share the same weights; runs are interleaved and
the ratio of median denoising-step times is printed (target <= 1.03). The same for the SD1.5
mesh ControlNet path (anchor: ControlNet costs ~31 % of it/s on an A100).

``--device cuda``: fp16, SD1.5 at 512x512 and SDXL at 1024x1024 (InstantID IdentityNet +
adapter), it/s and peak memory for plain vs portrait paths.

    .venv/bin/python bench/bench_adapter_overhead.py [--device cuda] [--steps 4] [--repeats 3]
        [--threads 1 --cpu-time]  # on a shared CPU machine
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch


def clip_text(hidden: int, layers: int, heads: int, projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        projection_dim=projection or hidden,
        hidden_act="quick_gelu" if hidden == 768 else "gelu",
        vocab_size=49408,
        max_position_embeddings=77,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def tokenizer(pad: str = "<|endoftext|>"):
    from studio.models.clip_vocab import build_clip_tokenizer

    return build_clip_tokenizer(Path(tempfile.mkdtemp()), pad_token=pad)


#: The clock of step times: wall time, or with ``--cpu-time`` the process's CPU time, which
#: other jobs on a shared machine barely move.
CLOCK = {"clock": time.perf_counter}


def step_times(pipe, steps: int, size: int, **kwargs) -> list[float]:
    """Seconds per denoising step, from step-end callbacks."""
    stamps: list[float] = []
    clock = CLOCK["clock"]

    def on_step_end(_pipe, _step, _t, tensors):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        stamps.append(clock())
        return tensors

    start = clock()
    pipe(
        "a portrait photo of a person",
        num_inference_steps=steps,
        height=size,
        width=size,
        output_type="latent",
        generator=torch.Generator("cpu").manual_seed(0),
        callback_on_step_end=on_step_end,
        **kwargs,
    )
    times = [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)]
    return times[1:]  # the first step also pays for prompt encoding and warm-up


def compare(label: str, runs: dict[str, callable], repeats: int) -> dict[str, float]:
    """Interleave the variants ``repeats`` times; median step time of each."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name] += run()
    medians = {name: statistics.median(s) for name, s in samples.items()}
    base = next(iter(medians.values()))
    print(f"\n{label}")
    for name, value in medians.items():
        print(
            f"  {name:<34} {value * 1000:8.1f} ms/step  {1 / value:6.2f} it/s  x{value / base:.3f}"
        )
    return medians


def sd15_pipelines(device: str, dtype: torch.dtype, workdir: Path):
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    from adapters.synthetic import SD15_UNET, SD15_VAE, write_checkpoint
    from pipelines import PortraitPipeline

    torch.manual_seed(0)
    parts = {
        "unet": UNet2DConditionModel(**SD15_UNET),
        "vae": AutoencoderKL(**SD15_VAE),
        "text_encoder": clip_text(768, 12, 12),
        "tokenizer": tokenizer(),
        "scheduler": EulerDiscreteScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1
        ),
    }
    faceid = write_checkpoint("faceid-sd15", workdir / "faceid.bin", unet=parts["unet"])
    controlnet = ControlNetModel.from_unet(parts["unet"])
    for module in (*parts.values(), controlnet):
        if isinstance(module, torch.nn.Module):
            module.to(device, dtype)
    # Each pipeline gets its own copy of the same UNet weights: loading the adapter installs its
    # processors in the UNet, and the baselines must run diffusers' own processors.
    extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    plain = StableDiffusionPipeline(**{**parts, "unet": copy.deepcopy(parts["unet"])}, **extra)
    mesh = PortraitPipeline(
        **{**parts, "unet": copy.deepcopy(parts["unet"])}, controlnet=controlnet, **extra
    )
    portrait = PortraitPipeline(**parts, **extra)
    portrait.load_identity_adapter(faceid)
    portrait.identity_projection.to(device, dtype)
    for pipe in (plain, portrait, mesh):
        pipe.set_progress_bar_config(disable=True)
    return plain, portrait, mesh


def sdxl_pipelines(device: str, dtype: torch.dtype, workdir: Path):
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    from adapters.synthetic import SD15_VAE, SDXL_UNET, write_checkpoint, write_identitynet
    from pipelines import PortraitXLPipeline

    torch.manual_seed(0)
    with torch.device(device):
        parts = {
            "unet": UNet2DConditionModel(**SDXL_UNET),
            "vae": AutoencoderKL(**SD15_VAE),
            "text_encoder": clip_text(768, 12, 12),
            "text_encoder_2": clip_text(1280, 32, 20, projection=1280),
        }
    parts.update(
        tokenizer=tokenizer(),
        tokenizer_2=tokenizer("!"),
        scheduler=EulerDiscreteScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1
        ),
    )
    adapter = write_checkpoint("instantid", workdir / "ip-adapter.bin", unet=parts["unet"])
    with torch.device(device):  # random init of a full-size ControlNet is slow on the CPU
        identitynet_dir = write_identitynet(workdir / "ControlNetModel", parts["unet"])
    identitynet = ControlNetModel.from_pretrained(identitynet_dir, torch_dtype=dtype).to(device)
    for module in parts.values():
        if isinstance(module, torch.nn.Module):
            module.to(device, dtype)
    plain = StableDiffusionXLPipeline(**{**parts, "unet": copy.deepcopy(parts["unet"])})
    portrait = PortraitXLPipeline(**parts, identitynet=identitynet)
    portrait.load_identity_adapter(adapter)
    portrait.identity_projection.to(device, dtype)
    for pipe in (plain, portrait):
        pipe.set_progress_bar_config(disable=True)
    return plain, portrait


def peak_memory(run) -> float:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    run()
    return torch.cuda.max_memory_allocated() / 2**30


def identity(device: str, dtype: torch.dtype) -> torch.Tensor:
    embeds = torch.randn(1, 512, generator=torch.Generator().manual_seed(0))
    return torch.nn.functional.normalize(embeds, dim=-1).to(device, dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--cpu-time", action="store_true", help="time steps by process CPU time (CPU only)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        CLOCK["clock"] = time.process_time
    cuda = args.device == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    workdir = Path(tempfile.mkdtemp())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"{'CPU' if args.cpu_time else 'wall'} time"
        + (f" ({torch.cuda.get_device_name(0)})" if cuda else "")
    )

    size = 512 if cuda else 256
    plain, portrait, mesh = sd15_pipelines(args.device, dtype, workdir)
    embeds = identity(args.device, dtype)
    mesh_image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    runs = {
        "StableDiffusionPipeline": lambda: step_times(plain, args.steps, size),
        "PortraitPipeline + FaceID": lambda: step_times(
            portrait, args.steps, size, identity_embeds=embeds
        ),
        "PortraitPipeline + mesh ControlNet": lambda: step_times(
            mesh, args.steps, size, control_image=mesh_image
        ),
    }
    medians = compare(f"SD1.5 full-size UNet, {size}x{size}, {dtype}", runs, args.repeats)
    base = medians["StableDiffusionPipeline"]
    print(
        f"FaceID adapter step-time ratio: {medians['PortraitPipeline + FaceID'] / base:.3f} "
        "(target <= 1.03)"
    )
    print(
        f"mesh ControlNet step-time ratio: "
        f"{medians['PortraitPipeline + mesh ControlNet'] / base:.3f} "
        "(anchor: ~1.45, i.e. ControlNet costs ~31 % of it/s on an A100)"
    )
    if cuda:
        for name, run in runs.items():
            print(f"  peak memory {name:<34} {peak_memory(run):6.2f} GiB")
        del plain, portrait, mesh
        torch.cuda.empty_cache()
        plain_xl, instantid = sdxl_pipelines(args.device, dtype, workdir)
        keypoints = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(2))
        xl_runs = {
            "StableDiffusionXLPipeline": lambda: step_times(plain_xl, args.steps, 1024),
            "PortraitXLPipeline + InstantID": lambda: step_times(
                instantid, args.steps, 1024, identity_embeds=embeds, keypoint_image=keypoints
            ),
        }
        compare("SDXL full-size UNet, 1024x1024, fp16", xl_runs, args.repeats)
        for name, run in xl_runs.items():
            print(f"  peak memory {name:<34} {peak_memory(run):6.2f} GiB")


if __name__ == "__main__":
    main()
