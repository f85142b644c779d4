"""The ``swap`` stage: the person's face onto a template photo (FaceChain's template flow).

The request names the template (``PortraitRequest.swap_target``, ``--swap-target PHOTO``) and
its face (``swap_face``, ``--swap-face``: a number, largest first, ``all`` or ``match:PHOTO``);
that face is repainted with the person's identity by diffusion (path B of :mod:`studio.swap`),
at the target's pose, and the template with the new face replaces the generated image, to be
scored and saved. The stage's ``face`` mask is the pasted weight.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from studio.errors import StudioError
from studio.stages import StageInput, StageOutput, StageResources, register_stage
from studio.swap.engine import diffusion_swap, swap_faces
from studio.swap.targets import FaceChoice, choose_faces, load_target, match_reference
from studio.swap.types import DEFAULT_STRENGTH

FLAG = "--swap-face"


class SwapStage:
    """Swaps the person into the request's template photo."""

    name = "swap"

    def run(self, given: StageInput, resources: StageResources) -> StageOutput:
        request = given.request
        if request.swap_target is None:
            raise StudioError(
                "the swap stage needs a template photo: pass --swap-target PHOTO (or "
                "swap_target= in the request)"
            )
        target = Path(request.swap_target)
        image = load_target(target, "swap target")
        faces = resources.analyzer.analyze(image)
        choice = FaceChoice.parse(request.swap_face, FLAG)
        indices = choose_faces(
            faces, choice, target=target.name, flag=FLAG, **_reference(choice, resources.analyzer)
        )
        host = resources.host
        swap = diffusion_swap(host, host.model_set, given.identity, request.steps)
        edit = swap_faces(
            image,
            faces,
            indices,
            inswapper=None,
            diffusion=swap,
            strength=DEFAULT_STRENGTH,
            generator=resources.generator,
            parser=resources.face_parser,
        )
        chosen = ", ".join(map(str, indices))
        face = "face" if len(indices) == 1 else "faces"
        note = f"swapped into {target.name} ({face} {chosen} of {len(faces)}) by diffusion"
        return StageOutput(
            Image.fromarray(np.ascontiguousarray(edit.image)),
            masks={"face": Image.fromarray(edit.weight)},
            notes=(note, *edit.notes),
        )


def _reference(choice: FaceChoice, analyzer) -> dict:
    """For ``match:PHOTO``, ``choose_faces``' reference and threshold by the analyzer's first
    encoder; nothing otherwise."""
    if choice.match is None:
        return {}
    encoder = next(iter(analyzer.encoders))
    reference = match_reference(choice.match, analyzer.analyze, encoder, FLAG)
    return {"reference": reference, "threshold": analyzer.encoders[encoder].threshold}


register_stage(SwapStage.name, SwapStage)
