"""``python -m studio swap``: a profile's face into a photo, by diffusion or the inswapper."""

from __future__ import annotations

import argparse
from pathlib import Path

from studio.cli_common import speed_options
from studio.settings import Settings
from studio.swap.types import DEFAULT_STRENGTH, METHODS


def register(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "swap",
        parents=[common],
        help="put a profile's face into a photo",
        description="Replace faces of a photo with a profile's face. diffusion (default) "
        "repaints the face at the model's resolution with the identity adapter, holding the "
        "target's pose; inswapper uses insightface's inswapper_128.onnx (non-commercial) and "
        "needs a profile with ArcFace embeddings.",
    )
    p.add_argument("--profile", required=True, help="whose face (see `profile list`)")
    p.add_argument("--target", type=Path, required=True, help="the photo to put the face into")
    p.add_argument(
        "--face",
        default="0",
        help="which face: N (0 = largest), all, or match:PHOTO (the face most like PHOTO)",
    )
    p.add_argument("--method", choices=METHODS, default="diffusion")
    p.add_argument(
        "--strength",
        type=float,
        default=DEFAULT_STRENGTH,
        help=f"diffusion: how much of the face is repainted, 0.05-1 (default {DEFAULT_STRENGTH})",
    )
    p.add_argument(
        "--refine", action="store_true", help="inswapper: add a light diffusion pass over the face"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="denoising steps (default: the model set's)")
    p.add_argument("--models", default="tiny", help="model set for diffusion (default: tiny)")
    p.add_argument("--out", type=Path, help="output folder (default: the history folder)")
    speed_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from studio.orchestrator import Studio
    from studio.swap.types import SwapRequest

    studio = Studio(settings, args.models)
    request = SwapRequest(
        profile=args.profile,
        target=args.target,
        face=args.face,
        method=args.method,
        strength=args.strength,
        refine=args.refine,
        seed=args.seed,
        steps=args.steps,
    )
    result = studio.swap(request, out_dir=args.out)
    for note in result.notes:
        print(f"note: {note}")
    faces = ", ".join(map(str, result.faces))
    print(f"swapped face {faces} of {result.faces_found} by {result.method}: {result.path}")
    return 0
