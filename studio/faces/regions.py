"""Face-mesh region indices: outlines as vertex paths, fill polygons and drawing edge sets.

Indices refer to mediapipe's 478-point face mesh (468 surface points, then the iris points
468-477 when ``refine_landmarks=True``). Importing this module needs only the standard library,
so ControlNet condition drawing and mask filling work without mediapipe installed.

``left``/``right`` are the *subject's* sides, as in mediapipe: ``LEFT_EYE`` is the eye on the
image's right in an unmirrored frontal photo. (The five-point keypoints in ``studio.faces.types``
are ordered by image side instead.)

Each outline is a path whose consecutive pairs are exactly mediapipe's directed edges
(``mediapipe.python.solutions.face_mesh_connections``); a ``*_EDGES`` set is derived from the
paths and equals mediapipe's ``FACEMESH_*`` set. Polygons join the paths into closed loops
(last vertex connects to the first) for ``cv2.fillPoly``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

Path = tuple[int, ...]
Edges = frozenset[tuple[int, int]]

# Face outline, clockwise in the image from the top of the forehead; a closed loop.
FACE_OVAL: Path = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288,
    397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150, 136,
    172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)  # fmt: skip

# Eyelids, each from the outer corner to the inner corner.
LEFT_EYE_UPPER: Path = (263, 466, 388, 387, 386, 385, 384, 398, 362)
LEFT_EYE_LOWER: Path = (263, 249, 390, 373, 374, 380, 381, 382, 362)
RIGHT_EYE_UPPER: Path = (33, 246, 161, 160, 159, 158, 157, 173, 133)
RIGHT_EYE_LOWER: Path = (33, 7, 163, 144, 145, 153, 154, 155, 133)

# Eyebrow edges, each from the outer end to the inner end.
LEFT_EYEBROW_UPPER: Path = (300, 293, 334, 296, 336)
LEFT_EYEBROW_LOWER: Path = (276, 283, 282, 295, 285)
RIGHT_EYEBROW_UPPER: Path = (70, 63, 105, 66, 107)
RIGHT_EYEBROW_LOWER: Path = (46, 53, 52, 65, 55)

# Lip outlines, each from the subject's right mouth corner to the left one.
LIPS_OUTER_UPPER: Path = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIPS_OUTER_LOWER: Path = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIPS_INNER_UPPER: Path = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIPS_INNER_LOWER: Path = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)

# Nose: the ridge from between the eyes down to the tip (4), the columella from the tip to the
# base of the septum (2), and a closed loop round the tip and both nostril wings.
NOSE_BRIDGE: Path = (168, 6, 197, 195, 5, 4)
NOSE_COLUMELLA: Path = (4, 1, 19, 94, 2)
NOSE_BASE: Path = (4, 45, 220, 115, 48, 64, 98, 97, 2, 326, 327, 294, 278, 344, 440, 275)

# Irises (refined landmarks only): a centre and a closed loop of four rim points.
LEFT_IRIS_CENTER = 473
RIGHT_IRIS_CENTER = 468
LEFT_IRIS: Path = (474, 475, 476, 477)
RIGHT_IRIS: Path = (469, 470, 471, 472)

# Closed fill polygons: upper path out, lower path back.
LEFT_EYE: Path = LEFT_EYE_UPPER + LEFT_EYE_LOWER[-2:0:-1]
RIGHT_EYE: Path = RIGHT_EYE_UPPER + RIGHT_EYE_LOWER[-2:0:-1]
LEFT_EYEBROW: Path = LEFT_EYEBROW_UPPER + LEFT_EYEBROW_LOWER[::-1]
RIGHT_EYEBROW: Path = RIGHT_EYEBROW_UPPER + RIGHT_EYEBROW_LOWER[::-1]
LIPS_OUTER: Path = LIPS_OUTER_UPPER + LIPS_OUTER_LOWER[-2:0:-1]
LIPS_INNER: Path = LIPS_INNER_UPPER + LIPS_INNER_LOWER[-2:0:-1]


def path_edges(path: Path, closed: bool = False) -> Edges:
    """Directed edges ``(a, b)`` between consecutive vertices; ``closed`` adds last -> first."""
    successors = path[1:] + path[:1]
    count = len(path) if closed else len(path) - 1
    return frozenset(zip(path[:count], successors[:count], strict=True))


FACE_OVAL_EDGES = path_edges(FACE_OVAL, closed=True)
LEFT_EYE_EDGES = path_edges(LEFT_EYE_UPPER) | path_edges(LEFT_EYE_LOWER)
RIGHT_EYE_EDGES = path_edges(RIGHT_EYE_UPPER) | path_edges(RIGHT_EYE_LOWER)
LEFT_EYEBROW_EDGES = path_edges(LEFT_EYEBROW_UPPER) | path_edges(LEFT_EYEBROW_LOWER)
RIGHT_EYEBROW_EDGES = path_edges(RIGHT_EYEBROW_UPPER) | path_edges(RIGHT_EYEBROW_LOWER)
LIPS_EDGES = frozenset().union(
    *map(path_edges, (LIPS_OUTER_UPPER, LIPS_OUTER_LOWER, LIPS_INNER_UPPER, LIPS_INNER_LOWER))
)
NOSE_EDGES = (
    path_edges(NOSE_BRIDGE) | path_edges(NOSE_COLUMELLA) | path_edges(NOSE_BASE, closed=True)
)
LEFT_IRIS_EDGES = path_edges(LEFT_IRIS, closed=True)
RIGHT_IRIS_EDGES = path_edges(RIGHT_IRIS, closed=True)
CONTOURS_EDGES = (
    FACE_OVAL_EDGES
    | LEFT_EYE_EDGES
    | RIGHT_EYE_EDGES
    | LEFT_EYEBROW_EDGES
    | RIGHT_EYEBROW_EDGES
    | LIPS_EDGES
)
IRISES_EDGES = LEFT_IRIS_EDGES | RIGHT_IRIS_EDGES

# Drawing edge sets by name; ``CONNECTIONS[name]`` equals mediapipe's ``FACEMESH_<NAME>``.
CONNECTIONS: Mapping[str, Edges] = MappingProxyType(
    {
        "face_oval": FACE_OVAL_EDGES,
        "left_eye": LEFT_EYE_EDGES,
        "right_eye": RIGHT_EYE_EDGES,
        "left_eyebrow": LEFT_EYEBROW_EDGES,
        "right_eyebrow": RIGHT_EYEBROW_EDGES,
        "lips": LIPS_EDGES,
        "nose": NOSE_EDGES,
        "left_iris": LEFT_IRIS_EDGES,
        "right_iris": RIGHT_IRIS_EDGES,
        "contours": CONTOURS_EDGES,
        "irises": IRISES_EDGES,
    }
)

# Closed fill polygons by name.
POLYGONS: Mapping[str, Path] = MappingProxyType(
    {
        "face_oval": FACE_OVAL,
        "left_eye": LEFT_EYE,
        "right_eye": RIGHT_EYE,
        "left_eyebrow": LEFT_EYEBROW,
        "right_eyebrow": RIGHT_EYEBROW,
        "lips_outer": LIPS_OUTER,
        "lips_inner": LIPS_INNER,
        "nose_base": NOSE_BASE,
        "left_iris": LEFT_IRIS,
        "right_iris": RIGHT_IRIS,
    }
)
