"""Putting an edited face crop back into its photo: colour matching and feathered paste-back.

Pure numpy/OpenCV on RGB ``uint8`` images. The crop comes from
:func:`~studio.faces.align.align_face`; masks are in crop pixels, ``uint8`` 0-255 or floats in
``[0, 1]``.
"""

from __future__ import annotations

import cv2
import numpy as np

from studio.faces.align import DEFAULT_FEATHER, paste_with_weight
from studio.faces.types import AlignedFace, check_rgb

MIN_STD = 1e-3
"""Channel spread below which a LAB channel is taken as flat (no scaling, only the shift)."""


def match_color(image: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None):
    """``image`` with its LAB mean and standard deviation moved to ``reference``'s.

    Statistics are taken where ``mask`` is at least half on (everywhere without a mask), the
    transfer of Reinhard et al. (2001) in OpenCV's LAB; the whole image is changed.
    """
    check_rgb(image)
    check_rgb(reference)
    if image.shape != reference.shape:
        raise ValueError(f"image {image.shape} and reference {reference.shape} differ in shape")
    inside = np.ones(image.shape[:2], bool) if mask is None else _weights(mask) >= 0.5
    if inside.shape != image.shape[:2]:
        raise ValueError(f"mask must have the image's shape {image.shape[:2]}, got {inside.shape}")
    if not inside.any():
        return image.copy()
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    ref = cv2.cvtColor(reference.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    mean, std = lab[inside].mean(axis=0), lab[inside].std(axis=0)
    ref_mean, ref_std = ref[inside].mean(axis=0), ref[inside].std(axis=0)
    gain = np.where(std > MIN_STD, ref_std / np.maximum(std, MIN_STD), 1.0)
    moved = (lab - mean) * gain + ref_mean
    rgb = cv2.cvtColor(moved.astype(np.float32), cv2.COLOR_LAB2RGB)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def paste_face(
    canvas: np.ndarray,
    crop: np.ndarray,
    aligned: AlignedFace,
    mask: np.ndarray,
    *,
    feather: float = DEFAULT_FEATHER,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``crop`` into ``canvas`` through ``aligned``'s inverse transform within ``mask``.

    The mask is eroded by half of ``feather`` (a fraction of the crop's side, so in proportion
    to the face) and blurred over it (:func:`~studio.faces.align.paste_back`). Returns the new
    image and the pasted weight in canvas pixels (``uint8``): where it is 0 the new image
    equals ``canvas`` bit for bit.
    """
    return paste_with_weight(canvas, crop, aligned, mask, feather=feather)


def _weights(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask.astype(np.float32) / 255.0 if mask.dtype == np.uint8 else mask.astype(np.float32)
