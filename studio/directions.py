"""W+ edit directions as data: the model set's files and the user's, found by name.

A model set names its directions in the catalog: a component ``direction_<name>`` per
InterFaceGAN or per-layer file (``.pt`` / ``.npy``, shapes as :func:`adapters.latent_edits.
load_direction` reads them), and GANSpace edits from ``ganspace_pca`` plus ``ganspace_config``
(one edit per row of the config). A user adds a direction by putting a file in
``<data dir>/directions/``: its name is the file's stem; it wins over a catalog direction of the
same name.

An edit is ``(name, amount)``. A direction moves W+ by ``amount`` times itself (e4e's InterFaceGAN
edits use about -3 to 3); a GANSpace edit with a non-zero ``amount`` sets its PCA coordinate to
``amount`` times the config's strength (1 is the published edit). Amount 0 is no edit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from adapters.latent_edits import GanSpaceEdit, LatentDirection, load_direction, load_ganspace
from studio.errors import StudioError
from studio.limits import MAX_EDIT_AMOUNT, check_range
from studio.models.catalog import ModelSet
from studio.models.resolver import ModelResolver
from studio.settings import Settings

DIRECTION_PREFIX = "direction_"
GANSPACE_COMPONENTS = ("ganspace_pca", "ganspace_config")
USER_DIRECTIONS_DIR = "directions"
DIRECTION_SUFFIXES = (".pt", ".npy")


def user_directions_dir(settings: Settings) -> Path:
    """Where a user's own direction files live."""
    return settings.data_dir / USER_DIRECTIONS_DIR


def check_edits(edits: Sequence[tuple[str, float]]) -> None:
    """Raise a :class:`StudioError` unless every edit is a name and an amount in range."""
    for name, amount in edits:
        if not isinstance(name, str) or not name.strip():
            raise StudioError("an edit needs a direction name, e.g. age=+2")
        check_range(f"edit {name} amount", amount, -MAX_EDIT_AMOUNT, MAX_EDIT_AMOUNT)


@dataclass(frozen=True)
class DirectionSource:
    """Where a direction comes from: a catalog component, a user file or a GANSpace row."""

    name: str
    kind: str
    """``direction`` (InterFaceGAN / per-layer file) or ``ganspace``."""
    component: str | None = None
    path: Path | None = None


class DirectionRegistry:
    """The directions a model set and the user's folder offer; files load on first use."""

    def __init__(self, model_set: ModelSet, settings: Settings) -> None:
        self.model_set = model_set
        self.resolver = ModelResolver(settings)
        self.user_dir = user_directions_dir(settings)
        self._loaded: dict[str, LatentDirection | GanSpaceEdit] = {}

    def sources(self, *, local_only: bool = False) -> dict[str, DirectionSource]:
        """Every direction by name (the user's after the catalog's, so they win).

        ``local_only`` keeps the directions whose files are on this machine (or build here).
        """
        found: dict[str, DirectionSource] = {}
        for component in self.model_set.components.values():
            if component.name.startswith(DIRECTION_PREFIX) and self._usable(component, local_only):
                name = component.name.removeprefix(DIRECTION_PREFIX)
                found[name] = DirectionSource(name, "direction", component=component.name)
        for name in self._ganspace_names(local_only):
            found[name] = DirectionSource(name, "ganspace", component=GANSPACE_COMPONENTS[0])
        if self.user_dir.is_dir():
            for path in sorted(self.user_dir.iterdir()):
                if path.suffix.lower() in DIRECTION_SUFFIXES and path.is_file():
                    found[path.stem] = DirectionSource(path.stem, "direction", path=path)
        return found

    def names(self, *, local_only: bool = False) -> tuple[str, ...]:
        return tuple(self.sources(local_only=local_only))

    def edit(
        self, name: str, sources: dict[str, DirectionSource] | None = None
    ) -> LatentDirection | GanSpaceEdit:
        """The loaded direction ``name`` (among ``sources``, by default :meth:`sources`);
        unknown names and unreadable files are user errors."""
        sources = self.sources() if sources is None else sources
        if name not in sources:
            known = ", ".join(sources) or "none"
            raise StudioError(
                f"unknown edit direction {name!r}; this model set offers: {known} (add your own "
                f"as {self.user_dir}/{name}.pt or .npy)"
            )
        source = sources[name]
        key = f"{name}:{source.path or source.component}"
        if key not in self._loaded:
            self._loaded[key] = self._load(source)
        return self._loaded[key]

    def apply(self, w_plus: torch.Tensor, edits: Sequence[tuple[str, float]]) -> torch.Tensor:
        """``w_plus`` ``[batch, rows, dim]`` with ``edits`` applied in order (amount 0: none)."""
        check_edits(edits)
        sources = self.sources() if any(amount for _, amount in edits) else {}
        for name, amount in edits:
            if amount == 0:
                continue
            edit = self.edit(name, sources)
            if isinstance(edit, GanSpaceEdit):
                self._check_width(name, edit.comp.shape[-1], w_plus, GANSPACE_COMPONENTS[0])
                w_plus = edit.apply(w_plus, amount * edit.strength)
            else:
                where = sources[name].path or sources[name].component
                self._check_width(name, edit.direction.shape[-1], w_plus, str(where))
                w_plus = edit.apply(w_plus, amount)
        return w_plus

    # Internals

    def _usable(self, component, local_only: bool) -> bool:
        return not local_only or self.resolver.available(self.model_set, component.name)

    def _ganspace_names(self, local_only: bool) -> list[str]:
        """The GANSpace config's edit names, when the config (and, if asked, the PCA) is here."""
        if not all(name in self.model_set.components for name in GANSPACE_COMPONENTS):
            return []
        pca, config = (self._local(name) for name in GANSPACE_COMPONENTS)
        if config is None or (local_only and pca is None):
            return []
        lines = config.read_text(encoding="utf-8").splitlines()
        return [line.split("\t", 1)[0].strip() for line in lines if line.strip()]

    def _local(self, component: str) -> Path | None:
        """The component's file when it is here or builds here (the tiny sets), else None."""
        if self.resolver.available(self.model_set, component):
            return self.resolver.resolve(self.model_set, component)
        return None

    def _load(self, source: DirectionSource) -> LatentDirection | GanSpaceEdit:
        if source.kind == "ganspace":
            pca, config = (self.resolver.resolve(self.model_set, c) for c in GANSPACE_COMPONENTS)
            try:
                return load_ganspace(pca, config)[source.name]
            except (OSError, ValueError) as error:
                raise StudioError(f"GANSpace edit {source.name!r}: {error}") from error
        path = source.path or self.resolver.resolve(self.model_set, source.component)
        try:
            direction = load_direction(path)
        except (OSError, ValueError) as error:
            raise StudioError(f"edit direction {source.name!r}: {error}") from error
        return LatentDirection(source.name, direction.direction)

    @staticmethod
    def _check_width(name: str, width: int, w_plus: torch.Tensor, where: str) -> None:
        if width != w_plus.shape[-1]:
            raise StudioError(
                f"edit direction {name!r} ({where}) is {width}-d, but this model set's e4e "
                f"makes {w_plus.shape[-1]}-d W+; use a direction made for this StyleGAN"
            )
