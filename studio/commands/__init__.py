"""Subcommands of ``python -m studio``; each module offers ``register(subparsers, common)``."""

from studio.commands import (
    doctor,
    faces,
    generate,
    models,
    portrait,
    profile,
    swap,
    train,
    watermark,
)

COMMANDS = (
    generate.register,
    portrait.register,
    faces.register,
    models.register,
    doctor.register,
    profile.register,
    swap.register,
    train.register,
    watermark.register,
)
