"""``python -m studio``: the command-line entry point; each subcommand lives in studio.commands."""

from __future__ import annotations

from collections.abc import Sequence

from studio import __version__
from studio.cli_common import ArgumentParser, common_options, run_command
from studio.commands import COMMANDS


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m studio",
        description="Portrait Studio: personalized portraits from a handful of photos.",
    )
    parser.add_argument("--version", action="version", version=f"portrait-studio {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = common_options()
    for register in COMMANDS:
        register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; exit code 0 on success, 1 on a user error (one line on stderr)."""
    args = build_parser().parse_args(argv)
    return run_command(args.handler, args)
