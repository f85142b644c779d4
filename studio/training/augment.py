"""Light, deterministic augmentation of head crops: mirror, small zoom and shift, mild colour.

Changes stay small so the face keeps its identity: no rotation, no hue change (skin tone is part
of a likeness), and borders are mirrored (``BORDER_REFLECT_101``), never black.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# ITU-R BT.601 luma weights, as used by PIL and torchvision for grayscale.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class AugmentConfig:
    """Limits of the random changes; each factor is drawn uniformly in ``1 ± limit``.

    ``flip_probability``: chance of a horizontal mirror. ``scale``: zoom about the centre.
    ``shift``: translation in each axis, as a fraction of the side. ``brightness``,
    ``contrast``, ``saturation``: colour jitter factors, as torchvision's ``ColorJitter``
    applies them. Hue is never changed.
    """

    flip_probability: float = 0.5
    scale: float = 0.08
    shift: float = 0.04
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1


DEFAULT_AUGMENT = AugmentConfig()


def augment(
    crop: np.ndarray, rng: np.random.Generator, config: AugmentConfig = DEFAULT_AUGMENT
) -> np.ndarray:
    """A randomly altered copy of an RGB ``uint8`` crop, same shape and dtype.

    The same ``rng`` state gives the same result: every draw is made whatever ``config`` says.
    """
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) crop, got {crop.dtype} {crop.shape}")
    flip = rng.random() < config.flip_probability
    scale = 1.0 + rng.uniform(-config.scale, config.scale)
    shift = rng.uniform(-config.shift, config.shift, size=2)
    brightness, contrast, saturation = 1.0 + rng.uniform(-1.0, 1.0, size=3) * np.array(
        [config.brightness, config.contrast, config.saturation]
    )

    height, width = crop.shape[:2]
    source = np.ascontiguousarray(crop[:, ::-1]) if flip else crop
    cx, cy = (width - 1) / 2, (height - 1) / 2
    matrix = np.array(
        [
            [scale, 0.0, (1 - scale) * cx + shift[0] * width],
            [0.0, scale, (1 - scale) * cy + shift[1] * height],
        ]
    )
    warped = cv2.warpAffine(
        source, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )

    image = warped.astype(np.float32) * brightness
    mean = float((image @ _LUMA).mean())
    image = (image - mean) * contrast + mean
    gray = (image @ _LUMA)[..., None]
    image = (image - gray) * saturation + gray
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def variants(
    crop: np.ndarray, count: int, seed: int, config: AugmentConfig = DEFAULT_AUGMENT
) -> list[np.ndarray]:
    """``count`` versions of a crop: itself, its mirror, then random augmentations from ``seed``."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    rng = np.random.default_rng(seed)
    result = [crop.copy()]
    if count > 1:
        result.append(np.fliplr(crop).copy())
    result.extend(augment(crop, rng, config) for _ in range(count - 2))
    return result
