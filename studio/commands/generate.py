"""``python -m studio generate``: text-to-image on a model set, saved with its parameters."""

from __future__ import annotations

import argparse
from pathlib import Path

from studio import generate
from studio.cli_common import speed_options
from studio.models import select_model_set
from studio.settings import Settings


def register(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "generate",
        parents=[common],
        help="generate images from a prompt",
        description="Generate images from a prompt and save PNGs with their parameters.",
    )
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="")
    p.add_argument(
        "--models", default="tiny", help="model set name or diffusers folder (default: tiny)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=1, help="number of images (seeds seed, seed+1, ...)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model set's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--out", type=Path, help="output folder (default: the output dir)")
    speed_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    request = generate.GenerationRequest(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        num_images=args.n,
        steps=args.steps,
        guidance=args.guidance,
        width=args.width,
        height=args.height,
    )
    request.validate()
    model_set = select_model_set(args.models)
    pipe = generate.load_pipeline(model_set, settings)
    for path in generate.run(pipe, model_set, request, args.out or settings.output_dir):
        print(path)
    return 0
