"""The region a swap replaces, in the aligned crop's pixels: the one place the swap gets masks.

The face oval of the target's face mesh (kept from the target beyond it: hair, ears, the
background); without a mesh, an ellipse fitted to the five keypoints.
"""

from __future__ import annotations

import cv2
import numpy as np

from studio.errors import StudioError
from studio.faces import regions
from studio.faces.align import transform_points
from studio.faces.types import AlignedFace, Face

KEYPOINT_ELLIPSE = (0.95, 1.25)
"""Without a mesh: the ellipse's half-width and half-height in eye-to-eye distances."""


def face_mask(face: Face, aligned: AlignedFace) -> np.ndarray:
    """``uint8`` mask (255 = replace) of ``face`` in the crop ``aligned`` was cut as."""
    size = aligned.image.shape[:2]
    mask = np.zeros(size, np.uint8)
    if face.mesh is not None:
        oval = transform_points(np.asarray(face.mesh)[list(regions.FACE_OVAL), :2], aligned.matrix)
        cv2.fillPoly(mask, [np.round(oval).astype(np.int32)], 255, lineType=cv2.LINE_AA)
    else:
        kps = transform_points(face.kps, aligned.matrix)
        eyes = float(np.hypot(*(kps[1] - kps[0])))
        centre = kps.mean(axis=0)
        axes = (round(eyes * KEYPOINT_ELLIPSE[0]), round(eyes * KEYPOINT_ELLIPSE[1]))
        cv2.ellipse(mask, (round(centre[0]), round(centre[1])), axes, 0, 0, 360, 255, cv2.FILLED)
    return mask


def check_covers(mask: np.ndarray, what: str) -> None:
    """Refuse a mask with nothing to replace."""
    if not np.any(mask):
        raise StudioError(
            f"the face mask of {what} covers nothing (the face is too small, or its landmarks "
            "fall outside the photo); choose another face or a photo where it is larger"
        )
