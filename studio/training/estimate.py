"""The time a run has left, from its measured steps and validations."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from studio.training.config import TrainConfig

RECENT = 5
"""Steps the estimate follows: the first step's warm-up drops out as later steps come in."""


def validation_cost(config: TrainConfig) -> float:
    """A validation's predicted cost in training steps, before one is measured.

    K images x N denoising steps, each a UNet forward of a guided pair (two images), against a
    training step: a forward and a backward (about three forwards) of ``batch_size`` photos,
    twice that with prior preservation.
    """
    batch = config.batch_size * (2 if config.prior_preservation else 1)
    return config.validation_images * config.validation_inference_steps * 2 / (3 * batch)


def validations_left(config: TrainConfig, step: int) -> int:
    """Validations still to come after ``step``: every ``validate_every`` steps and the last."""
    every, total = config.validate_every, config.steps
    if not every or step >= total:
        return 0
    return (total // every - step // every) + (total % every != 0)


@dataclass
class Estimate:
    """Measured durations (seconds) of a run's units and the time left they predict."""

    config: TrainConfig
    steps: list[float] = field(default_factory=list)
    validations: list[float] = field(default_factory=list)

    @property
    def step_s(self) -> float | None:
        return statistics.median(self.steps[-RECENT:]) if self.steps else None

    @property
    def validation_s(self) -> float | None:
        """The last validation's time, or the predicted multiple of a step before one ran."""
        if self.validations:
            return self.validations[-1]
        step = self.step_s
        return None if step is None else step * validation_cost(self.config)

    def remaining(self, step: int) -> float | None:
        """Seconds left after ``step``; ``None`` until a step has been measured."""
        step_s, validation_s = self.step_s, self.validation_s
        if step_s is None or validation_s is None:
            return None
        left = max(self.config.steps - step, 0) * step_s
        return left + validations_left(self.config, step) * validation_s


def duration(seconds: float) -> str:
    """``45 s``, ``3 min``, ``1 h 20 min``: an estimate's precision, not a stopwatch's."""
    if seconds < 90:
        return f"{round(seconds)} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"
