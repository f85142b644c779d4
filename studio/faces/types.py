"""Typed values that face perception passes between its stages.

Images are RGB ``uint8`` arrays of shape ``(H, W, 3)`` everywhere inside the studio; conversion
from files or BGR libraries happens once, at the edge. Five-point keypoints follow insightface's
order, in image coordinates: the eye on the image's left, the eye on the image's right, the nose
tip, the mouth corner on the image's left, the mouth corner on the image's right.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

NUM_KEYPOINTS = 5

ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
"""insightface's ``arcface_dst``: the five keypoints of a 112 x 112 ArcFace crop, in pixels."""
ARCFACE_TEMPLATE_112.setflags(write=False)


def check_rgb(image: np.ndarray) -> None:
    """Raise unless ``image`` is a non-empty RGB ``uint8`` array of shape ``(H, W, 3)``."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected an RGB uint8 numpy image, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        got = f"{image.dtype} {image.shape}"
        raise ValueError(f"expected a non-empty RGB uint8 image of shape (H, W, 3), got {got}")


@dataclass(frozen=True)
class Detection:
    """One detected face: box ``(x, y, w, h)`` in pixels, confidence, ``(5, 2)`` keypoints."""

    bbox: tuple[float, float, float, float]
    score: float
    kps: np.ndarray

    @property
    def area(self) -> float:
        return self.bbox[2] * self.bbox[3]


@dataclass(frozen=True)
class Pose:
    """Head rotation in degrees: yaw (turn, + to the image's right), pitch (+ up), roll."""

    yaw: float
    pitch: float
    roll: float


@dataclass(frozen=True)
class Quality:
    """A photo-quality verdict for one face: usable or not, why, and the measured numbers."""

    ok: bool
    reasons: tuple[str, ...]
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class AlignedFace:
    """A face crop warped to a template: ``matrix`` maps image to crop, ``inverse`` back."""

    image: np.ndarray
    matrix: np.ndarray
    inverse: np.ndarray


@dataclass(frozen=True)
class Face:
    """Everything the studio knows about one face in one image."""

    bbox: tuple[float, float, float, float]
    score: float
    kps: np.ndarray
    mesh: np.ndarray | None = None
    pose: Pose | None = None
    embeddings: Mapping[str, np.ndarray] = field(default_factory=lambda: MappingProxyType({}))
    quality: Quality | None = None
