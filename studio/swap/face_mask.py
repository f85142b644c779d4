"""The region a swap replaces, in the aligned crop's pixels: the one place the swap gets masks.

FaceFusion's composition (:mod:`studio.faces.masks`): the feathered face box ∩ the face
classes of the studio's face parser (skin, brows, eyes, nose, lips, mouth) ∩ not the occluders
(hair, glasses, a hat, a hand: kept from the target), carried into the crop.
"""

from __future__ import annotations

import numpy as np

from studio.errors import StudioError
from studio.faces.masks import MIN_MASK_PIXELS, compose_face_mask, mask_in_crop
from studio.faces.types import AlignedFace, Face
from studio.stages import FaceParser


def face_mask(image: np.ndarray, face: Face, aligned: AlignedFace, parser: FaceParser):
    """``float32`` mask (1 = replace) of ``face`` of ``image`` in the crop ``aligned`` was cut
    as; a mask that covers nothing is an error naming the face."""
    composed = compose_face_mask(parser.parse(image, face), face)
    return mask_in_crop(composed.mask, aligned)


def check_covers(mask: np.ndarray, what: str) -> None:
    """Refuse a mask (floats 0..1 or ``uint8``) with nothing to replace."""
    mask = np.asarray(mask)
    half = 127 if mask.dtype == np.uint8 else 0.5
    if np.count_nonzero(mask > half) < MIN_MASK_PIXELS:
        raise StudioError(
            f"the face mask of {what} covers nothing (the face is too small, or its landmarks "
            "fall outside the photo); choose another face or a photo where it is larger"
        )
