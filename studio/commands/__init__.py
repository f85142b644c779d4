"""Subcommands of ``python -m studio``; each module offers ``register(subparsers, common)``."""

from studio.commands import doctor, generate, models

COMMANDS = (generate.register, models.register, doctor.register)
