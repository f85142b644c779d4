"""W+ path speed: e4e encode (256-px FFHQ crop to W+), StyleGAN2 render (W+ to 1024 px) and one
step of W+ refinement (render, downsample to 256, loss, backward to the latent, Adam).

Full published architectures (IR-SE50 e4e with 18 style blocks, rosinality 1024-px generator,
the IR-SE50 recognizer of ``model_ir_se50.pth`` for the identity term) with random weights, so
no download is needed; fp32 on the CPU, fp16 or fp32 on CUDA. Prints the median ms per face of
each over ``--repeats`` runs (refinement: ``--refine-steps`` steps) after one warm-up, batch 1.

    .venv/bin/python bench/bench_wplus.py [--device cpu|cuda] [--repeats 3] [--dtype fp16]
        [--refine-steps 2]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import time

import torch

from adapters.e4e import E4E, E4E_INPUT_SIZE, E4EConfig
from adapters.ir_se50 import IRSE50Recognizer
from adapters.stylegan2 import StyleGAN2Config
from adapters.wplus_refine import refine_wplus


def timed(fn, repeats: int, device: str) -> float:
    """Median ms of ``fn()`` over ``repeats`` runs after one warm-up."""
    times = []
    for round_ in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if round_:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def refine_step_ms(model: E4E, w_plus, target, recognizer, steps: int) -> float:
    """Median ms of a refinement step over ``steps`` steps after one warm-up step (each step
    ends on a host sync: its loss is read back)."""
    marks = [time.perf_counter()]
    refine_wplus(
        model.decoder,
        w_plus,
        target,
        steps + 1,
        recognizer=recognizer,
        on_progress=lambda step, total, loss: marks.append(time.perf_counter()),
    )
    times = [b - a for a, b in itertools.pairwise(marks[1:])]
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--refine-steps", type=int, default=2, help="timed refinement steps (0: skip)"
    )
    args = parser.parse_args(argv)
    if args.dtype == "fp16" and args.device == "cpu":
        parser.error("--dtype fp16 needs --device cuda")
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32

    torch.manual_seed(0)
    model = E4E(E4EConfig(), StyleGAN2Config.published(1024)).to(args.device, dtype).eval()
    faces = torch.rand(1, 3, E4E_INPUT_SIZE, E4E_INPUT_SIZE, device=args.device) * 2 - 1
    with torch.inference_mode():
        w_plus = model.encode(faces.to(dtype))
        encode_ms = timed(lambda: model.encode(faces.to(dtype)), args.repeats, args.device)
        render_ms = timed(lambda: model.render(w_plus), args.repeats, args.device)
    refine = {}
    if args.refine_steps > 0:
        recognizer = IRSE50Recognizer().to(args.device, dtype).eval().requires_grad_(False)
        for label, identity in (("pixel", None), ("pixel + identity", recognizer)):
            refine[label] = refine_step_ms(model, w_plus, faces, identity, args.refine_steps)

    if args.device == "cuda":
        where = torch.cuda.get_device_name()
    else:
        where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{where}; torch {torch.__version__}; {args.dtype}; load average {load:.1f}")
    params = sum(p.numel() for p in model.encoder.parameters()) / 1e6
    print(f"e4e encode, 256 px -> W+ [1, 18, 512] ({params:.0f} M params): {encode_ms:.0f} ms/face")
    params = sum(p.numel() for p in model.decoder.parameters()) / 1e6
    print(f"StyleGAN2 render, W+ -> 1024 px ({params:.0f} M params): {render_ms:.0f} ms/face")
    for label, ms in refine.items():
        ratio = ms / render_ms
        print(f"W+ refinement step, {label} loss: {ms:.0f} ms/step ({ratio:.1f}x a render)")


if __name__ == "__main__":
    main()
