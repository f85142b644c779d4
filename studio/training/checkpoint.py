"""Training checkpoints: LoRA weights, optimizer, LR scheduler and loss-scaler state, no pickles.

A checkpoint is a folder ``checkpoints/checkpoint-<step>``: the LoRA as a diffusers LoRA file
(loadable on its own), ``optimizer.safetensors`` with the optimizer's tensors, and
``state.json`` with everything else. It is written under a temporary name and renamed, so a
killed run leaves only complete checkpoints. The training randomness is derived from
``(seed, step)``, so no RNG state needs saving for an exact resume.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from studio.errors import StudioError
from studio.fileio import atomic_write_text

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_SCHEMA = 1
_NAME = re.compile(r"checkpoint-(\d+)")


class CheckpointError(StudioError):
    """A checkpoint to resume from is missing or unreadable."""


@dataclass(frozen=True)
class TrainerState:
    """The loop's own state at a checkpoint (besides weights and optimizer)."""

    step: int
    scheduler: Mapping[str, Any]
    scaler: Mapping[str, Any] | None
    best_step: int | None
    best_similarity: float | None
    elapsed_s: float


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS_DIR / f"checkpoint-{step:06d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    folder = run_dir / CHECKPOINTS_DIR
    found = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else ():
        match = _NAME.fullmatch(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def find_checkpoint(run_dir: Path, resume: str) -> Path:
    """``latest`` → the run's newest checkpoint; otherwise a checkpoint folder's path."""
    if resume != "latest":
        path = Path(resume).expanduser()
        if not (path / STATE_FILE).is_file():
            raise CheckpointError(
                f"--resume {resume}: not a checkpoint folder (no {STATE_FILE}); give a "
                f"folder under {run_dir / CHECKPOINTS_DIR} or 'latest'"
            )
        return path
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(
            f"--resume latest: run folder {run_dir} has no checkpoint yet; start the run "
            "again without --resume"
        )
    return found[-1][1]


def optimizer_tensors(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into named tensors and a JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_state(tensors: Mapping[str, torch.Tensor], rest: Mapping[str, Any]) -> dict:
    """The inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, values in rest["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(
    run_dir: Path,
    state: TrainerState,
    optimizer_state_dict: Mapping[str, Any],
    write_lora,
    keep: int | None = None,
) -> Path:
    """Write checkpoint ``state.step``; ``write_lora(folder)`` saves the LoRA into the folder.

    With ``keep``, the oldest checkpoints go before the new one appears, so a run killed at any
    moment never holds more than ``keep`` complete checkpoints.
    """
    target = checkpoint_dir(run_dir, state.step)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_lora(tmp)
    tensors, rest = optimizer_tensors(optimizer_state_dict)
    save_file(tensors, tmp / OPTIMIZER_FILE)
    document = {
        "schema": STATE_SCHEMA,
        "step": state.step,
        "optimizer": rest,
        "scheduler": dict(state.scheduler),
        "scaler": None if state.scaler is None else dict(state.scaler),
        "best_step": state.best_step,
        "best_similarity": state.best_similarity,
        "elapsed_s": state.elapsed_s,
    }
    atomic_write_text(tmp / STATE_FILE, json.dumps(document, indent=1))
    if keep is not None:
        older = [path for step, path in list_checkpoints(run_dir) if step != state.step]
        for path in older[: max(len(older) - (keep - 1), 0)]:
            shutil.rmtree(path, ignore_errors=True)
            logger.info("removed old checkpoint %s", path)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    logger.info("checkpoint written: %s", target)
    return target


def load_checkpoint(path: Path) -> tuple[TrainerState, dict]:
    """The trainer state and the optimizer state dict of a checkpoint folder."""
    try:
        doc = json.loads((path / STATE_FILE).read_text())
        tensors = load_file(path / OPTIMIZER_FILE)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({exc}); resume from an older one with --resume PATH"
        ) from exc
    if doc.get("schema") != STATE_SCHEMA:
        raise CheckpointError(
            f"checkpoint {path} has schema {doc.get('schema')!r}, expected {STATE_SCHEMA}"
        )
    state = TrainerState(
        step=doc["step"],
        scheduler=doc["scheduler"],
        scaler=doc["scaler"],
        best_step=doc["best_step"],
        best_similarity=doc["best_similarity"],
        elapsed_s=doc["elapsed_s"],
    )
    return state, optimizer_state(tensors, doc["optimizer"])


def rotate(run_dir: Path, keep: int) -> None:
    """Delete the oldest checkpoints beyond ``keep``, and leftovers of interrupted writes."""
    for leftover in (run_dir / CHECKPOINTS_DIR).glob("checkpoint-*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
    for _, path in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
        logger.info("removed old checkpoint %s", path)
