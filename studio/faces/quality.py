"""Per-face photo-quality verdicts with reasons; every threshold lives in ``QualityThresholds``.

Measured on a face's 112 px ArcFace-aligned crop (grey) so that numbers do not depend on the
photo's resolution, except the face size, which is the detector box's longer side in pixels.
Reference values on the test portraits: sharpness 260-4000 (blurred copies 4-220 depending on
how strong), brightness 108-151, eye openness 0.16-0.34.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import cv2
import numpy as np

from studio.faces.mesh import EYE_CLOSED_THRESHOLD, eye_openness
from studio.faces.types import Detection, Pose, Quality

ARCFACE_CROP = 112
# Inner face region of the 112 px crop (brows to chin, cheek to cheek) for brightness.
_INNER = (slice(24, 104), slice(16, 96))


@dataclass(frozen=True)
class QualityThresholds:
    """Limits a usable face must meet. Change them here, nowhere else.

    - ``min_face_px``: the detector box's longer side; below it a face is too small to train on
      (a 512 px training crop would upsample it more than 2.5x).
    - ``min_sharpness``: variance of the Laplacian of the grey 112 px crop.
    - ``max_yaw``/``max_pitch``: degrees, from the face mesh; without a mesh, the nose leaving
      the span between the eyes (``max_nose_offset`` of the eye distance from their midpoint)
      marks a profile view.
    - ``min_brightness``/``max_brightness``: mean grey level (0-255) of the inner face.
    - ``min_eye_openness``: mean eye aspect ratio from the mesh (closed or covered eyes).
    """

    min_face_px: float = 96.0
    min_sharpness: float = 80.0
    max_yaw: float = 45.0
    max_pitch: float = 35.0
    max_nose_offset: float = 0.45
    min_brightness: float = 50.0
    max_brightness: float = 205.0
    min_eye_openness: float = EYE_CLOSED_THRESHOLD


DEFAULT_THRESHOLDS = QualityThresholds()


def assess(
    detection: Detection,
    crop112: np.ndarray,
    mesh: np.ndarray | None = None,
    pose: Pose | None = None,
    thresholds: QualityThresholds = DEFAULT_THRESHOLDS,
) -> Quality:
    """Judge one face from its detection, its 112 px aligned RGB crop and, if known, mesh/pose."""
    t = thresholds
    grey = cv2.cvtColor(crop112, cv2.COLOR_RGB2GRAY)
    metrics: dict[str, float] = {
        "face_px": float(max(detection.bbox[2], detection.bbox[3])),
        "sharpness": float(cv2.Laplacian(grey, cv2.CV_64F).var()),
        "brightness": float(grey[_INNER].mean()),
    }
    reasons: list[str] = []
    if metrics["face_px"] < t.min_face_px:
        reasons.append(f"face too small ({metrics['face_px']:.0f} px < {t.min_face_px:.0f} px)")
    if metrics["sharpness"] < t.min_sharpness:
        reasons.append(f"blurry (sharpness {metrics['sharpness']:.0f} < {t.min_sharpness:.0f})")
    if pose is not None:
        metrics.update(yaw=pose.yaw, pitch=pose.pitch, roll=pose.roll)
        if abs(pose.yaw) > t.max_yaw or abs(pose.pitch) > t.max_pitch:
            reasons.append(
                f"extreme pose (yaw {pose.yaw:.0f}°, pitch {pose.pitch:.0f}°; "
                f"limits ±{t.max_yaw:.0f}°, ±{t.max_pitch:.0f}°)"
            )
    else:
        metrics["nose_offset"] = _nose_offset(detection.kps)
        if abs(metrics["nose_offset"]) > t.max_nose_offset:
            reasons.append("extreme pose (profile view: the nose is outside the eyes' span)")
    brightness = metrics["brightness"]
    if brightness < t.min_brightness:
        reasons.append(f"underexposed (brightness {brightness:.0f} < {t.min_brightness:.0f})")
    elif brightness > t.max_brightness:
        reasons.append(f"overexposed (brightness {brightness:.0f} > {t.max_brightness:.0f})")
    if mesh is not None:
        metrics["eye_openness"] = float(np.mean(eye_openness(mesh)))
        if metrics["eye_openness"] < t.min_eye_openness:
            reasons.append(
                f"eyes closed or covered (openness {metrics['eye_openness']:.2f} "
                f"< {t.min_eye_openness:.2f})"
            )
    return Quality(ok=not reasons, reasons=tuple(reasons), metrics=MappingProxyType(metrics))


def _nose_offset(kps: np.ndarray) -> float:
    """Nose tip's offset from the eyes' midpoint along the eye line, in eye distances."""
    left, right, nose = kps[0], kps[1], kps[2]
    axis = right - left
    span = float(np.dot(axis, axis)) or 1.0
    return float(np.dot(nose - (left + right) / 2, axis) / span)
