"""Model catalog, resolution of weights to local paths, and the locally built tiny sets."""

from __future__ import annotations

from pathlib import Path

from studio.errors import ConfigError
from studio.models.catalog import ModelSet, load_catalog, local_model_set


def select_model_set(name_or_path: str) -> ModelSet:
    """A catalog set by name, or a local diffusers folder given as a path."""
    catalog = load_catalog()
    if name_or_path in catalog:
        return catalog[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return local_model_set(path)
    raise ConfigError(
        f"--models {name_or_path!r} is neither a model set ({', '.join(catalog)}) "
        "nor a diffusers pipeline folder"
    )
