"""``python -m studio.train_lora``: train an identity LoRA from a handful of photos.

Also ``python -m studio train-lora`` and ``accelerate launch -m studio.train_lora ...`` for
several GPUs. Ctrl-C (or SIGTERM) stops within a training step or a denoising step of a
validation, writes a checkpoint and exits; ``--resume latest`` continues from there, as it does
after a crash. On the CPU and with the tiny sets the defaults are smaller (``FITTED_HELP``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from studio.cli_common import EXIT_INTERRUPTED, ArgumentParser, common_options, run_command
from studio.errors import StudioError
from studio.settings import Settings
from studio.training.config import FITTED_HELP, build_parser, config_from_flags, given_flags


def parser(prog: str = "python -m studio.train_lora") -> ArgumentParser:
    return ArgumentParser(
        prog=prog,
        parents=[build_parser(prog), common_options()],
        description="Train an identity LoRA from a handful of photos of one person.",
        epilog=FITTED_HELP,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and validate the flags; a bad combination exits with a message naming the flags."""
    p = parser()
    args = p.parse_args(argv)
    try:
        config_from_flags(given_flags(args))
    except StudioError as exc:
        p.error(str(exc))
    return args


def main(args: argparse.Namespace) -> int:
    """Train as ``args`` say; the process exit code (1, with one line on stderr, on a user
    error)."""
    return run_command(train_command, args)


def train_command(args: argparse.Namespace, settings: Settings) -> int:
    """The training command's body; user errors propagate to the caller's error report."""
    from studio.training.trainer import train

    given = given_flags(args)
    stop = threading.Event()
    restore = _stop_on_signals(stop)
    try:
        config = config_from_flags(given, settings.torch_device())
        _say_fitted(config, given, settings.torch_device())
        result = train(config, settings, given=given, stop=stop)
    finally:
        restore()
    if result.status == "interrupted":
        print(
            f"interrupted at step {result.step}; a checkpoint is saved. Continue with:\n"
            f"  python -m studio.train_lora --resume latest --out {result.run_dir}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if result.weights is None:  # another process of a multi-GPU run: the main one reports
        return 0
    print(f"LoRA: {result.weights}")
    if result.best_step is not None:
        print(f"best identity similarity {result.best_similarity:.3f} at step {result.best_step}")
    if result.profile_lora:
        print(f"registered in profile {args.profile!r} as {result.profile_lora!r}")
    print(f"report: {result.report}")
    return 0


def _say_fitted(config, given, device: str) -> None:
    """Before a new run: which defaults were fitted to the device or model set, and how big."""
    if config.resume:
        return
    from studio.training.fit import describe, fit_for

    fit = fit_for(given, device)
    if fit is None or not fit.applied(given):
        return
    print(
        f"defaults for {fit.reason}: {describe(config.to_json())} (flags override them); "
        "the time left shows once the first step is measured"
    )


def _stop_on_signals(stop: threading.Event):
    """SIGINT/SIGTERM ask the loop to checkpoint and stop; a second SIGINT aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        logging.getLogger(__name__).warning(
            "stopping: the current step finishes (a validation is abandoned), then a "
            "checkpoint is written"
        )
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


if __name__ == "__main__":
    sys.exit(main(parse_args()))
