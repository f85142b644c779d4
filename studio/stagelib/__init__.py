"""The studio's built-in stages, registered on import (one module each)."""

from studio.stagelib import swap  # noqa: F401
