"""``python -m studio``: the command-line entry point; each subcommand lives in studio.commands."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from adapters.checkpoint import UnsafeCheckpointError
from studio import __version__
from studio.commands import COMMANDS
from studio.errors import StudioError
from studio.settings import DEVICES, DTYPES, Settings, load_settings


def _weights_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected COMPONENT=PATH, e.g. faceid=./faceid.bin"
        )
    return name, path


def common_options() -> argparse.ArgumentParser:
    """Flags every subcommand accepts; they override environment and config file."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("settings")
    g.add_argument(
        "--config", type=Path, help="TOML config file (default: STUDIO_CONFIG or ~/.config)"
    )
    g.add_argument("--data-dir", type=Path, help="profiles and history (STUDIO_DATA_DIR)")
    g.add_argument("--models-dir", type=Path, help="local model files (STUDIO_MODELS_DIR)")
    g.add_argument("--output-dir", type=Path, help="generated images (STUDIO_OUTPUT_DIR)")
    g.add_argument("--device", help=f"{', '.join(DEVICES)} or cuda:N (STUDIO_DEVICE)")
    g.add_argument("--dtype", choices=DTYPES, help="weights dtype (STUDIO_DTYPE)")
    g.add_argument("--offline", action="store_true", default=None, help="never contact the hub")
    g.add_argument(
        "--weights",
        type=_weights_arg,
        action="append",
        metavar="COMPONENT=PATH",
        help="use a local file or folder for a catalog component (repeatable)",
    )
    g.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m studio",
        description="Portrait Studio: personalized portraits from a handful of photos.",
    )
    parser.add_argument("--version", action="version", version=f"portrait-studio {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = common_options()
    for register in COMMANDS:
        register(sub, common)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    return load_settings(
        config=args.config,
        data_dir=args.data_dir,
        models_dir=args.models_dir,
        output_dir=args.output_dir,
        device=args.device,
        dtype=args.dtype,
        offline=args.offline,
        weights=dict(args.weights) if args.weights else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args, settings_from_args(args))
    except (StudioError, UnsafeCheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
