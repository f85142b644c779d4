"""Face swap building blocks that need no studio: photos in, faces swapped per path.

Shared by :mod:`studio.swap.service` (the command, the UI, ``Studio.swap``) and the ``swap``
stage. Callers hold the studio's GPU lock around the diffusion path.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from studio.errors import ModelUnavailableError, StudioError
from studio.faces.onnx_session import available_providers
from studio.faces.swapper import SOURCE_HINT, InSwapper
from studio.faces.types import Face
from studio.host import PipelineHost
from studio.models.catalog import ModelSet, load_catalog
from studio.models.resolver import ModelResolver
from studio.requests import Identity
from studio.settings import Settings
from studio.stages import FaceParser
from studio.swap.diffuse import DERIVED_KIND, DiffusionSwap, diffuse_face
from studio.swap.inswap import inswap_face
from studio.swap.types import REFINE_STRENGTH, FaceEdit

INSWAPPER_COMPONENT = ("sd15", "inswapper")
"""Catalog entry of ``inswapper_128.onnx`` (one file for every model set)."""


@functools.lru_cache(maxsize=1)
def _inswapper(path: str, device: str) -> InSwapper:
    return InSwapper(path, providers=available_providers(device))


def load_inswapper(settings: Settings) -> InSwapper:
    """The inswapper from the catalog (or ``--weights inswapper=PATH``), loaded once."""
    set_name, component = INSWAPPER_COMPONENT
    try:
        path = ModelResolver(settings).resolve(load_catalog()[set_name], component)
    except ModelUnavailableError as exc:
        raise StudioError(f"{exc}. {SOURCE_HINT}; or use --method diffusion") from exc
    device = settings.device if settings.faces_device == "auto" else settings.faces_device
    return _inswapper(str(path), device)


def diffusion_swap(
    host: PipelineHost, model_set: ModelSet, identity: Identity, steps: int | None
) -> DiffusionSwap:
    """Path B on the host's loaded pipeline (the caller has loaded it)."""
    family = model_set.base_family
    pipe = host.derived(DERIVED_KIND)
    has_pose = getattr(pipe, family.control_argument, None) is not None
    defaults = model_set.defaults
    return DiffusionSwap(
        pipe=pipe,
        run=host.run,
        size=int(defaults.get("width", family.default_size)),
        identity_embeds=identity.embeds,
        subject=identity.subject,
        steps=steps or int(defaults.get("steps", 30)),
        guidance=float(defaults.get("guidance", 7.0)),
        pose_kind=family.pose_kind if has_pose else None,
        pose_argument=family.pose_argument,
    )


def swap_faces(
    image: np.ndarray,
    faces: Sequence[Face],
    indices: Sequence[int],
    *,
    inswapper: tuple[InSwapper, np.ndarray] | None,
    diffusion: DiffusionSwap | None,
    strength: float,
    generator: torch.Generator,
    parser: FaceParser,
) -> FaceEdit:
    """Swap ``faces[i]`` for each of ``indices``: by the inswapper (with its ArcFace source)
    when given, then by diffusion when given (a refine pass after the inswapper); ``parser``
    gives each face's mask (on the photo as it is when that face's turn comes)."""
    weight = np.zeros(image.shape[:2], np.uint8)
    notes: list[str] = []
    for index in indices:
        label = f"face {index}"
        if inswapper is not None:
            edit = inswap_face(image, faces[index], *inswapper, parser=parser, label=label)
            image, weight = edit.image, np.maximum(weight, edit.weight)
        if diffusion is not None:
            amount = REFINE_STRENGTH if inswapper is not None else strength
            edit = diffuse_face(
                image,
                faces[index],
                diffusion,
                strength=amount,
                generator=generator,
                parser=parser,
                label=label,
            )
            image, weight = edit.image, np.maximum(weight, edit.weight)
            notes += edit.notes
    return FaceEdit(image, weight, tuple(dict.fromkeys(notes)))
