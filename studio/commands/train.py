"""``python -m studio train-lora``: the same command as ``python -m studio.train_lora``."""

from __future__ import annotations

import argparse

from studio.train_lora import train_command
from studio.training.config import build_parser


def register(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "train-lora",
        parents=[build_parser("python -m studio train-lora"), common],
        help="train an identity LoRA from photos",
        description="Train an identity LoRA from a handful of photos of one person.",
    )
    p.set_defaults(handler=train_command)
