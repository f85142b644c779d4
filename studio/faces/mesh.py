"""Dense face landmarks from mediapipe's face mesh, and what the studio derives from them.

``FaceMesher`` runs mediapipe 0.10.21's FaceMesh (an optional extra, imported only when a mesher
is built). Everything else here is pure numpy/OpenCV on a ``(478, 3)`` mesh in pixels: ``x`` to
the image's right, ``y`` down, ``z`` towards the scene (smaller is nearer the camera) in the same
scale as ``x``. Region indices live in :mod:`studio.faces.regions`; ``left``/``right`` name the
subject's own sides there and here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from types import ModuleType, TracebackType
from typing import Self

import cv2
import numpy as np

from studio.faces import regions as face_regions
from studio.faces.types import Pose, check_rgb

logger = logging.getLogger(__name__)

NUM_LANDMARKS = 478
NUM_SURFACE_LANDMARKS = 468

# Eye aspect ratio (mean lid gap over corner-to-corner width) below which an eye counts as
# closed. Open eyes in the test portraits measure 0.22-0.34 (one eye squinted by a broad smile:
# 0.16); lids that meet give about 0.
EYE_CLOSED_THRESHOLD = 0.12

# Per eye: (outer corner, inner corner), then (upper lid, lower lid) pairs for the gap.
_LEFT_EYE_LIDS = ((263, 362), ((387, 373), (385, 380)))
_RIGHT_EYE_LIDS = ((33, 133), ((160, 144), (158, 153)))

# A few points of mediapipe's canonical face model (mediapipe/modules/face_geometry/data/
# canonical_face_model.obj, Apache-2.0), in centimetres: x to the subject's left (the image's
# right for a frontal face), y up, z out of the face towards the viewer. Nose tip, forehead top,
# nose root, chin, eye corners, mouth corners and the cheek sides of the face oval.
_CANONICAL_POINTS: tuple[tuple[int, tuple[float, float, float]], ...] = (
    (1, (0.0, -1.126865, 7.475604)),
    (10, (0.0, 8.261778, 4.481535)),
    (168, (0.0, 3.271027, 5.236015)),
    (152, (0.0, -9.403378, 4.264492)),
    (33, (-4.445859, 2.663991, 3.173422)),
    (133, (-1.856432, 2.585245, 3.757904)),
    (362, (1.856432, 2.585245, 3.757904)),
    (263, (4.445859, 2.663991, 3.173422)),
    (61, (-2.456206, -4.342621, 4.283884)),
    (291, (2.456206, -4.342621, 4.283884)),
    (234, (-7.664182, 0.673132, -2.435867)),
    (454, (7.664182, 0.673132, -2.435867)),
)

MASK_REGIONS = (
    "face_oval",
    "left_eye",
    "right_eye",
    "left_eyebrow",
    "right_eyebrow",
    "lips",
    "mouth",
    "nose",
    "left_iris",
    "right_iris",
)

# OpenCV draws with sub-pixel precision when points are given in fixed point: 1/16 px.
_SHIFT = 4
_ONE = 1 << _SHIFT

# Iris mask name -> (its eye's polygon name, the iris centre index).
_IRISES = {
    "left_iris": ("left_eye", face_regions.LEFT_IRIS_CENTER),
    "right_iris": ("right_eye", face_regions.RIGHT_IRIS_CENTER),
}

_INSTALL_HINT = (
    "FaceMesher needs the optional mediapipe extra. Install it with `make install`, or by hand: "
    "`pip install --no-deps mediapipe==0.10.21` plus its run-time needs (the `mesh` extra) "
    "`pip install absl-py attrs flatbuffers matplotlib` "
    "(--no-deps because mediapipe declares numpy<2 and protobuf<5, which clash with OpenCV 4.13)."
)


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Silence what mediapipe writes to fd 2 (and ``sys.stderr``) while its graph loads.

    Loading prints a protobuf 6 ``GetPrototype`` complaint that looks like a traceback but is
    harmless; Python exceptions still propagate.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _import_face_mesh() -> ModuleType:
    try:
        from mediapipe.python.solutions import face_mesh
    except ImportError as err:
        raise ImportError(f"{_INSTALL_HINT} (import failed: {err})") from err
    _drop_kept_traceback()
    return face_mesh


def _drop_kept_traceback() -> None:
    """mediapipe keeps the ImportError of its optional ``sounddevice`` import (``sd_error``),
    whose traceback holds every frame that was on the stack at first import: whatever large
    object first built a mesher (a trainer and its models) would never be freed."""
    audio = sys.modules.get("mediapipe.tasks.python.audio.core.audio_record")
    error = getattr(audio, "sd_error", None)
    if isinstance(error, BaseException):
        error.__traceback__ = None
        error.__context__ = error.__cause__ = None


class MediapipeGraph:
    """Owns one mediapipe solution graph (``_graph``): close it, or use the owner as a context
    manager, to free it; later calls raise."""

    _graph = None

    def close(self) -> None:
        """Free the mediapipe graph."""
        if self._graph is not None:
            self._graph.close()
            self._graph = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FaceMesher(MediapipeGraph):
    """One mediapipe FaceMesh graph (static images, refined irises) giving 478 points per face.

    A mesher is not thread-safe; use one per thread. Close it, or use it as a context manager,
    to free the graph.

    Args:
        max_num_faces: faces the graph looks for per run; the largest (or the one in ``bbox``)
            is returned.
        min_detection_confidence: mediapipe's face-detection threshold.
        crop_scale: with a ``bbox``, side of the square crop as a multiple of the box's larger
            side (the crop is clipped to the image).
    """

    def __init__(
        self,
        max_num_faces: int = 4,
        min_detection_confidence: float = 0.5,
        crop_scale: float = 2.0,
    ) -> None:
        if crop_scale < 1.0:
            raise ValueError(f"crop_scale must be >= 1 (got {crop_scale})")
        with _native_stderr_silenced():
            face_mesh = _import_face_mesh()
            self._graph = face_mesh.FaceMesh(
                static_image_mode=True,
                max_num_faces=max_num_faces,
                refine_landmarks=True,
                min_detection_confidence=min_detection_confidence,
            )
        self.crop_scale = crop_scale

    def landmarks(
        self,
        image_rgb: np.ndarray,
        bbox: tuple[float, float, float, float] | None = None,
    ) -> np.ndarray | None:
        """Mesh of one face as ``(478, 3)`` float32 pixels, or ``None`` when none is found.

        Without ``bbox`` the largest face in the image is meshed. With ``bbox`` ``(x, y, w, h)``
        (e.g. a detector's box) only a square crop around it is searched, which finds small
        faces and picks the right one among several; the face whose centre lies in the box is
        returned.
        """
        if self._graph is None:
            raise RuntimeError("this FaceMesher is closed; build a new one")
        check_rgb(image_rgb)
        if bbox is None:
            meshes = self._run(image_rgb, 0, 0)
            if not meshes:
                logger.debug("no face found in a %s image", image_rgb.shape[:2])
                return None
            return max(meshes, key=_extent_area)

        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise ValueError(f"bbox must be (x, y, w, h) with w, h > 0 (got {bbox})")
        height, width = image_rgb.shape[:2]
        half = 0.5 * self.crop_scale * max(w, h)
        cx, cy = x + 0.5 * w, y + 0.5 * h
        x0, y0 = max(0, round(cx - half)), max(0, round(cy - half))
        x1, y1 = min(width, round(cx + half)), min(height, round(cy + half))
        if x1 - x0 < 2 or y1 - y0 < 2:
            raise ValueError(f"bbox {bbox} lies outside the {width}x{height} image")
        meshes = self._run(image_rgb[y0:y1, x0:x1], x0, y0)
        centres = [m[:NUM_SURFACE_LANDMARKS, :2].mean(axis=0) for m in meshes]
        inside = [
            (np.hypot(c[0] - cx, c[1] - cy), i)
            for i, c in enumerate(centres)
            if x <= c[0] <= x + w and y <= c[1] <= y + h
        ]
        if not inside:
            logger.debug("no face centred in bbox %s", bbox)
            return None
        return meshes[min(inside)[1]]

    def _run(self, image_rgb: np.ndarray, x0: int, y0: int) -> list[np.ndarray]:
        height, width = image_rgb.shape[:2]
        result = self._graph.process(np.ascontiguousarray(image_rgb))
        meshes = []
        for face in result.multi_face_landmarks or ():
            points = np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float32)
            points *= np.array([width, height, width], dtype=np.float32)
            points[:, 0] += x0
            points[:, 1] += y0
            meshes.append(points)
        return meshes


def head_pose(mesh: np.ndarray) -> Pose:
    """Head rotation in degrees from a mesh's 3D points.

    Fits the rotation that best maps a few canonical face-model points onto the observed ones
    (orthographic, least squares), then reads it as ``R = Rz(roll) @ Ry(yaw) @ Rx(-pitch)`` in a
    camera frame with x to the image's right, y up and z towards the viewer. Signs:

    - yaw > 0: the face turns towards the image's right (the nose points right);
    - pitch > 0: the face tilts up (chin raised);
    - roll > 0: the head leans counter-clockwise as seen in the image (the eye on the image's
      right is higher), the sense of a positive ``cv2.getRotationMatrix2D`` angle.

    Mirroring an image flips the signs of yaw and roll and keeps pitch.
    """
    mesh = _check_mesh(mesh)
    indices = [i for i, _ in _CANONICAL_POINTS]
    model = np.array([p for _, p in _CANONICAL_POINTS], dtype=np.float64)
    observed = mesh[indices].astype(np.float64) * np.array([1.0, -1.0, -1.0])
    model -= model.mean(axis=0)
    observed -= observed.mean(axis=0)
    u, _, vt = np.linalg.svd(model.T @ observed)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rotation = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    yaw = np.degrees(np.arcsin(np.clip(-rotation[2, 0], -1.0, 1.0)))
    pitch = -np.degrees(np.arctan2(rotation[2, 1], rotation[2, 2]))
    roll = np.degrees(np.arctan2(rotation[1, 0], rotation[0, 0]))
    return Pose(yaw=float(yaw), pitch=float(pitch), roll=float(roll))


def eye_openness(mesh: np.ndarray) -> tuple[float, float]:
    """Eye aspect ratios ``(left, right)`` for the subject's left and right eyes.

    Mean of two upper-to-lower lid distances over the corner-to-corner distance, measured in 3D
    so that turning the head changes it little. An eye below ``EYE_CLOSED_THRESHOLD`` is closed.
    """
    mesh = _check_mesh(mesh)

    def ratio(lids: tuple[tuple[int, int], tuple[tuple[int, int], ...]]) -> float:
        (outer, inner), pairs = lids
        width = np.linalg.norm(mesh[outer] - mesh[inner])
        gaps = [np.linalg.norm(mesh[upper] - mesh[lower]) for upper, lower in pairs]
        return float(np.mean(gaps) / max(width, 1e-6))

    return ratio(_LEFT_EYE_LIDS), ratio(_RIGHT_EYE_LIDS)


def region_masks(
    mesh: np.ndarray,
    shape: tuple[int, ...],
    regions: Iterable[str] = MASK_REGIONS,
) -> dict[str, np.ndarray]:
    """Boolean ``(H, W)`` masks of face regions, filled from the mesh outlines.

    ``shape`` is the image's shape (``(H, W)`` or ``(H, W, C)``). Regions (see
    ``MASK_REGIONS``): ``face_oval``, ``left_eye``/``right_eye`` (the lid opening),
    ``left_eyebrow``/``right_eyebrow``, ``lips`` (the lips alone, without the mouth opening),
    ``mouth`` (the lips and whatever is between them), ``nose`` (the convex hull of the bridge
    and the nostril loop), ``left_iris``/``right_iris`` (the iris disc, cut to the lid opening).
    """
    mesh = _check_mesh(mesh)
    names = tuple(regions)
    unknown = sorted(set(names) - set(MASK_REGIONS))
    if unknown:
        raise ValueError(f"unknown mask regions {unknown}; choose from {MASK_REGIONS}")
    size = tuple(int(s) for s in shape[:2])
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"shape must start with (H, W) > 0 (got {shape})")
    if mesh.shape[0] < NUM_LANDMARKS and set(_IRISES) & set(names):
        raise ValueError(f"iris masks need the {NUM_LANDMARKS}-point refined mesh")

    xy = mesh[:, :2]

    def fill(polygon: Iterable[int]) -> np.ndarray:
        return _fill(size, xy[list(polygon)])

    masks = {}
    for name in names:
        if name == "lips":
            mask = fill(face_regions.LIPS_OUTER) & ~fill(face_regions.LIPS_INNER)
        elif name == "mouth":
            mask = fill(face_regions.LIPS_OUTER)
        elif name == "nose":
            points = xy[list(face_regions.NOSE_BRIDGE + face_regions.NOSE_BASE)].astype(np.float32)
            mask = _fill(size, cv2.convexHull(points)[:, 0])
        elif name in _IRISES:
            eye, centre_index = _IRISES[name]
            centre = xy[centre_index]
            rim = xy[list(face_regions.POLYGONS[name])]
            radius = round(float(np.linalg.norm(rim - centre, axis=1).mean()) * _ONE)
            disc = np.zeros(size, np.uint8)
            cv2.circle(disc, _fixed(centre), radius, 1, cv2.FILLED, cv2.LINE_8, _SHIFT)
            mask = disc.astype(bool) & fill(face_regions.POLYGONS[eye])
        else:
            mask = fill(face_regions.POLYGONS[name])
        masks[name] = mask
    return masks


def _fill(size: tuple[int, int], points: np.ndarray) -> np.ndarray:
    canvas = np.zeros(size, np.uint8)
    cv2.fillPoly(canvas, [np.round(points * _ONE).astype(np.int32)], 1, cv2.LINE_8, _SHIFT)
    return canvas.astype(bool)


def _fixed(point: np.ndarray) -> tuple[int, int]:
    return round(float(point[0]) * _ONE), round(float(point[1]) * _ONE)


def _extent_area(mesh: np.ndarray) -> float:
    span = mesh[:, :2].max(axis=0) - mesh[:, :2].min(axis=0)
    return float(span[0] * span[1])


def _check_mesh(mesh: np.ndarray) -> np.ndarray:
    mesh = np.asarray(mesh)
    if mesh.shape not in ((NUM_LANDMARKS, 3), (NUM_SURFACE_LANDMARKS, 3)):
        raise ValueError(
            f"expected a face mesh of shape ({NUM_LANDMARKS}, 3) or "
            f"({NUM_SURFACE_LANDMARKS}, 3), got {mesh.shape}"
        )
    return mesh
