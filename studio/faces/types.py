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
