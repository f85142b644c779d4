"""``python -m studio portrait``: portraits of a profile in a style, ranked by likeness."""

from __future__ import annotations

import argparse
from pathlib import Path

from studio.cli_common import speed_options
from studio.commands.wplus import edit_options
from studio.settings import Settings


def register(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "portrait",
        parents=[common],
        help="portraits of a profile in a style or from a prompt",
        description="Generate portraits of a profile's person, scored for likeness, best first.",
    )
    p.add_argument("--profile", help="whose portraits (see `python -m studio profile list`)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--style", help="a style preset (see --list-styles)")
    what.add_argument("--prompt", help="a free prompt; {subject} marks where the person goes")
    p.add_argument("--list-styles", action="store_true", help="list the style presets and exit")
    p.add_argument("--pose", type=Path, help="a photo whose head pose to copy")
    p.add_argument("--n", type=int, default=1, help="number of images (seeds seed, seed+1, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="denoising steps (default: the style's)")
    p.add_argument("--identity-scale", type=float, help="identity strength 0–1.5")
    p.add_argument("--no-lora", action="store_true", help="ignore the profile's trained LoRA")
    p.add_argument(
        "--stage", action="append", default=[], help="a stage to run on each image (repeatable)"
    )
    p.add_argument(
        "--swap-target", type=Path, help="the swap stage's template photo (with --stage swap)"
    )
    p.add_argument(
        "--swap-face",
        default="0",
        help="the template's face the swap stage repaints: a number (0, the largest, by "
        "default), all, or match:PHOTO (the face most like PHOTO)",
    )
    p.add_argument(
        "--repair",
        default="off",
        help="attribute repair: auto (check the prompt's attributes, repair the missing), "
        "a list such as hair,glasses (repair these), or off (default)",
    )
    p.add_argument("--models", default="tiny", help="model set (default: tiny)")
    p.add_argument("--out", type=Path, help="output folder (default: the history folder)")
    edit_options(p, scale=True)
    speed_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from studio.errors import StudioError
    from studio.orchestrator import PortraitRequest, Studio

    studio = Studio(settings, args.models)
    if args.list_styles:
        for style in studio.styles.values():
            print(f"{style.id:24} {style.title}: {style.description}")
        return 0
    if not args.profile:
        raise StudioError("--profile is required: whose portraits to make")
    request = PortraitRequest(
        profile=args.profile,
        style=args.style,
        prompt=args.prompt or "",
        pose=args.pose,
        num_images=args.n,
        seed=args.seed,
        steps=args.steps,
        identity_scale=args.identity_scale,
        use_lora=not args.no_lora,
        stages=tuple(args.stage),
        edits=tuple(args.edits),
        wplus_scale=args.wplus_scale,
        swap_target=args.swap_target,
        swap_face=args.swap_face,
        repair=args.repair,
    )
    result = studio.generate(request, out_dir=args.out)
    for note in result.notes:
        print(f"note: {note}")
    print(f"prompt: {result.prompt}")
    print(f"likeness by {result.scorer} (best first):")
    for portrait in result.portraits:
        score = portrait.score
        verdict = "same person" if score.same_person else "not recognised"
        if not score.faces:
            verdict = "no face found"
        print(f"{score.similarity:6.3f}  seed {portrait.seed:<6} {verdict:15} {portrait.path}")
        if portrait.repair is not None:
            for line in portrait.repair.lines():
                print(f"        repair {line}")
            print(f"        foundation image (identity off): {portrait.foundation}")
    return 0
