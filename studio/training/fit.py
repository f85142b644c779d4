"""Training defaults that fit the device and model set, so a default run finishes in minutes.

The :class:`~studio.training.config.TrainConfig` defaults suit a GPU and a real model set
(512 px, 500 steps, 4 validation images of 25 denoising steps every 100 steps). The tiny
random-weight sets train at their own small size on any device, and a real set on the CPU
trains smaller, shorter and validates once; flags the user gives always win.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from studio.models.catalog import ModelSet

DEFAULT_MODELS = "sd15"
"""The model set a run trains on unless ``--models`` names another."""
TINY_STEPS = 100
CPU_STEPS = 100
CPU_SIZE_DIVISOR = 2
"""On the CPU a real set trains at half its native size: a step costs about a quarter."""

CPU_CHECKPOINT_EVERY = 10
"""CPU steps take seconds each: checkpoint often, so an interruption loses little."""


@dataclass(frozen=True)
class DeviceFit:
    """Defaults replacing the GPU ones (``values``, TrainConfig field names) and why."""

    values: Mapping[str, Any]
    reason: str

    def applied(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The fitted values the user did not give; the rest of ``given`` wins."""
        return {k: v for k, v in self.values.items() if k not in given}


def is_tiny(model_set: ModelSet) -> bool:
    """A random-weight set built locally (``tiny``, ``tiny-xl``): mechanics, not quality."""
    return model_set.components["base"].source == "builtin"


def fit_defaults(model_set: ModelSet, device: str, steps: int | None = None) -> DeviceFit | None:
    """Defaults for ``model_set`` on ``device`` (``None``: the GPU defaults fit).

    ``steps`` is the step count the user gave, which the validation and checkpoint intervals
    follow (validation halfway and at the end on the tiny sets, once at the end on the CPU).
    """
    if is_tiny(model_set):
        n = steps or TINY_STEPS
        half = math.ceil(n / 2)
        values = {
            "resolution": model_set.defaults.get("train_resolution", 64),
            "steps": n,
            "validate_every": half,
            "validation_images": 2,
            "validation_inference_steps": model_set.defaults.get("steps", 4),
            "checkpoint_every": half,
        }
        return DeviceFit(values, f"the {model_set.name} set (random weights)")
    if device == "cpu":
        n = steps or CPU_STEPS
        values = {
            "resolution": model_set.base_family.default_size // CPU_SIZE_DIVISOR,
            "steps": n,
            "validate_every": n,
            "validation_images": 1,
            "validation_inference_steps": 10,
            "checkpoint_every": CPU_CHECKPOINT_EVERY,
        }
        return DeviceFit(values, "the CPU")
    return None


def torch_threads(model_set: ModelSet, device: str) -> int | None:
    """CPU threads for training ``model_set`` (``None``: torch's default).

    The tiny sets' operations are too small to split: with two or more threads each of their
    thousands of small ops per step waits on a barrier, which on a busy machine (threads
    descheduled by other processes) made steps and validations several times slower.
    """
    return 1 if device == "cpu" and is_tiny(model_set) else None


def fit_for(given: Mapping[str, Any], device: str) -> DeviceFit | None:
    """:func:`fit_defaults` for the model set and steps of the flags ``given``."""
    from studio.models import select_model_set

    model_set = select_model_set(given.get("models", DEFAULT_MODELS))
    return fit_defaults(model_set, device, given.get("steps"))


def describe(values: Mapping[str, Any]) -> str:
    """The size of a run in words, e.g. ``64 px, 100 steps, 2 validation images x 4 steps``."""
    every, steps = values.get("validate_every"), values["steps"]
    if not every:
        validation = "no validation"
    else:
        count = steps // every + (steps % every != 0)
        validation = (
            f"{values['validation_images']} validation image(s) x "
            f"{values['validation_inference_steps']} denoising steps, {count} time(s)"
        )
    size = f"{values['resolution']} px, " if values.get("resolution") else ""
    return f"{size}{steps} steps, {validation}"
