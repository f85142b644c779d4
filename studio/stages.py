"""The stage seam: named steps that edit each generated portrait before it is scored and saved.

A stage (face swap, ...) is a class with a ``name`` and
``run(given: StageInput, resources: StageResources) -> StageOutput``, made known with
:func:`register_stage`; a request names the stages it wants (``PortraitRequest.stages``,
``--stage NAME``). The studio runs them in the order given, on every image, while it holds the
GPU lock, and saves the request's images only when every stage succeeded on every image; a
failing stage stops the request with a :class:`StageError` naming it. A stage's notes and
masks go into the portrait's sidecar (masks as PNG files beside it).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from PIL import Image

from studio.errors import StudioError
from studio.faces.analyzer import FaceAnalyzer
from studio.faces.parsing import FaceParsing
from studio.faces.types import Face

if TYPE_CHECKING:
    from studio.host import PipelineHost
    from studio.requests import Identity, PortraitRequest

logger = logging.getLogger(__name__)


class FaceParser(Protocol):
    """Parses one face of an RGB image into the 19 BiSeNet classes (:mod:`studio.faces.parsing`);
    the studio's ``face_parser``: BiSeNet when its file is present, else the mesh parser."""

    def parse(self, image: np.ndarray, face: Face) -> FaceParsing: ...


@dataclass(frozen=True, eq=False)
class StageInput:
    """One generated image and what is known about it."""

    image: Image.Image
    faces: tuple[Face, ...]
    """Faces found in the generated image (largest first) by the scoring analyzer."""
    identity: Identity
    """The person: adapter embeddings, mean embedding per encoder, LoRA, photos."""
    request: PortraitRequest
    seed: int
    index: int
    """The image's position in the request, from 0."""


@dataclass(frozen=True, eq=False)
class StageResources:
    """What a stage may use; handed out only while the studio holds the GPU lock and the lock
    of its face models (the analyzer and parser are shared with the UI's other threads)."""

    host: PipelineHost
    analyzer: FaceAnalyzer
    face_parser: FaceParser
    generator: torch.Generator
    """Seeded with the image's seed, so a stage's randomness repeats with it."""

    def derived(self, kind: str):
        """A pipeline sharing the loaded weights, e.g. ``derived("inpaint")``."""
        return self.host.derived(kind)


@dataclass(frozen=True, eq=False)
class StageOutput:
    """The edited image, masks of what the stage changed (mode ``L``), notes for the sidecar."""

    image: Image.Image
    masks: Mapping[str, Image.Image] = field(default_factory=lambda: MappingProxyType({}))
    notes: tuple[str, ...] = ()


class Stage(Protocol):
    """A step between generation and scoring."""

    name: str

    def run(self, given: StageInput, resources: StageResources) -> StageOutput: ...


class StageError(StudioError):
    """A stage failed; nothing of the request was saved."""


STAGES: dict[str, Callable[[], Stage]] = {}
"""Registered stages by name: a factory each, called once per studio."""

NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
"""Stage and mask names: they become parts of file names."""


def register_stage(name: str, factory: Callable[[], Stage]) -> None:
    """Make the stage ``name`` available to requests (a new stage is a file plus this call)."""
    if not NAME.fullmatch(name):
        raise ValueError(f"stage name {name!r} must be lower-case letters, digits, - and _")
    STAGES[name] = factory


def check_stage_names(names: Iterable[str]) -> None:
    """Refuse names no stage is registered under, listing those that are."""
    for name in names:
        if name not in STAGES:
            known = ", ".join(sorted(STAGES)) or "none are installed"
            raise StudioError(f"unknown stage {name!r}; known stages: {known}")


@dataclass(frozen=True, eq=False)
class StageRecord:
    """What one stage did to one image."""

    name: str
    masks: Mapping[str, Image.Image]
    notes: tuple[str, ...]


def run_stages(
    stages: Sequence[Stage], given: StageInput, resources: StageResources, total: int
) -> tuple[Image.Image, tuple[StageRecord, ...]]:
    """Run ``stages`` in order on one image; the final image and each stage's record."""
    image, records = given.image, []
    for stage in stages:
        where = f"stage {stage.name!r} failed on image {given.index + 1} of {total}"
        where += f" (seed {given.seed})"
        try:
            out = stage.run(replace(given, image=image), resources)
        except StudioError as exc:
            raise StageError(f"{where}: {exc}") from exc
        except Exception as exc:
            logger.exception("%s", where)
            raise StageError(f"{where}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(out, StageOutput) or not isinstance(out.image, Image.Image):
            raise StageError(f"{where}: it returned {type(out).__name__}, not a StageOutput")
        bad = [name for name in out.masks if not NAME.fullmatch(name)]
        if bad:
            raise StageError(f"{where}: mask name {bad[0]!r} is not lower-case a-z, 0-9, -, _")
        image = out.image.convert("RGB")
        records.append(StageRecord(stage.name, MappingProxyType(dict(out.masks)), tuple(out.notes)))
    return image, tuple(records)
