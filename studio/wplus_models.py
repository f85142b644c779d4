"""A model set's W+ pieces for the studio: e4e (photo to W+, W+ to a StyleGAN preview), the
W+ adapter, and the edit directions (:mod:`studio.directions`).

A set has W+ when its catalog entry names an ``e4e`` and a ``wplus_adapter`` component. The
studio uses W+ on its own when both files are on this machine (the tiny set builds them);
asking for edits or a W+ scale on a set whose files are missing resolves them, which offline
fails naming each file and where to place it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from adapters.e4e import E4E, load_e4e
from studio.directions import DirectionRegistry
from studio.errors import StudioError
from studio.faces.analyzer import FaceAnalyzer
from studio.host import WPLUS_ADAPTER
from studio.models.catalog import ModelSet
from studio.models.resolver import ModelResolver
from studio.settings import Settings
from studio.wplus import PhotoWPlusEncoder, render_preview

E4E_COMPONENT = "e4e"
ADAPTER_COMPONENT = WPLUS_ADAPTER


class WPlusModels:
    """The W+ side of one model set; e4e loads on first use, once."""

    def __init__(
        self, model_set: ModelSet, settings: Settings, analyzer: Callable[[], FaceAnalyzer]
    ) -> None:
        self.model_set = model_set
        self.settings = settings
        self.resolver = ModelResolver(settings)
        self.directions = DirectionRegistry(model_set, settings)
        self._analyzer = analyzer
        self._e4e: E4E | None = None
        self._lock = threading.Lock()

    # What the set has

    @property
    def in_set(self) -> bool:
        """The model set names an e4e and a W+ adapter."""
        return all(c in self.model_set.components for c in (E4E_COMPONENT, ADAPTER_COMPONENT))

    def present(self, component: str) -> bool:
        """The component's files are on this machine, or build here (the tiny sets)."""
        return self.resolver.available(self.model_set, component)

    @property
    def ready(self) -> bool:
        """Both W+ files are here: the studio uses W+ without being asked."""
        return self.in_set and all(self.present(c) for c in (E4E_COMPONENT, ADAPTER_COMPONENT))

    def require(self, why: str) -> None:
        """Raise a :class:`StudioError` unless the set has W+; ``why`` names what needs it."""
        if not self.in_set:
            raise StudioError(
                f"{why} needs a model set with a W+ adapter (e4e and wplus_adapter), and "
                f"{self.model_set.name!r} has none; use --models tiny or sd15"
            )

    @property
    def key(self) -> str:
        """Names the e4e weights, stored with every W+ they make (W+ of two e4e never mix)."""
        override = self.resolver.explicit(self.model_set.name, E4E_COMPONENT)
        if override is not None:
            return f"file:{Path(override).expanduser().resolve()}"
        component = self.model_set.component(E4E_COMPONENT)
        if component.source == "builtin":
            from studio.models.tiny import built_path

            return f"builtin:{built_path(self.settings.models_dir, component.builder).name}"
        return f"{component.repo}/{component.repo_paths[0]}"

    # Models

    def e4e(self) -> E4E:
        """The set's e4e on the studio's device, loaded once (float32: it is small)."""
        self.require("W+")
        with self._lock:
            if self._e4e is None:
                path = self.resolver.resolve(self.model_set, E4E_COMPONENT)
                self._e4e = load_e4e(path, device=self.settings.torch_device())
            return self._e4e

    def encoder(self, *, intake: bool = False) -> PhotoWPlusEncoder | None:
        """The profile library's W+ encoder; with ``intake``, only when e4e's file is here."""
        if not self.in_set or (intake and not self.present(E4E_COMPONENT)):
            return None
        return PhotoWPlusEncoder(self.key, self.e4e, self._analyzer)

    def adapter_path(self) -> Path:
        return self.resolver.resolve(self.model_set, ADAPTER_COMPONENT)

    # Edits and previews

    def edited(self, w_plus: torch.Tensor, edits: Sequence[tuple[str, float]]) -> torch.Tensor:
        """``w_plus`` with ``edits`` applied (see :mod:`studio.directions`)."""
        if any(amount for _, amount in edits):
            self.require("an edit")
        return self.directions.apply(w_plus, edits)

    def preview(self, w_plus: torch.Tensor) -> np.ndarray:
        """The StyleGAN rendering of ``w_plus`` as RGB ``uint8``."""
        return render_preview(self.e4e(), w_plus)
