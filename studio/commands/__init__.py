"""Subcommands of ``python -m studio``; each module offers ``register(subparsers, common)``."""

from studio.commands import doctor, faces, generate, models, profile

COMMANDS = (generate.register, faces.register, models.register, doctor.register, profile.register)
