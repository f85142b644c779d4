"""Errors a user can act on. The CLI and UI show their message alone, never a traceback."""


class StudioError(Exception):
    """Base class for errors caused by user input or the local setup, with the fix in the text."""


class ConfigError(StudioError):
    """A setting (flag, environment variable or config file) has an unusable value."""


class ModelUnavailableError(StudioError):
    """A model component is neither local nor downloadable right now."""
