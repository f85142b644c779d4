"""A random-weight ``79999_iter.pth``: BiSeNet's published keys and shapes, for tests."""

from __future__ import annotations

from pathlib import Path

import torch

from adapters.bisenet import NUM_CLASSES, BiSeNet


def write_synthetic_bisenet(path: str | Path, *, seed: int = 0) -> Path:
    """Write a random BiSeNet state dict (plain dict of tensors, as published) to ``path``.

    Batch-norm statistics are randomised too, so eval mode is not an identity on them.
    """
    torch.manual_seed(seed)
    model = BiSeNet(NUM_CLASSES)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.normal_(0.0, 0.1)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 1.5)
    path = Path(path)
    torch.save(dict(state), path)
    return path
