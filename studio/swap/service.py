"""Face swap as the studio runs it: target analysis, path A or B per face, the saved result.

:func:`run_swap` serves ``python -m studio swap``, the Swap tab and ``Studio.swap``;
:func:`swap_faces` is shared with the ``swap`` stage. Callers hold the studio's GPU lock.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from studio.errors import ModelUnavailableError, StudioError
from studio.faces.encoders import IdentityEmbedding, mean_embedding
from studio.faces.onnx_session import available_providers
from studio.faces.swapper import SOURCE_HINT, InSwapper
from studio.faces.types import Face
from studio.host import ActiveLora, PipelineHost
from studio.images import ImageLoadError, load_image
from studio.models.catalog import ModelSet, load_catalog
from studio.models.resolver import ModelResolver
from studio.outputs import GenerationRecord, save_image
from studio.requests import Identity
from studio.settings import Settings
from studio.swap.diffuse import DERIVED_KIND, PROMPT, DiffusionSwap, diffuse_face
from studio.swap.inswap import inswap_face
from studio.swap.targets import FaceChoice, choose_faces
from studio.swap.types import REFINE_STRENGTH, FaceEdit, SwapRequest, SwapResult

if TYPE_CHECKING:
    from studio.orchestrator import Studio

logger = logging.getLogger(__name__)

INSWAPPER_COMPONENT = ("sd15", "inswapper")
"""Catalog entry of ``inswapper_128.onnx`` (one file for every model set)."""
ARCFACE = "arcface"


def load_target(path: str | Path, what: str = "target photo") -> np.ndarray:
    """A target or reference photo as RGB; an unreadable file is a user error naming it."""
    try:
        return load_image(path).rgb
    except ImageLoadError as exc:
        raise StudioError(f"{what}: {exc}") from exc


def target_faces(studio: Studio, image: np.ndarray) -> list[Face]:
    """Every face of a target photo, largest first, with keypoints, mesh and the scorer's
    embedding (for ``match:``)."""
    return studio.analyze(image, studio.scoring_encoder())


def reference_embedding(studio: Studio, photo: Path) -> IdentityEmbedding | None:
    """The largest face's embedding in a ``match:`` photo, by the scoring encoder."""
    encoder = studio.scoring_encoder()
    faces = target_faces(studio, load_target(photo, f"--face match:{photo}"))
    return IdentityEmbedding(encoder, faces[0].embeddings[encoder]) if faces else None


def profile_arcface(studio: Studio, profile: str) -> np.ndarray:
    """The mean ArcFace embedding of the profile's accepted photos (path A's source)."""
    with studio.library() as library:
        found = library.get(profile)
    kept = [info.name for info in found.encoders]
    if ARCFACE not in kept or not found.accepted:
        raise StudioError(
            f"profile {profile!r} has no ArcFace embeddings (it keeps: {', '.join(kept)}), "
            "which the inswapper path needs; use --method diffusion (it works with any "
            "profile), or create the profile with `--encoder arcface`"
        )
    return mean_embedding(photo.embeddings[ARCFACE] for photo in found.accepted).vector


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
) -> FaceEdit:
    """Swap ``faces[i]`` for each of ``indices``: by the inswapper (with its ArcFace source)
    when given, then by diffusion when given (a refine pass after the inswapper)."""
    weight = np.zeros(image.shape[:2], np.uint8)
    notes: list[str] = []
    for index in indices:
        label = f"face {index}"
        if inswapper is not None:
            edit = inswap_face(image, faces[index], *inswapper, label=label)
            image, weight = edit.image, np.maximum(weight, edit.weight)
        if diffusion is not None:
            amount = REFINE_STRENGTH if inswapper is not None else strength
            edit = diffuse_face(
                image, faces[index], diffusion, strength=amount, generator=generator, label=label
            )
            image, weight = edit.image, np.maximum(weight, edit.weight)
            notes += edit.notes
    return FaceEdit(image, weight, tuple(dict.fromkeys(notes)))


def run_swap(studio: Studio, request: SwapRequest, out_dir: Path) -> SwapResult:
    """Swap the request's faces and save the result (watermark, provenance, sidecar naming
    the target photo, the pasted weight as the ``swap`` mask)."""
    request.validate()
    choice = FaceChoice.parse(request.face)
    target = Path(request.target)
    image = load_target(target)
    faces = target_faces(studio, image)
    reference = None
    if choice.match is not None:
        reference = reference_embedding(studio, choice.match)
    scorer = studio.analyzer(studio.scoring_encoder()).encoders[studio.scoring_encoder()]
    indices = choose_faces(
        faces, choice, target=target.name, reference=reference, threshold=scorer.threshold
    )

    inswapper = None
    if request.method == "inswapper":
        source = profile_arcface(studio, request.profile)
        inswapper = (load_inswapper(studio.settings), source)
    diffusion = identity = None
    if request.method == "diffusion" or request.refine:
        identity = studio.identity(request.profile)
        studio.pipeline()
        lora = (ActiveLora("identity", str(identity.lora.path)),) if identity.lora else ()
        studio.host.use_loras(lora)
        diffusion = diffusion_swap(studio.host, studio.model_set, identity, request.steps)
    edit = swap_faces(
        image,
        faces,
        indices,
        inswapper=inswapper,
        diffusion=diffusion,
        strength=request.strength,
        generator=torch.Generator("cpu").manual_seed(request.seed),
    )

    method = request.method + (" + diffusion refine" if inswapper and diffusion else "")
    height, width = image.shape[:2]
    record = GenerationRecord(
        prompt=PROMPT.format(subject=identity.subject) if identity else "",
        negative_prompt="",
        seed=request.seed,
        steps=diffusion.steps if diffusion else 0,
        guidance=diffusion.guidance if diffusion else 0.0,
        width=width,
        height=height,
        sampler=type(diffusion.pipe.scheduler).__name__ if diffusion else "inswapper",
        model_set=studio.model_set.name if diffusion else "inswapper",
    )
    extra = {
        "profile": request.profile,
        "target": target.name,
        "swap": {
            "method": method,
            "face": str(choice),
            "faces": indices,
            "faces_found": len(faces),
            "strength": request.strength if diffusion else None,
        },
        "stages": [],
    }
    mask = Image.fromarray(edit.weight)
    path = save_image(Image.fromarray(edit.image), record, out_dir, extra, {"swap": mask})
    return SwapResult(path, tuple(indices), len(faces), method, edit.notes)
