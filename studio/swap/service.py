"""Face swap as the studio runs it: target analysis, path A or B per face, the saved result.

:func:`run_swap` serves ``python -m studio swap``, the Swap tab and ``Studio.swap``, which holds
the GPU lock around it. It reads the studio through :class:`SwapStudio`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from studio.errors import StudioError
from studio.faces.analyzer import FaceAnalyzer
from studio.faces.encoders import IdentityEmbedding, mean_embedding
from studio.faces.types import Face
from studio.host import ActiveLora, PipelineHost
from studio.identity import profile_identity_embeds
from studio.models.catalog import ModelSet
from studio.outputs import GenerationRecord, save_image
from studio.profiles.library import ProfileLibrary
from studio.requests import Identity
from studio.settings import Settings
from studio.stages import FaceParser
from studio.swap.diffuse import PROMPT
from studio.swap.engine import diffusion_swap, load_inswapper, swap_faces
from studio.swap.targets import FaceChoice, choose_faces, load_target, match_reference
from studio.swap.types import SwapRequest, SwapResult

ARCFACE = "arcface"


class SwapStudio(Protocol):
    """What the swap uses of :class:`~studio.orchestrator.Studio`."""

    settings: Settings
    model_set: ModelSet
    host: PipelineHost

    @property
    def face_parser(self) -> FaceParser: ...
    def analyze(self, image: np.ndarray, *encoders: str) -> list[Face]: ...
    def analyzer(self, *encoders: str) -> FaceAnalyzer: ...
    def scoring_encoder(self) -> str: ...
    def library(self) -> AbstractContextManager[ProfileLibrary]: ...
    def identity(self, profile_name: str, *, use_lora: bool = True) -> Identity: ...
    def pipeline(self): ...


def target_faces(studio: SwapStudio, image: np.ndarray) -> list[Face]:
    """Every face of a target photo, largest first, with keypoints, mesh and the scorer's
    embedding (for ``match:``)."""
    return studio.analyze(image, studio.scoring_encoder())


def profile_arcface(studio: SwapStudio, profile: str) -> np.ndarray:
    """The mean ArcFace embedding of the profile's accepted photos (path A's source)."""
    with studio.library() as library:
        found = library.get(profile)
    kept = [info.name for info in found.encoders]
    if ARCFACE not in kept:
        raise StudioError(
            f"profile {profile!r} has no ArcFace embeddings (it keeps: {', '.join(kept)}), "
            "which the inswapper path needs; use --method diffusion (it works with any "
            "profile), or create the profile with `--encoder arcface`"
        )
    rows = profile_identity_embeds(found, ARCFACE).numpy()  # no accepted photo: its error
    return mean_embedding(IdentityEmbedding(ARCFACE, row) for row in rows).vector


def run_swap(studio: SwapStudio, request: SwapRequest, out_dir: Path) -> SwapResult:
    """Swap the request's faces and save the result (watermark, provenance, sidecar naming
    the target photo, the pasted weight as the ``swap`` mask)."""
    request.validate()
    choice = FaceChoice.parse(request.face)
    target = Path(request.target)
    image = load_target(target)
    faces = target_faces(studio, image)
    encoder = studio.scoring_encoder()
    reference = None
    if choice.match is not None:
        reference = match_reference(choice.match, lambda rgb: target_faces(studio, rgb), encoder)
    scorer = studio.analyzer(encoder).encoders[encoder]
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
        parser=studio.face_parser,
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
