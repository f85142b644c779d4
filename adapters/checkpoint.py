"""Read weight files without ever running pickled code.

``.safetensors`` is read directly; ``.bin``/``.pt``/``.pth``/``.ckpt`` only through
``torch.load(weights_only=True)``, which accepts tensors and plain containers and refuses
anything that would import or call arbitrary Python.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


class CheckpointError(ValueError):
    """A weight file cannot be read: unknown format, truncated or corrupt; the message says why."""


class UnsafeCheckpointError(CheckpointError):
    """The file holds pickled objects beyond tensors; loading it could run arbitrary code."""


def load_state_dict(path: str | Path, device: str = "cpu") -> dict:
    """Load a checkpoint's (possibly nested) dict of tensors, refusing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=device)
        except SafetensorError as exc:
            raise CheckpointError(
                f"checkpoint {path} is not a readable .safetensors file ({exc}); it may be "
                "truncated: download it again"
            ) from exc
    if suffix not in TORCH_SUFFIXES:
        raise CheckpointError(
            f"checkpoint {path}: unknown format {suffix!r}; expected "
            f"{', '.join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)}"
        )
    try:
        data = torch.load(str(path), map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"checkpoint {path} contains pickled Python objects, not just tensors; it was not "
            "loaded (torch.load weights_only=True) because unpickling can run arbitrary code. "
            "Use a .safetensors file, or convert this one in a trusted sandbox."
        ) from exc
    except (RuntimeError, EOFError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is not a readable torch checkpoint ({exc}); it may be "
            "truncated: download it again"
        ) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(data).__name__}, not a state dict")
    return data
