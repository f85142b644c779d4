"""A random-weight ``model_ir_se50.pth`` in the published layout, for tests and tiny model sets
(scaled down by its config)."""

from __future__ import annotations

from pathlib import Path

import torch

from adapters.ir_se50 import IRSE50Config, IRSE50Recognizer


def write_ir_se50_checkpoint(
    path: str | Path, config: IRSE50Config | None = None, *, seed: int = 0
) -> Path:
    """Write a random recognizer as the published file is: a plain state dict with
    ``input_layer.*``, ``body.N.*`` and ``output_layer.*`` (BN statistics included)."""
    torch.manual_seed(seed)
    model = IRSE50Recognizer(config)
    path = Path(path)
    torch.save(model.state_dict(), path)
    return path
