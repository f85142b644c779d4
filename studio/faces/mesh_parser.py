"""The default face parser: mediapipe's face mesh polygons, plus person segmentation around them.

Offline and torch-free. From the mesh (the face's own, or one found in its box):

- ``l_brow``/``r_brow``, ``l_eye``/``r_eye`` (the lid opening), ``nose`` (hull of the bridge and
  nostrils), ``u_lip``/``l_lip`` (outer lip line to the mouth line), ``mouth`` (between the lips);
- ``skin``: the face oval minus those parts, and minus *occluders*: connected patches inside the
  oval whose colour is far from the face's own skin colour (a hand in a glove, a microphone, a
  strand of hair) are left ``background``; with segmentation, those above the brows or of the
  hair's colour become ``hair`` (a fringe, a low hairline).
  The skin colour is a Gaussian in Lab fitted (robustly) to the cheeks, between eyes and mouth.

With mediapipe's selfie segmentation (``segmenter=True``, the default, when mediapipe is
installed) it also labels the person's pixels outside the oval, near the face:

- ``l_ear``/``r_ear``: skin-coloured, beside the oval on that side, between brow and mouth level;
- ``skin``: skin-coloured and as light as most of the cheeks above the oval, within the face's
  width (the forehead's top);
- ``hair``: not lit skin, above the mouth within one face width of the oval; down to the chin
  only close to the jaw (shoulders may rise that high) and not skin-coloured;
- ``neck``: skin-coloured below the chin within the face's width;
- ``cloth``: the rest of the person below the chin.

Limits of the heuristic: it is colour against one skin model, so blond or skin-toned hair can be
taken for skin (or a bald head for hair in odd light); long hair below the chin is taken for
clothes (dark suits and dark hair share a colour there); a bare hand beside the face may be taken
for an ear or the neck; "up" is the image's vertical, so a strongly rolled head blurs the chin
and ear lines. It cannot tell ``eye_g`` (glasses), ``ear_r`` (earrings), ``neck_l`` (necklace)
nor ``hat``: they are not in its ``classes``, so their checks read "could not check"; glasses
or a hat brim inside the oval count as occluders only where their colour differs from the skin.
The BiSeNet parser sees all 19 classes.
"""

from __future__ import annotations

import importlib.util
import threading

import cv2
import numpy as np

from studio.errors import StudioError
from studio.faces import regions
from studio.faces.mesh import _fill, region_masks
from studio.faces.parsing import FaceParsing, labels_from_masks
from studio.faces.types import Face, check_rgb

MESH_CLASSES = frozenset(
    {"background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "mouth", "u_lip", "l_lip"}
)
"""What the mesh alone gives."""

PERSON_CLASSES = MESH_CLASSES | {"l_ear", "r_ear", "neck", "cloth", "hair"}
"""What the mesh plus person segmentation gives (never eye_g, ear_r, neck_l, hat)."""

CROP_SCALE = 3.0
"""Side of the square analysed around the face, in face-oval sizes (hair, ears, neck, collar)."""

SKIN_D2 = 12.0
"""Squared Mahalanobis distance (Lab) under which a pixel has the face's skin colour."""

OCCLUDER_D2 = 30.0
"""Squared Mahalanobis distance above which a pixel inside the oval is not skin at all."""

HAIR_D2 = 9.0
"""Squared Mahalanobis distance to the hair colour under which an occluder in the oval is hair."""

MIN_OCCLUDER = 0.01
"""Smallest occluder patch kept, as a fraction of the face oval's area."""

HAIR_REACH = 1.0
"""How far hair may reach from the oval, in face-oval widths."""

EAR_REACH = 0.3
"""How far an ear may reach from the oval, in face-oval widths."""

NECK_HALF_WIDTH = 0.6
"""Half-width of the neck band below the chin, in face-oval widths."""

_LEFT_CHEEK = 454  # a point of the oval on the subject's left
_REG = 4.0  # added to the colour covariance's diagonal (Lab units squared)


MIN_EXTENT = 4
"""Pixels: the smallest square around a face the parser analyses."""


class FaceParseError(StudioError, ValueError):
    """A face cannot be parsed (no mesh found in its box, or mediapipe missing); the message
    names the box or the install command."""


class MeshFaceParser:
    """Face parsing from the mesh polygons (and person segmentation when available).

    Faces without a mesh are meshed in their box with a :class:`~studio.faces.mesh.FaceMesher`
    built on first need. Not thread-safe beyond one call at a time (calls are serialised).

    Args:
        segmenter: ``True`` to add hair, ears, neck and clothes from mediapipe's selfie
            segmentation; ``"auto"`` (default) when mediapipe is installed; ``False`` for the
            mesh classes only.
    """

    name = "mesh"

    def __init__(self, segmenter: bool | str = "auto") -> None:
        if segmenter == "auto":
            segmenter = importlib.util.find_spec("mediapipe") is not None
        self._use_segmenter = bool(segmenter)
        self._segmenter = None
        self._mesher = None
        self._lock = threading.Lock()

    @property
    def classes(self) -> frozenset[str]:
        """The classes this parser can produce."""
        return PERSON_CLASSES if self._use_segmenter else MESH_CLASSES

    def parse(self, image: np.ndarray, face: Face) -> FaceParsing:
        """Parse ``face`` in the RGB ``image``; labels cover the whole image."""
        check_rgb(image)
        with self._lock:
            mesh = face.mesh if face.mesh is not None else self._find_mesh(image, face)
            height, width = image.shape[:2]
            x0, y0, x1, y1 = _extent(mesh, width, height)
            if x1 - x0 < MIN_EXTENT or y1 - y0 < MIN_EXTENT:
                box = ", ".join(f"{v:.0f}" for v in face.bbox)
                raise FaceParseError(
                    f"the face in the box ({box}) (x, y, w, h) is too small to parse; use a "
                    "larger photo of it"
                )
            crop = image[y0:y1, x0:x1]
            local = np.asarray(mesh, dtype=np.float32).copy()
            local[:, 0] -= x0
            local[:, 1] -= y0
            person = None
            if self._use_segmenter:
                person = self._person(crop)
            labels = np.zeros((height, width), np.uint8)
            labels[y0:y1, x0:x1] = _parse_crop(crop, local, person)
        return FaceParsing(labels, self.classes, self.name, (x0, y0, x1, y1))

    def _find_mesh(self, image: np.ndarray, face: Face) -> np.ndarray:
        if self._mesher is None:
            from studio.faces.mesh import FaceMesher

            try:
                self._mesher = FaceMesher()
            except ImportError as err:
                raise FaceParseError(f"the face has no mesh and none can be made: {err}") from err
        mesh = self._mesher.landmarks(image, face.bbox)
        if mesh is None:
            box = ", ".join(f"{v:.0f}" for v in face.bbox)
            raise FaceParseError(
                f"no face mesh found in the face box ({box}) (x, y, w, h); the face may be too "
                "small, turned away or covered"
            )
        return mesh

    def _person(self, crop: np.ndarray) -> np.ndarray:
        from studio.faces.segment import PERSON_THRESHOLD, PersonSegmenter

        if self._segmenter is None:
            self._segmenter = PersonSegmenter()
        return self._segmenter.probability(crop) > PERSON_THRESHOLD

    def close(self) -> None:
        """Free the mediapipe graphs (built again on the next parse)."""
        with self._lock:
            for graph in (self._mesher, self._segmenter):
                if graph is not None:
                    graph.close()
            self._mesher = self._segmenter = None


def _extent(mesh: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """The square (clipped to the image) analysed around the face oval, ``(x0, y0, x1, y1)``."""
    oval = np.asarray(mesh)[list(regions.FACE_OVAL), :2]
    lo, hi = oval.min(axis=0), oval.max(axis=0)
    half = 0.5 * CROP_SCALE * float(max(hi - lo))
    cx, cy = (lo + hi) / 2
    cy += 0.25 * (hi[1] - lo[1])  # a little lower: the neck and collar matter more than the sky
    x0, y0 = max(0, int(cx - half)), max(0, int(cy - half))
    x1, y1 = min(width, int(np.ceil(cx + half))), min(height, int(np.ceil(cy + half)))
    return x0, y0, x1, y1


def _parse_crop(crop: np.ndarray, mesh: np.ndarray, person: np.ndarray | None) -> np.ndarray:
    """Labels of the crop from its mesh (in crop pixels) and person mask."""
    shape = crop.shape[:2]
    parts = region_masks(
        mesh,
        shape,
        ("face_oval", "left_eye", "right_eye", "left_eyebrow", "right_eyebrow", "mouth", "nose"),
    )
    xy = mesh[:, :2]
    upper = _fill(shape, xy[list(regions.LIPS_OUTER_UPPER + regions.LIPS_INNER_UPPER[::-1])])
    lower = _fill(shape, xy[list(regions.LIPS_OUTER_LOWER + regions.LIPS_INNER_LOWER[::-1])])
    mouth = parts["mouth"] & ~upper & ~lower
    oval = parts["face_oval"]
    features = (
        parts["left_eye"]
        | parts["right_eye"]
        | parts["left_eyebrow"]
        | parts["right_eyebrow"]
        | parts["nose"]
        | parts["mouth"]
    )
    lab = cv2.cvtColor(crop, cv2.COLOR_RGB2LAB).astype(np.float32)
    skin_region = oval & ~features
    cheeks = _core(skin_region & _cheek_band(mesh, shape))
    skin_d2 = _colour_distance(lab, cheeks)
    occluder = _patches(skin_region & (skin_d2 > OCCLUDER_D2), np.count_nonzero(oval))

    layers: list[tuple[str, np.ndarray]] = []
    hair_d2 = None
    if person is not None:
        lit = lab[..., 0] >= np.percentile(lab[cheeks][:, 0], 25) if cheeks.any() else True
        layers, hair_d2 = _around(mesh, shape, person & ~oval, skin_d2, lab, lit)
    layers.append(("skin", skin_region & ~occluder))
    if person is not None:
        brow_y = xy[list(regions.LEFT_EYEBROW + regions.RIGHT_EYEBROW), 1].min()
        fringe = occluder & (np.arange(shape[0])[:, None] < brow_y)
        if hair_d2 is not None:
            fringe |= occluder & (hair_d2 < HAIR_D2)
        layers.append(("hair", fringe))
    layers += [
        ("nose", parts["nose"]),
        ("l_brow", parts["left_eyebrow"]),
        ("r_brow", parts["right_eyebrow"]),
        ("l_eye", parts["left_eye"]),
        ("r_eye", parts["right_eye"]),
        ("u_lip", upper),
        ("l_lip", lower),
        ("mouth", mouth),
    ]
    return labels_from_masks(shape, layers)


def _cheek_band(mesh: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Rows from below the eyes to above the mouth: skin on almost every face (a fringe, a low
    hairline or a beard would bias a model fitted to the whole oval)."""
    xy = mesh[:, :2]
    top = xy[list(regions.LEFT_EYE_LOWER + regions.RIGHT_EYE_LOWER), 1].max()
    bottom = xy[list(regions.LIPS_OUTER_UPPER), 1].min()
    rows = np.arange(shape[0])[:, None]
    return np.broadcast_to((rows > top) & (rows < bottom), shape)


def _around(
    mesh: np.ndarray,
    shape: tuple[int, int],
    outside: np.ndarray,
    skin_d2: np.ndarray,
    lab: np.ndarray,
    lit: np.ndarray | bool,
) -> tuple[list[tuple[str, np.ndarray]], np.ndarray | None]:
    """Ears, forehead skin, hair, neck and clothes among the person's pixels outside the oval;
    ``lit``: at least as light as the lighter three quarters of the cheeks (dark hair under
    low-key light can match shaded skin in colour, rarely in lightness)."""
    xy = mesh[:, :2]
    oval = xy[list(regions.FACE_OVAL)]
    face_width = float(np.ptp(oval[:, 0]))
    chin_y = float(oval[:, 1].max())
    brow_y = float(xy[list(regions.LEFT_EYEBROW + regions.RIGHT_EYEBROW), 1].min())
    mouth_y = float(xy[[regions.LIPS_OUTER_UPPER[0], regions.LIPS_OUTER_UPPER[-1]], 1].max())
    centre_x = float(oval[:, 0].mean())

    outside_oval = ~_fill(shape, oval)
    distance = cv2.distanceTransform(outside_oval.astype(np.uint8), cv2.DIST_L2, 5)
    rows = np.arange(shape[0], dtype=np.float32)[:, None]
    cols = np.arange(shape[1], dtype=np.float32)[None, :]
    skin_like = skin_d2 < SKIN_D2
    above_chin = rows < chin_y

    ear_zone = (rows >= brow_y) & (rows <= mouth_y) & (distance <= EAR_REACH * face_width)
    ears = outside & skin_like & ear_zone
    left_side = np.sign(xy[_LEFT_CHEEK, 0] - centre_x)
    on_left = (cols - centre_x) * left_side > 0
    forehead = (
        outside
        & skin_like
        & lit
        & (rows < brow_y)
        & (distance <= EAR_REACH * face_width)
        & (np.abs(cols - centre_x) <= 0.5 * face_width)
    )
    # Above the mouth, anything but lit skin; beside the jaw only close to it (the shoulders
    # may rise above the chin line) and only where not skin-coloured (a shaded neck).
    head = (rows < mouth_y) & (distance <= HAIR_REACH * face_width) & ~(skin_like & lit)
    jaw = above_chin & (distance <= EAR_REACH * face_width) & ~skin_like
    hair = outside & (head | jaw)
    hair_d2 = _colour_distance(lab, _core(hair)) if hair.any() else None
    below = outside & ~above_chin
    neck = below & skin_like & (np.abs(cols - centre_x) <= NECK_HALF_WIDTH * face_width)
    cloth = below & ~neck
    layers = [
        ("cloth", cloth),
        ("neck", neck),
        ("hair", hair),
        ("skin", forehead),
        ("l_ear", ears & on_left),
        ("r_ear", ears & ~on_left),
    ]
    return layers, hair_d2


def _core(mask: np.ndarray) -> np.ndarray:
    """The mask shrunk away from its edges (where colours mix), or itself when that empties it."""
    radius = max(1, int(0.02 * np.sqrt(np.count_nonzero(mask))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    core = cv2.erode(mask.astype(np.uint8), kernel).astype(bool)
    return core if np.count_nonzero(core) >= 16 else mask


def _colour_distance(lab: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of every pixel's Lab colour to the colours under ``sample``.

    Robust to an occluder inside the sample: the median and MAD pick the inliers (within 3 MADs
    on every channel), whose mean and covariance make the model.
    """
    pixels = lab[sample]
    if len(pixels) < 4:
        return np.full(lab.shape[:2], np.inf, np.float32)
    median = np.median(pixels, axis=0)
    spread = 1.4826 * np.median(np.abs(pixels - median), axis=0) + 1.0
    inliers = pixels[(np.abs(pixels - median) <= 3.0 * spread).all(axis=1)]
    if len(inliers) >= 4:
        pixels = inliers
    mean = pixels.mean(axis=0)
    cov = np.cov(pixels, rowvar=False) + _REG * np.eye(3)
    diff = lab - mean
    return np.einsum("...i,ij,...j->...", diff, np.linalg.inv(cov), diff).astype(np.float32)


def _patches(mask: np.ndarray, oval_area: int) -> np.ndarray:
    """The patches of ``mask`` (specks opened away) of at least ``MIN_OCCLUDER`` of the oval."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    opened = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    count, components, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    keep = np.zeros(count, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= MIN_OCCLUDER * oval_area
    kept = keep[components].astype(np.uint8)
    return mask & cv2.dilate(kept, kernel).astype(bool)  # the corners the opening rounded off
