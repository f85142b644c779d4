"""Portrait Studio: personalized portraits from a handful of photos."""

__version__ = "0.1.0"
