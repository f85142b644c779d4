"""Subcommands of ``python -m studio``; each module offers ``register(subparsers, common)``."""

from studio.commands import doctor, faces, generate, models, portrait, profile, train, watermark

COMMANDS = (
    generate.register,
    portrait.register,
    faces.register,
    models.register,
    doctor.register,
    profile.register,
    train.register,
    watermark.register,
)
