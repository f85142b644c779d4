"""Condition images for the landmark ControlNets, and placing a face's landmarks on a new canvas.

Pure numpy/OpenCV: pipelines receive the arrays made here and never import a face library.
Images are RGB ``uint8`` ``(H, W, 3)`` on black; sizes are ``(width, height)``; points are pixels
(``x`` right, ``y`` down). Two published drawings are reproduced exactly:

* :func:`draw_face_mesh`: CrucibleAI/ControlNetMediaPipeFace (SD 1.5 / 2.1), as drawn by its
  ``laion_face_common.py`` and identically by controlnet_aux's ``mediapipe_face_common.py``.
* :func:`draw_keypoints`: InstantID's IdentityNet (SDXL), ``draw_kps`` in InstantID's
  ``pipeline_stable_diffusion_xl_instantid.py``.

:func:`place_landmarks` moves a face (from a reference photo or the person's own) to where the
output wants it with one similarity, optionally mirrored; mirroring also swaps the landmarks'
left/right identities, so a mirrored face is drawn as a real face seen in a mirror would be.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Literal

import cv2
import numpy as np

from studio.faces import regions
from studio.faces.align import transform_points
from studio.faces.types import NUM_KEYPOINTS, Face

Size = tuple[int, int]
Box = tuple[float, float, float, float]
Rgb = tuple[int, int, int]

NUM_MESH_POINTS = 478
NUM_SURFACE_POINTS = 468

# --- CrucibleAI/ControlNetMediaPipeFace (laion_face_common.py; controlnet_aux
# mediapipe_face_common.py). Its mediapipe DrawingSpecs are written on a zero image that is then
# channel-reversed "from BGR to RGB", so the RGB colours below are the specs' tuples reversed.
# Drawn per face: the regions' edges in this order with cv2.line (8-connected), no landmark dots,
# then a filled square on each iris centre ("pupil"). The nose and the iris rings are not drawn.
MESH_REGION_COLORS: Mapping[str, Rgb] = MappingProxyType(
    {
        "face_oval": (10, 200, 10),
        "left_eye": (10, 200, 180),
        "left_eyebrow": (10, 220, 180),
        "right_eye": (180, 200, 10),
        "right_eyebrow": (180, 220, 10),
        "lips": (10, 180, 10),
    }
)
MESH_PUPIL_COLORS: Mapping[int, Rgb] = MappingProxyType(
    {regions.RIGHT_IRIS_CENTER: (250, 200, 10), regions.LEFT_IRIS_CENTER: (10, 200, 250)}
)
MESH_LINE_THICKNESS = 2
PUPIL_HALF_WIDTH = 2
"""A pupil covers rows ``y-2 .. y+1`` and columns ``x-2 .. x+1`` of its centre pixel."""

# --- InstantID's draw_kps: a limb from each keypoint to the nose (index 2), a filled ellipse of
# half-width STICK_WIDTH in the colour of its outer keypoint, all limbs dimmed to LIMB_ALPHA, then
# a filled disc of KEYPOINT_RADIUS on each keypoint. Colours are RGB, in insightface's keypoint
# order (image-left eye, image-right eye, nose, image-left mouth corner, image-right one).
KEYPOINT_COLORS: tuple[Rgb, ...] = (
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 0, 255),
)
KEYPOINT_LIMBS: tuple[tuple[int, int], ...] = ((0, 2), (1, 2), (3, 2), (4, 2))
STICK_WIDTH = 4
LIMB_ALPHA = 0.6
KEYPOINT_RADIUS = 10
LIMB_COLORS: tuple[Rgb, ...] = tuple(
    tuple(int(c * LIMB_ALPHA) for c in KEYPOINT_COLORS[a]) for a, _ in KEYPOINT_LIMBS
)
"""Each limb's colour after dimming, as InstantID's float canvas ``* 0.6`` cast to ``uint8``."""

# --- Mirror identities.
# mediapipe's canonical face model (mediapipe/modules/face_geometry/data/canonical_face_model.obj,
# Apache-2.0) is exactly symmetric in x. Its vertices 0-247 are these 28 midline points plus the
# subject's right side, and vertices 248-467 are the mirror images of those right-side points, in
# the same order. The tests re-derive every pair from meshes of flipped photos.
MESH_MIDLINE: tuple[int, ...] = (
    0, 1, 2, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
    94, 151, 152, 164, 168, 175, 195, 197, 199, 200,
)  # fmt: skip
_FIRST_MIRRORED = 248
# Iris points: centre, then the rim's image-right, top, image-left and bottom points; mirroring
# pairs the two irises and exchanges each rim's image-right and image-left points.
_IRIS_MIRROR = (473, 476, 475, 474, 477, 468, 471, 470, 469, 472)


def _mesh_mirror() -> tuple[int, ...]:
    midline = set(MESH_MIDLINE)
    right_side = [i for i in range(_FIRST_MIRRORED) if i not in midline]
    order = list(range(NUM_SURFACE_POINTS)) + list(_IRIS_MIRROR)
    for k, index in enumerate(right_side):
        order[index], order[_FIRST_MIRRORED + k] = _FIRST_MIRRORED + k, index
    return tuple(order)


MESH_MIRROR: tuple[int, ...] = _mesh_mirror()
"""``MESH_MIRROR[i]``: the landmark that plays landmark ``i``'s part on the other side of the face
(itself on the midline). An involution of the 478 indices; its first 468 map the surface mesh."""

KEYPOINT_MIRROR: tuple[int, ...] = (1, 0, 2, 4, 3)
"""Mirrored five-point keypoints swap the eyes and the mouth corners to keep image-side order."""

DEFAULT_POSITION = (0.5, 0.4)
"""Where the face box's centre goes, as fractions of the canvas width and height."""

DEFAULT_FACE_HEIGHT = 0.4
"""The face box's height as a fraction of the canvas height: head-and-shoulders framing."""


def draw_face_mesh(meshes: np.ndarray | Sequence[np.ndarray], size: Size) -> np.ndarray:
    """Draw face meshes as ControlNetMediaPipeFace's condition image.

    ``meshes``: one mesh or a sequence of them, each ``(478, 2|3)`` (or ``(468, 2|3)``, drawn
    without pupils) in canvas pixels. As mediapipe's ``draw_landmarks`` does, a landmark outside
    ``[0, width] x [0, height]`` drops its edges, and the others snap to ``floor``, clamped to the
    last row/column. Faces are drawn in order, each with its pupils on top.
    """
    width, height = _check_size(size)
    canvas = np.zeros((height, width, 3), np.uint8)
    for mesh in _as_faces(meshes, (NUM_MESH_POINTS, NUM_SURFACE_POINTS), "mesh"):
        xy = mesh[:, :2]
        inside = (xy >= 0).all(axis=1) & (xy[:, 0] <= width) & (xy[:, 1] <= height)
        pixels = np.floor(np.clip(xy, 0, (width - 1, height - 1))).astype(np.int64).tolist()
        for region, color in MESH_REGION_COLORS.items():
            for a, b in regions.CONNECTIONS[region]:
                if inside[a] and inside[b]:
                    cv2.line(canvas, pixels[a], pixels[b], color, MESH_LINE_THICKNESS)
        if len(mesh) == NUM_MESH_POINTS:
            for index, color in MESH_PUPIL_COLORS.items():
                x, y = xy[index]
                if 0 <= x < width and 0 <= y < height:
                    col, row = int(x), int(y)
                    rows = slice(max(row - PUPIL_HALF_WIDTH, 0), row + PUPIL_HALF_WIDTH)
                    cols = slice(max(col - PUPIL_HALF_WIDTH, 0), col + PUPIL_HALF_WIDTH)
                    canvas[rows, cols] = color
    return canvas


def draw_keypoints(kps: np.ndarray | Sequence[np.ndarray], size: Size) -> np.ndarray:
    """Draw five-point keypoints as InstantID's IdentityNet condition image.

    ``kps``: one ``(5, 2)`` array or a sequence of them, in insightface order, in canvas pixels.
    With several faces every face's limbs are drawn first, then every face's keypoints, as one
    ``draw_kps`` call would layer them.
    """
    width, height = _check_size(size)
    canvas = np.zeros((height, width, 3), np.uint8)
    faces = _as_faces(kps, (NUM_KEYPOINTS,), "keypoints")
    for points in faces:
        for (a, b), color in zip(KEYPOINT_LIMBS, LIMB_COLORS, strict=True):
            (xa, ya), (xb, yb) = points[a, :2], points[b, :2]
            centre = (int((xa + xb) / 2), int((ya + yb) / 2))
            half_length = int(np.hypot(xa - xb, ya - yb) / 2)
            angle = int(np.degrees(np.arctan2(ya - yb, xa - xb)))
            polygon = cv2.ellipse2Poly(centre, (half_length, STICK_WIDTH), angle, 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, color)
    for points in faces:
        for (x, y), color in zip(points[:, :2], KEYPOINT_COLORS, strict=True):
            cv2.circle(canvas, (int(x), int(y)), KEYPOINT_RADIUS, color, cv2.FILLED)
    return canvas


def placement_matrix(
    src_box: Box,
    canvas_size: Size,
    *,
    position: tuple[float, float] = DEFAULT_POSITION,
    face_height: float = DEFAULT_FACE_HEIGHT,
    mirror: bool = False,
) -> np.ndarray:
    """The 2 x 3 similarity taking source pixels to canvas pixels.

    It scales the source box ``(x, y, w, h)`` to ``face_height`` of the canvas height, puts the
    box's centre at ``position`` (fractions of the canvas size) and, with ``mirror``, reflects
    horizontally about that centre.
    """
    width, height = _check_size(canvas_size)
    x, y, w, h = (float(v) for v in src_box)
    if not (w > 0 and h > 0):
        raise ValueError(f"src_box must be (x, y, w, h) with w, h > 0 (got {src_box})")
    if not face_height > 0:
        raise ValueError(
            f"face_height must be a positive fraction of the canvas (got {face_height})"
        )
    scale = face_height * height / h
    scale_x = -scale if mirror else scale
    return np.array(
        [
            [scale_x, 0.0, position[0] * width - scale_x * (x + w / 2)],
            [0.0, scale, position[1] * height - scale * (y + h / 2)],
        ]
    )


def place_landmarks(
    points: np.ndarray,
    *,
    canvas_size: Size,
    src_box: Box | None = None,
    position: tuple[float, float] = DEFAULT_POSITION,
    face_height: float = DEFAULT_FACE_HEIGHT,
    mirror: bool = False,
) -> np.ndarray:
    """Move ``(N, 2|3)`` landmarks onto the canvas with :func:`placement_matrix`.

    ``src_box`` defaults to the points' own bounding box; pass the face's detector box to place a
    mesh and its keypoints alike. ``z`` scales with ``x`` and ``y``. With ``mirror`` the points
    also trade identities (:data:`MESH_MIRROR` for a 478/468-point mesh, :data:`KEYPOINT_MIRROR`
    for five keypoints): the subject's left eye is still ``LEFT_EYE``, now on the image's left.
    """
    points = _check_points(points, None, "points")
    if src_box is None:
        low, high = points[:, :2].min(axis=0), points[:, :2].max(axis=0)
        src_box = (low[0], low[1], high[0] - low[0], high[1] - low[1])
    matrix = placement_matrix(
        src_box, canvas_size, position=position, face_height=face_height, mirror=mirror
    )
    placed = points.copy()
    placed[:, :2] = transform_points(points[:, :2], matrix)
    placed[:, 2:] *= matrix[1, 1]
    if not mirror:
        return placed
    mirrors = {NUM_MESH_POINTS: MESH_MIRROR, NUM_SURFACE_POINTS: MESH_MIRROR, 5: KEYPOINT_MIRROR}
    if len(points) not in mirrors:
        raise ValueError(
            f"mirroring needs to know which points pair up: {NUM_MESH_POINTS} or "
            f"{NUM_SURFACE_POINTS} mesh points or {NUM_KEYPOINTS} keypoints, got {len(points)}"
        )
    return placed[list(mirrors[len(points)][: len(points)])]


def pose_condition(
    face: Face,
    canvas_size: Size,
    kind: Literal["mesh", "kps"] = "mesh",
    *,
    position: tuple[float, float] = DEFAULT_POSITION,
    face_height: float = DEFAULT_FACE_HEIGHT,
    mirror: bool = False,
) -> np.ndarray:
    """The condition image of ``face``'s pose, placed by its detector box on a new canvas.

    ``kind="mesh"`` draws the mesh for ControlNetMediaPipeFace, ``"kps"`` the five keypoints for
    InstantID; both place the face by the same box, so the two images agree.
    """
    if kind == "mesh":
        if face.mesh is None:
            raise ValueError(
                "this face has no mesh (the analyzer ran without mediapipe: install the `mesh` "
                "extra) - use kind='kps', or analyze the photo with a FaceMesher"
            )
        points, draw = face.mesh, draw_face_mesh
    elif kind == "kps":
        points, draw = face.kps, draw_keypoints
    else:
        raise ValueError(f"kind must be 'mesh' or 'kps' (got {kind!r})")
    placed = place_landmarks(
        points,
        canvas_size=canvas_size,
        src_box=face.bbox,
        position=position,
        face_height=face_height,
        mirror=mirror,
    )
    return draw([placed], canvas_size)


def _check_size(size: Size) -> Size:
    width, height = size
    if int(width) != width or int(height) != height or width <= 0 or height <= 0:
        raise ValueError(f"size must be (width, height) in whole pixels > 0 (got {size})")
    return int(width), int(height)


def _check_points(points: np.ndarray, counts: tuple[int, ...] | None, what: str) -> np.ndarray:
    points = np.array(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] not in (2, 3) or len(points) == 0:
        raise ValueError(f"expected {what} of shape (N, 2) or (N, 3), got {points.shape}")
    if counts is not None and len(points) not in counts:
        raise ValueError(
            f"expected {what} with {' or '.join(map(str, counts))} points, got {len(points)}"
        )
    if not np.isfinite(points).all():
        raise ValueError(f"{what} hold non-finite coordinates")
    return points


def _as_faces(
    faces: np.ndarray | Sequence[np.ndarray], counts: tuple[int, ...], what: str
) -> list[np.ndarray]:
    if isinstance(faces, np.ndarray) and faces.ndim == 2:
        faces = [faces]
    return [_check_points(points, counts, what) for points in faces]
