"""Locate the data files shipped in ``assets/`` (catalog, style presets, CLIP vocabulary)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def asset_path(*parts: str) -> Path:
    """Path of a shipped asset, e.g. ``asset_path("models", "catalog.json")``."""
    path = Path(str(resources.files("studio.assets").joinpath(*parts)))
    if not path.exists():
        raise FileNotFoundError(f"asset {'/'.join(parts)} is missing from this install ({path})")
    return path
