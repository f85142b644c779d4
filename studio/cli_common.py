"""What every command-line entry point shares: the common flags, the settings they give,
logging set up once, and user errors reported as one line on stderr with a non-zero exit."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from studio.errors import one_line, user_error_types
from studio.settings import DEVICES, DTYPES, OFFLOAD_MODES, Settings, load_settings

EXIT_USER_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace, Settings], int]


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line: the flag at fault and where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def _weights_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected COMPONENT=PATH, e.g. faceid=./faceid.bin"
        )
    return name, path


def common_options() -> argparse.ArgumentParser:
    """Flags every subcommand accepts; they override environment and config file."""
    common = ArgumentParser(add_help=False)
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


def speed_options(parser: argparse.ArgumentParser) -> None:
    """``--compile`` and ``--offload`` for the commands that generate images."""
    g = parser.add_argument_group("speed and memory")
    g.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="compile the denoiser's repeated blocks (slow first image, faster after; "
        "STUDIO_COMPILE)",
    )
    g.add_argument(
        "--offload",
        choices=OFFLOAD_MODES,
        help="keep models on the CPU between uses: model (one at a time) or group (blocks "
        "streamed; least GPU memory) (STUDIO_OFFLOAD)",
    )


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
        compile=getattr(args, "compile", None),
        offload=getattr(args, "offload", None),
    )


def setup_logging(verbose: bool) -> None:
    """Log to stderr: progress details with ``--verbose``, else warnings only."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def run_command(handler: Handler, args: argparse.Namespace) -> int:
    """Run ``handler`` with the settings the flags give; the process exit code.

    A user error (a :class:`~studio.errors.StudioError`, a checkpoint that does not fit, a file
    the system cannot read or write) prints ``error: <message>`` as one line on stderr and
    returns 1; anything else is a bug and keeps its traceback.
    """
    setup_logging(args.verbose)
    try:
        return handler(args, settings_from_args(args))
    except user_error_types() as exc:
        return report(str(exc))
    except OSError as exc:  # disk full, permissions, a path that vanished: named by the OS
        return report(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def report(message: str) -> int:
    """Print ``error: <message>`` on one line of stderr; the exit code of a user error."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    return EXIT_USER_ERROR
