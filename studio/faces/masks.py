"""Face masks composed as FaceFusion composes them: box ∩ region ∩ ¬occlusion, each feathered.

All masks are ``(H, W)`` ``float32`` in 0..1 at the image's size (1: replace, 0: keep the target).

- **box**: the face box grown by ``padding`` (fractions of the box's width/height: top, right,
  bottom, left), its edge faded by a Gaussian of sigma ``blur / 8`` times the box's larger side
  (FaceFusion's static box mask, in image pixels), inset by 3 sigma so it fades out inside the
  grown box, and exactly 0 beyond it.
- **region**: the union of the chosen parsing classes (default :data:`REGION_CLASSES`, the face
  itself), feathered *inwards* (blurred, then its upper half stretched to 0..1, as FaceFusion's
  region mask), so pixels outside the classes stay exactly 0 and values between 0 and 1 lie only
  along the region's inner edge.
- **occlusion**: what must be kept from the target: the classes of :data:`OCCLUDER_CLASSES` the
  parser sees (hair, glasses, hat), plus *holes* in the face: pixels the parser left
  ``background`` inside the hull of the face classes (a hand, a microphone, anything in front of
  the face the parser does not call face). Feathered *outwards*, so an occluder is kept whole.

:func:`compose_face_mask` gives all of them and ``mask = box * region * (1 - occlusion)``; an
empty result is an :class:`EmptyMaskError` naming the face; :func:`mask_in_crop` carries a mask
into an aligned crop. Pure numpy/OpenCV.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from studio.errors import StudioError
from studio.faces.parsing import FACE_CLASSES, FaceParsing, check_classes
from studio.faces.types import AlignedFace, Face

REGION_CLASSES: tuple[str, ...] = FACE_CLASSES
"""The default region: skin, brows, eyes, nose, mouth and lips (what a swap replaces)."""

OCCLUDER_CLASSES: tuple[str, ...] = ("hair", "eye_g", "hat")
"""Classes kept from the target wherever they lie (those the parser sees)."""

BOX_PADDING = (0.3, 0.2, 0.2, 0.2)
"""Default growth of the face box: top, right, bottom, left, in fractions of its height/width.
A detector's box ends at the brows and the jaw; grown so, its feather leaves 98 % of the face
region at 0.9 or more on the test portraits (0.1 all round would fade a fifth of it)."""

BOX_BLUR = 0.3
"""Default box feather, as FaceFusion's ``face_mask_blur``: a fraction of the box's larger side."""

REGION_FEATHER = 0.02
"""Sigma of the region's inward feather, as a fraction of the face box's larger side."""

OCCLUSION_FEATHER = 0.01
"""Sigma of the occlusion's outward feather, as a fraction of the face box's larger side."""

MIN_MASK_PIXELS = 16
"""Fewest pixels above one half for a composed mask to count as covering something."""


class EmptyMaskError(StudioError, ValueError):
    """A mask covers nothing; the message names the face and what was asked."""


@dataclass(frozen=True, eq=False)
class FaceMask:
    """The parts of one face's mask and their product ``mask``; all ``(H, W)`` float32 0..1."""

    box: np.ndarray
    region: np.ndarray
    occlusion: np.ndarray
    mask: np.ndarray


def describe_face(face: Face) -> str:
    """``face at (x, y, w, h)``, for messages."""
    return "face at (" + ", ".join(f"{v:.0f}" for v in face.bbox) + ") (x, y, w, h)"


def box_mask(
    shape: tuple[int, ...],
    bbox: tuple[float, float, float, float],
    *,
    padding: tuple[float, float, float, float] = BOX_PADDING,
    blur: float = BOX_BLUR,
) -> np.ndarray:
    """The feathered face box: 1 well inside, 0 from the grown box's edge outwards."""
    height, width = (int(s) for s in shape[:2])
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise ValueError(f"bbox must be (x, y, w, h) with w, h > 0 (got {bbox})")
    if blur < 0 or any(p < -0.5 for p in padding):
        raise ValueError(f"blur must be >= 0 and padding >= -0.5 (got {blur}, {padding})")
    top, right, bottom, left = padding
    x0, x1 = max(round(x - left * w), 0), max(round(x + w + right * w), 0)
    y0, y1 = max(round(y - top * h), 0), max(round(y + h + bottom * h), 0)
    box = np.zeros((height, width), np.float32)
    box[y0:y1, x0:x1] = 1.0
    sigma = max(w, h) * 0.5 * blur * 0.25
    if sigma <= 0:
        return box
    inset = int(np.ceil(3 * sigma))  # the blur fades out before the box's edge
    core = np.zeros_like(box)
    core[y0 + inset : max(y1 - inset, 0), x0 + inset : max(x1 - inset, 0)] = 1.0
    return cv2.GaussianBlur(core, (0, 0), sigma) * box


def region_mask(
    parsing: FaceParsing,
    face: Face,
    classes: Iterable[str] = REGION_CLASSES,
    *,
    feather: float = REGION_FEATHER,
) -> np.ndarray:
    """The union of ``classes`` (those the parser sees), feathered inwards; nothing there is an
    :class:`EmptyMaskError` naming the face."""
    classes = check_classes(classes)
    seen = [c for c in classes if parsing.sees(c)]
    hard = parsing.union(seen) if seen else np.zeros(parsing.shape, bool)
    if np.count_nonzero(hard) < MIN_MASK_PIXELS:
        raise EmptyMaskError(
            f"the {parsing.parser} parser found none of {', '.join(classes)} on the "
            f"{describe_face(face)}; pick another face or region, or check the face is visible"
        )
    sigma = feather * max(face.bbox[2], face.bbox[3])
    if sigma <= 0:
        return hard.astype(np.float32)
    soft = cv2.GaussianBlur(hard.astype(np.float32), (0, 0), sigma)
    return ((np.clip(soft, 0.5, 1.0) - 0.5) * 2.0) * hard


def occlusion_mask(
    parsing: FaceParsing,
    face: Face,
    classes: Iterable[str] = OCCLUDER_CLASSES,
    *,
    feather: float = OCCLUSION_FEATHER,
) -> np.ndarray:
    """What to keep from the target: ``classes`` the parser sees, plus background holes inside
    the face classes' hull; feathered outwards (every occluder pixel is 1)."""
    classes = check_classes(classes)
    seen = [c for c in classes if parsing.sees(c)]
    hard = parsing.union(seen) if seen else np.zeros(parsing.shape, bool)
    hard |= _holes(parsing)
    sigma = feather * max(face.bbox[2], face.bbox[3])
    if sigma <= 0 or not hard.any():
        return hard.astype(np.float32)
    soft = cv2.GaussianBlur(hard.astype(np.float32), (0, 0), sigma)
    return np.maximum(np.clip(soft * 2.0, 0.0, 1.0), hard)


def compose_face_mask(
    parsing: FaceParsing,
    face: Face,
    *,
    region: Iterable[str] = REGION_CLASSES,
    occluders: Iterable[str] = OCCLUDER_CLASSES,
    padding: tuple[float, float, float, float] = BOX_PADDING,
    blur: float = BOX_BLUR,
    region_feather: float = REGION_FEATHER,
    occlusion_feather: float = OCCLUSION_FEATHER,
) -> FaceMask:
    """Box ∩ region ∩ ¬occlusion for ``face``; an empty product is an :class:`EmptyMaskError`."""
    box = box_mask(parsing.shape, face.bbox, padding=padding, blur=blur)
    soft_region = region_mask(parsing, face, region, feather=region_feather)
    occlusion = occlusion_mask(parsing, face, occluders, feather=occlusion_feather)
    mask = box * soft_region * (1.0 - occlusion)
    if np.count_nonzero(mask > 0.5) < MIN_MASK_PIXELS:
        raise EmptyMaskError(
            f"the mask of the {describe_face(face)} covers nothing: its region lies outside the "
            "padded box or is all occluded; widen the padding or choose other classes"
        )
    return FaceMask(box=box, region=soft_region, occlusion=occlusion, mask=mask.astype(np.float32))


def mask_in_crop(mask: np.ndarray, crop: AlignedFace) -> np.ndarray:
    """An image-sized mask in an aligned crop's pixels (bilinear; 0 beyond the photo), for
    stages that edit the crop and paste it back."""
    height, width = crop.image.shape[:2]
    return cv2.warpAffine(
        np.asarray(mask, dtype=np.float32),
        crop.matrix,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def _holes(parsing: FaceParsing) -> np.ndarray:
    """Background pixels inside the convex hull of the face classes the parser sees."""
    seen = [c for c in FACE_CLASSES if parsing.sees(c)]
    face = parsing.union(seen)
    points = cv2.findNonZero(face.astype(np.uint8))
    if points is None:
        return face
    hull = np.zeros(parsing.shape, np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(points), 1)
    return hull.astype(bool) & parsing.mask("background")
