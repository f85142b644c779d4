"""Errors a user can act on. The CLI and UI show their message alone, never a traceback.

Every user error of the studio is a :class:`StudioError`. ``adapters/`` never imports the
studio, so its own input errors (a checkpoint that does not fit, one that is unsafe to load) are
other classes; :func:`user_error_types` names them all for the CLI and the UI to catch.
"""

from __future__ import annotations


class StudioError(Exception):
    """Base class for errors caused by user input or the local setup, with the fix in the text."""


class ConfigError(StudioError):
    """A setting (flag, environment variable or config file) has an unusable value."""


class ModelUnavailableError(StudioError):
    """A model component is neither local nor downloadable right now."""


def user_error_types() -> tuple[type[Exception], ...]:
    """:class:`StudioError` and the adapters' checkpoint errors: every error a user can fix.

    Imported on call, so the torch-free parts of the studio (``studio.faces``) can use this
    module without importing torch.
    """
    from adapters.checkpoint import CheckpointError
    from adapters.formats import IdentityAdapterError

    return (StudioError, CheckpointError, IdentityAdapterError)


def one_line(message: str) -> str:
    """``message`` on one line: a listing's lines follow its ``headline:``, split by ``" | "``."""
    text = ""
    for line in filter(None, (line.strip() for line in str(message).splitlines())):
        text += line if not text else (" " if text.endswith(":") else " | ") + line
    return text
