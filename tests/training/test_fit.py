"""Defaults fitted to the device and model set, and the time-left estimate (no models run)."""

from __future__ import annotations

import pytest

from studio.errors import ConfigError
from studio.train_lora import parse_args
from studio.training.config import TrainConfig, config_from_flags, given_flags
from studio.training.estimate import Estimate, duration, validation_cost, validations_left
from studio.training.fit import describe, fit_for


def _config(argv: list[str], device: str | None) -> TrainConfig:
    return config_from_flags(given_flags(parse_args(["--photos", "x.jpg", *argv])), device)


def test_the_tiny_sets_train_small_on_any_device():
    for device in ("cpu", "cuda"):
        c = _config(["--models", "tiny"], device)
        assert (c.resolution, c.steps, c.validate_every, c.checkpoint_every) == (64, 100, 50, 50)
        assert (c.validation_images, c.validation_inference_steps) == (2, 4)
    # Validation and checkpoints follow the steps asked for: halfway and at the end.
    c = _config(["--models", "tiny-xl", "--steps", "7"], "cpu")
    assert (c.resolution, c.steps, c.validate_every, c.checkpoint_every) == (64, 7, 4, 4)


def test_a_real_set_on_the_cpu_trains_at_half_size_and_validates_once():
    c = _config(["--models", "sd15"], "cpu")
    assert (c.resolution, c.steps, c.validate_every) == (256, 100, 100)
    assert (c.validation_images, c.validation_inference_steps, c.checkpoint_every) == (1, 10, 10)
    assert _config(["--models", "sdxl", "--steps", "30"], "cpu").validate_every == 30
    assert _config(["--models", "sdxl"], "cpu").resolution == 512


def test_a_gpu_keeps_the_full_defaults_and_given_flags_always_win():
    assert _config(["--models", "sd15"], "cuda") == _config(["--models", "sd15"], None)
    assert _config(["--models", "sd15"], "cuda").resolution_for("sd15") == 512
    c = _config(["--models", "tiny", "--resolution", "128", "--validate-every", "0"], "cpu")
    assert (c.resolution, c.validate_every, c.steps) == (128, 0, 100)
    # A resume keeps the run's own settings: nothing is fitted over them.
    given = given_flags(parse_args(["--out", "run", "--resume", "latest"]))
    assert config_from_flags(given, "cpu") == config_from_flags(given)


def test_the_plan_in_words_and_the_fit_reason():
    fit = fit_for({"models": "tiny"}, "cpu")
    assert fit.reason == "the tiny set (random weights)"
    assert describe(fit.values) == (
        "64 px, 100 steps, 2 validation image(s) x 4 denoising steps, 2 time(s)"
    )
    assert describe({"steps": 10, "validate_every": 0}) == "10 steps, no validation"
    assert fit_for({"models": "sd15"}, "cuda") is None


def test_validation_steps_beyond_the_schedulers_noise_levels_are_refused():
    given = {"photos": ("x.jpg",), "validation_inference_steps": 1001}
    with pytest.raises(ConfigError, match="--validation-inference-steps 1001 is more than"):
        config_from_flags(given)


def test_the_estimate_counts_steps_and_validations_left():
    config = TrainConfig(steps=10, validate_every=4, validation_images=2)
    assert [validations_left(config, s) for s in (0, 3, 4, 8, 9, 10)] == [3, 3, 2, 1, 1, 0]
    assert validation_cost(config) == pytest.approx(2 * 25 * 2 / 3)
    estimate = Estimate(config)
    assert estimate.remaining(0) is None
    estimate.steps += [9.0, 1.0, 1.0]  # a slow first step drops out of the median
    assert estimate.remaining(3) == pytest.approx(7 * 1.0 + 3 * validation_cost(config))
    estimate.validations.append(5.0)  # once measured, a validation costs what it took
    assert estimate.remaining(4) == pytest.approx(6 * 1.0 + 2 * 5.0)
    assert [duration(s) for s in (0.4, 45, 200, 4000, 7000)] == [
        "0 s",
        "45 s",
        "3 min",
        "67 min",
        "1 h 57 min",
    ]
