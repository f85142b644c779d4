"""The training command's flags: parsing, defaults, cross-flag checks, and what a resume may change.

Flags the user leaves out stay ``None`` after parsing and take their defaults from
:class:`TrainConfig`, so a resumed run can tell flags given on purpose (which must agree with
the run's own settings) from defaults.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from studio.errors import ConfigError
from studio.families import get_family
from studio.training.captions import DEFAULT_CLASS_WORD, DEFAULT_TRIGGER, check_token
from studio.training.fit import DEFAULT_MODELS, fit_for

MAX_INFERENCE_STEPS = 1000
"""The SD schedulers' training timesteps: a sampler cannot take more steps than these."""

MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
SCORE_ENCODERS = ("sface", "dlib", "arcface")

FITTED_HELP = (
    "The defaults named above are a GPU's. On the CPU a real model set trains at half size "
    "(256 px for sd15, 512 for sdxl) for 100 steps with one validation image at the end, and "
    "the tiny sets train at 64 px for 100 steps with 2 small validation images halfway and "
    "at the end: a default run takes a minute or so on the tiny sets and tens of minutes "
    "rather than many hours on the CPU; any flag given overrides this. The time left is "
    "shown with the progress bar once the first step is measured."
)
"""Where the defaults differ from the ones each flag names (:mod:`studio.training.fit`)."""

RESUMABLE = frozenset(
    {
        "steps",
        "validate_every",
        "validation_images",
        "validation_inference_steps",
        "checkpoint_every",
        "checkpoints_total_limit",
        "export_kohya",
    }
)
"""Settings a resumed run may change (none changes the training itself); every other one is
the run's own and must agree."""


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting with its default; tuned for 5–20 phone photos of one person."""

    photos: tuple[str, ...] = ()
    profile: str | None = None
    models: str = DEFAULT_MODELS
    out: str | None = None
    steps: int = 500
    rank: int = 16
    lora_alpha: float | None = None
    lr: float = 2e-4
    lr_warmup_steps: int = 0
    batch_size: int = 1
    resolution: int | None = None
    train_text_encoder: bool = False
    text_encoder_lr: float | None = None
    prior_preservation: bool = False
    class_images: str | None = None
    prior_loss_weight: float = 1.0
    trigger: str = DEFAULT_TRIGGER
    class_word: str = DEFAULT_CLASS_WORD
    augment_variants: int = 4
    validate_every: int = 100
    validation_images: int = 4
    validation_inference_steps: int = 25
    score_encoder: str = "sface"
    checkpoint_every: int = 100
    checkpoints_total_limit: int = 3
    resume: str | None = None
    seed: int = 0
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    snr_gamma: float | None = None
    export_kohya: bool = False
    lora_name: str | None = None

    @property
    def alpha(self) -> float:
        return float(self.rank if self.lora_alpha is None else self.lora_alpha)

    def precision_on(self, device: str) -> str:
        """The mixed precision to use on ``device`` (``auto`` picks bf16 where it is fast)."""
        if self.mixed_precision != "auto":
            return self.mixed_precision
        import torch

        cuda = device.startswith("cuda") and torch.cuda.is_available()
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"

    def resolution_for(self, family: str) -> int:
        """``--resolution``, else the size the family's base model was trained at."""
        return self.resolution or get_family(family).default_size

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["photos"] = list(self.photos)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["photos"] = tuple(values.get("photos", ()))
        return cls(**values)

    def resumed(self, stored: TrainConfig, given: Mapping[str, Any]) -> TrainConfig:
        """The stored run's settings with the resumable ``given`` flags applied.

        Raises if a flag given on purpose contradicts the run's own setting.
        """
        for name, value in given.items():
            if name in RESUMABLE or name in ("resume", "out"):
                continue
            if getattr(stored, name) != value:
                raise ConfigError(
                    f"--{name.replace('_', '-')} {value!r} differs from the run being resumed "
                    f"({getattr(stored, name)!r}); drop the flag to resume, or start a new run "
                    "with another --out"
                )
        changes = {k: v for k, v in given.items() if k in RESUMABLE}
        return replace(stored, resume=self.resume, out=self.out, **changes)


def build_parser(prog: str = "python -m studio.train_lora") -> argparse.ArgumentParser:
    """The flags of the training command (settings flags such as --data-dir come separately)."""
    p = argparse.ArgumentParser(
        prog=prog,
        add_help=False,
        argument_default=None,
        description="Train an identity LoRA from a handful of photos of one person.",
    )
    d = TrainConfig()
    g = p.add_argument_group("photos")
    g.add_argument("--photos", nargs="+", metavar="DIR|FILE", help="photos of the person")
    g.add_argument(
        "--profile",
        help="an identity profile: trains on its accepted photos unless "
        "--photos is given, and registers the LoRA in it",
    )
    g.add_argument("--trigger", help=f"rare token naming the person (default {d.trigger})")
    g.add_argument("--class-word", help=f"what the person is (default {d.class_word})")
    g.add_argument(
        "--augment-variants",
        type=int,
        metavar="N",
        help=f"cached variants per photo: original, mirror, jitter (default {d.augment_variants})",
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--models", help=f"sd15, sdxl, tiny, tiny-xl or a diffusers folder (default {d.models})"
    )
    g.add_argument("--rank", type=int, help=f"LoRA rank (default {d.rank})")
    g.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: the rank)")
    g.add_argument("--train-text-encoder", action="store_true", help="LoRA on the text encoder(s)")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, help=f"optimizer steps (default {d.steps})")
    g.add_argument("--lr", type=float, help=f"learning rate (default {d.lr})")
    g.add_argument(
        "--text-encoder-lr", type=float, help="text encoder learning rate (default: --lr)"
    )
    g.add_argument("--lr-warmup-steps", type=int, help="linear warm-up, then constant")
    g.add_argument("--batch-size", type=int, help=f"photos per step (default {d.batch_size})")
    g.add_argument(
        "--resolution",
        type=int,
        metavar="PX",
        help="crop size (default 512 for sd15, 1024 for sdxl)",
    )
    g.add_argument(
        "--prior-preservation",
        action="store_true",
        help="also train on class images to keep the class word general",
    )
    g.add_argument(
        "--class-images",
        metavar="DIR",
        help="folder of class images (generic photos of the class word) for --prior-preservation",
    )
    g.add_argument("--prior-loss-weight", type=float, help="weight of the prior loss (default 1)")
    g.add_argument("--snr-gamma", type=float, help="min-SNR loss weighting, e.g. 5.0")
    g.add_argument("--gradient-checkpointing", action="store_true", help="less memory, slower")
    g.add_argument(
        "--mixed-precision",
        choices=MIXED_PRECISION,
        help="auto (default): bf16 on a GPU that has it, else full precision; fp16 needs a GPU",
    )
    g.add_argument("--seed", type=int, help=f"makes a run repeatable (default {d.seed})")
    g = p.add_argument_group("validation and checkpoints")
    g.add_argument(
        "--validate-every",
        type=int,
        metavar="N",
        help="generate and score identity "
        f"similarity every N steps; 0 turns it off (default {d.validate_every})",
    )
    g.add_argument(
        "--validation-images",
        type=int,
        metavar="K",
        help=f"images per validation (default {d.validation_images})",
    )
    g.add_argument(
        "--validation-inference-steps",
        type=int,
        metavar="N",
        help=f"denoising steps per validation image (default {d.validation_inference_steps})",
    )
    g.add_argument(
        "--score-encoder",
        choices=SCORE_ENCODERS,
        help=f"recognizer scoring likeness (default {d.score_encoder})",
    )
    g.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="N",
        help=f"checkpoint every N steps; 0 only at the end (default {d.checkpoint_every})",
    )
    g.add_argument(
        "--checkpoints-total-limit",
        type=int,
        metavar="N",
        help=f"checkpoints kept (default {d.checkpoints_total_limit})",
    )
    g.add_argument(
        "--resume",
        metavar="latest|PATH",
        help="continue a run from its latest checkpoint or from a checkpoint folder",
    )
    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="DIR", help="run folder (default: <output dir>/loras/<name>)")
    g.add_argument(
        "--export-kohya",
        action="store_true",
        help="also write a kohya-format file for A1111 / ComfyUI",
    )
    g.add_argument("--lora-name", help="name of the LoRA in the profile (default: from the time)")
    return p


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The training flags the user gave (the others are ``None``), as TrainConfig fields."""
    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None and v is not False}
    if "photos" in given:
        given["photos"] = tuple(given["photos"])
    return given


def config_from_flags(given: Mapping[str, Any], device: str | None = None) -> TrainConfig:
    """Defaults overridden by ``given``, checked; raises :class:`ConfigError` naming the flag.

    With ``device``, defaults fit for it and the model set (:mod:`studio.training.fit`) replace
    the GPU ones for the flags ``given`` leaves out; a resume keeps its run's own settings.
    """
    fitted = {}
    if device is not None and not given.get("resume"):
        fit = fit_for(given, device)
        fitted = fit.applied(given) if fit else {}
    config = replace(TrainConfig(), **fitted, **given)
    check(config)
    return config


def check(c: TrainConfig) -> None:
    """Cross-flag validation with the fix in each message."""
    if not c.photos and not c.profile and not c.resume:
        raise ConfigError(
            "give --photos DIR|FILES... or --profile NAME to say whose photos to train on"
        )
    positive = {
        "steps": c.steps,
        "rank": c.rank,
        "batch_size": c.batch_size,
        "augment_variants": c.augment_variants,
        "validation_images": c.validation_images,
        "validation_inference_steps": c.validation_inference_steps,
        "checkpoints_total_limit": c.checkpoints_total_limit,
    }
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if c.validation_inference_steps > MAX_INFERENCE_STEPS:
        raise ConfigError(
            f"--validation-inference-steps {c.validation_inference_steps} is more than the "
            f"{MAX_INFERENCE_STEPS} noise levels the models were trained with; 25 is usual"
        )
    non_negative = {
        "validate_every": c.validate_every,
        "checkpoint_every": c.checkpoint_every,
        "lr_warmup_steps": c.lr_warmup_steps,
        "seed": c.seed,
    }
    for name, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more, got {value}")
    for name, value in (("lr", c.lr), ("text_encoder_lr", c.text_encoder_lr)):
        if value is not None and not 0 < value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {value} is unusable; try 1e-4")
    if c.lora_alpha is not None and c.lora_alpha <= 0:
        raise ConfigError(f"--lora-alpha must be positive, got {c.lora_alpha}")
    if c.resolution is not None and (c.resolution % 8 or not 64 <= c.resolution <= 2048):
        raise ConfigError(
            f"--resolution {c.resolution} is unusable; use a multiple of 8 from 64 to 2048 "
            "(512 for sd15, 1024 for sdxl)"
        )
    if c.prior_preservation and not c.class_images:
        raise ConfigError(
            "--prior-preservation needs --class-images DIR with photos of the "
            "class word (e.g. made with `python -m studio generate --prompt "
            "'a photo of a person' --n 50 --out DIR`)"
        )
    if c.class_images and not c.prior_preservation:
        raise ConfigError("--class-images is only used with --prior-preservation; add it")
    if c.text_encoder_lr is not None and not c.train_text_encoder:
        raise ConfigError("--text-encoder-lr needs --train-text-encoder")
    if c.snr_gamma is not None and c.snr_gamma <= 0:
        raise ConfigError(f"--snr-gamma must be positive (5.0 is usual), got {c.snr_gamma}")
    if c.prior_loss_weight < 0:
        raise ConfigError(f"--prior-loss-weight must be 0 or more, got {c.prior_loss_weight}")
    check_token(c.trigger, "--trigger")
    check_token(c.class_word, "--class-word")
    if c.trigger == c.class_word:
        raise ConfigError("--trigger must differ from --class-word: the trigger names the person")
