"""W+ on the command line: ``--edit NAME=AMOUNT`` and ``--wplus-scale`` for ``portrait``, and
``python -m studio profile wplus NAME``, which computes (and stores) a profile's W+ and renders
it, edited, through the StyleGAN generator as a preview.

``profile wplus`` prints one line per accepted photo (``FILE: W+`` or ``FILE: no W+: REASON``),
then ``profile W+: mean of N photos (E4E KEY)`` and, with ``--out``, the preview's path. With
``--refine STEPS`` each photo's W+ is first refined by that many steps of latent optimisation
against the photo (a progress bar per photo, then its report) and stored refined.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from studio.limits import MAX_EDIT_AMOUNT, MAX_REFINE_STEPS, MAX_WPLUS_SCALE
from studio.settings import Settings


def edit_arg(text: str) -> tuple[str, float]:
    """``NAME=AMOUNT`` (e.g. ``age=+2``) as ``(name, amount)``; argparse reports a mistake."""
    name, sep, amount = text.partition("=")
    try:
        value = float(amount)
    except ValueError:
        value = None
    if not sep or not name.strip() or value is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=AMOUNT, e.g. age=+2 or smile=-1")
    if not -MAX_EDIT_AMOUNT <= value <= MAX_EDIT_AMOUNT:
        raise argparse.ArgumentTypeError(
            f"{text!r}: amount {value:g} is out of range; use {-MAX_EDIT_AMOUNT:g} to "
            f"{MAX_EDIT_AMOUNT:g}"
        )
    return name.strip(), value


def edit_options(parser: argparse.ArgumentParser, *, scale: bool) -> None:
    """``--edit`` (repeatable) and, with ``scale``, ``--wplus-scale``."""
    group = parser.add_argument_group("W+ (model sets with the W+ adapter: tiny, sd15)")
    group.add_argument(
        "--edit",
        dest="edits",
        type=edit_arg,
        action="append",
        default=[],
        metavar="NAME=AMOUNT",
        help="move the person's W+ along a direction, e.g. age=+2, smile=-1 (repeatable; "
        "see `profile wplus NAME --list-edits`)",
    )
    if scale:
        group.add_argument(
            "--wplus-scale",
            type=float,
            metavar="S",
            help=f"strength of the W+ adapter, 0 to {MAX_WPLUS_SCALE:g} (default 1)",
        )


def register_profile_wplus(psub, common: argparse.ArgumentParser) -> None:
    """``profile wplus NAME [--edit ...] [--out preview.png]``."""
    p = psub.add_parser(
        "wplus",
        parents=[common],
        help="compute a profile's StyleGAN W+ and preview it, edited",
        description="Compute and store the profile's W+ with the model set's e4e, and render "
        "it (with edits) through the StyleGAN generator.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--models", default="tiny", help="model set whose e4e to use (default: tiny)")
    p.add_argument("--out", type=Path, help="write the StyleGAN preview to this PNG")
    p.add_argument("--list-edits", action="store_true", help="list the edit directions and exit")
    p.add_argument(
        "--refine",
        type=int,
        default=0,
        metavar="STEPS",
        help=f"refine each photo's W+ by STEPS (1 to {MAX_REFINE_STEPS}) of latent optimisation "
        "against the photo, and store it (slow; the identity term needs --weights "
        "ir_se50=model_ir_se50.pth)",
    )
    edit_options(p, scale=False)
    p.set_defaults(handler=profile_wplus)


def profile_wplus(args: argparse.Namespace, settings: Settings) -> int:
    from PIL import Image

    from studio.orchestrator import Studio

    studio = Studio(settings, args.models)
    studio.wplus.require("profile wplus")
    if args.list_edits:
        for name, source in studio.wplus.directions.sources().items():
            print(f"{name:24} {source.kind:10} {source.path or source.component}")
        return 0
    edits = tuple(args.edits)
    for name, _ in edits:
        studio.wplus.directions.edit(name)  # unknown names fail before the e4e loads
    studio.profile_wplus(args.name)
    if args.refine:
        for report in studio.refine_wplus(args.name, args.refine):
            print(report)
    with studio.library() as library:
        profile = library.get(args.name)
    key = studio.wplus.key
    for photo in profile.accepted:
        found = photo.wplus.get(key)
        status = "W+" if found and found.latent is not None else f"no W+: {found.reason}"
        refined = f" (refined, {found.refine_steps} steps)" if found and found.refine_steps else ""
        print(f"{photo.file}: {status}{refined}")
    print(f"profile W+: mean of {profile.wplus[key].photos} photos ({key})")
    if args.out:
        preview = studio.wplus_preview(args.name, edits)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(preview).save(args.out)
        print(f"preview: {args.out}")
    return 0
