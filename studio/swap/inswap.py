"""Path A: insightface's inswapper at 128 px, colour-matched and pasted back feathered."""

from __future__ import annotations

import numpy as np

from studio.faces.align import align_face
from studio.faces.blend import match_color, paste_face
from studio.faces.swapper import INSWAPPER_SIZE, InSwapper
from studio.faces.types import Face
from studio.stages import FaceParser
from studio.swap.face_mask import check_covers, face_mask
from studio.swap.types import FaceEdit

FEATHER = 0.05
"""Extra soft edge of the paste (the mask is feathered already), a fraction of the crop side:
the crop scales with the face, so the edge does too."""


def inswap_face(
    image: np.ndarray,
    face: Face,
    swapper: InSwapper,
    embedding: np.ndarray,
    *,
    parser: FaceParser,
    label: str,
) -> FaceEdit:
    """``image`` with ``face`` swapped to the ArcFace ``embedding``'s identity, within the
    face mask of ``parser``."""
    aligned = align_face(image, face.kps, INSWAPPER_SIZE)
    mask = face_mask(image, face, aligned, parser)
    check_covers(mask, label)
    swapped = match_color(swapper.swap(aligned.image, embedding), aligned.image, mask)
    result, weight = paste_face(image, swapped, aligned, mask, feather=FEATHER)
    check_covers(weight, label)
    return FaceEdit(result, weight)
