"""Face mesh: region data against mediapipe, landmarks, pose, eye openness and masks on photos."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import skimage.data

from studio.faces import regions
from studio.faces.mesh import (
    _CANONICAL_POINTS,
    EYE_CLOSED_THRESHOLD,
    MASK_REGIONS,
    NUM_LANDMARKS,
    FaceMesher,
    eye_openness,
    head_pose,
    region_masks,
)

PORTRAITS = (
    "impostor_1",
    "impostor_2",
    "person_a_1",
    "person_a_2",
    "person_b_1",
    "person_b_2",
    "astronaut",
)
EYE_POLYGONS = {"left": regions.LEFT_EYE, "right": regions.RIGHT_EYE}
IRIS_CENTRES = {"left": regions.LEFT_IRIS_CENTER, "right": regions.RIGHT_IRIS_CENTER}


@pytest.fixture(scope="module")
def mesher():
    with FaceMesher() as face_mesher:
        yield face_mesher


@pytest.fixture(scope="module")
def images(faces_dir) -> dict[str, np.ndarray]:
    loaded = {"astronaut": skimage.data.astronaut()}
    for name in PORTRAITS[:-1]:
        bgr = cv2.imread(str(faces_dir / f"{name}.jpg"))
        loaded[name] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return loaded


@pytest.fixture(scope="module")
def meshes(mesher, images) -> dict[str, np.ndarray]:
    return {name: mesher.landmarks(image) for name, image in images.items()}


def haar_face(image: np.ndarray) -> tuple[int, int, int, int]:
    """Largest face box from OpenCV's Haar cascade: a detector independent of the mesh."""
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    boxes = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(20, 20))
    assert len(boxes), "the Haar cascade found no face"
    return tuple(int(v) for v in max(boxes, key=lambda b: b[2] * b[3]))


def centre(mesh: np.ndarray, polygon) -> np.ndarray:
    return mesh[list(polygon), :2].mean(axis=0)


# --- region data (no mediapipe graph) ---------------------------------------------------------


def test_connections_equal_mediapipe_sets():
    from mediapipe.python.solutions import face_mesh_connections as connections

    for name, edges in regions.CONNECTIONS.items():
        assert edges == set(getattr(connections, f"FACEMESH_{name.upper()}")), name


@pytest.mark.parametrize(
    ("polygon", "region", "joins", "covers_region"),
    [
        (regions.FACE_OVAL, "face_oval", 0, True),
        (regions.LEFT_EYE, "left_eye", 0, True),
        (regions.RIGHT_EYE, "right_eye", 0, True),
        (regions.LEFT_IRIS, "left_iris", 0, True),
        (regions.RIGHT_IRIS, "right_iris", 0, True),
        (regions.LEFT_EYEBROW, "left_eyebrow", 2, True),
        (regions.RIGHT_EYEBROW, "right_eyebrow", 2, True),
        (regions.LIPS_OUTER, "lips", 0, False),
        (regions.LIPS_INNER, "lips", 0, False),
        (regions.NOSE_BASE, "nose", 0, False),
    ],
)
def test_polygons_chain_their_region_edges(polygon, region, joins, covers_region):
    undirected = {frozenset(edge) for edge in regions.CONNECTIONS[region]}
    sides = [frozenset(pair) for pair in zip(polygon, polygon[1:] + polygon[:1], strict=True)]
    assert len(set(polygon)) == len(polygon)
    # Every side is an edge of the region, except the joins that close the two eyebrow paths.
    assert sum(side not in undirected for side in sides) == joins
    if covers_region:
        assert undirected <= set(sides)


def test_lip_polygons_cover_mediapipe_lips():
    lips = {frozenset(edge) for edge in regions.LIPS_EDGES}
    sides = {
        frozenset(pair)
        for polygon in (regions.LIPS_OUTER, regions.LIPS_INNER)
        for pair in zip(polygon, polygon[1:] + polygon[:1], strict=True)
    }
    assert sides == lips


def test_importing_mesh_does_not_import_mediapipe():
    code = (
        "import sys, studio.faces.mesh, studio.faces.regions; sys.exit('mediapipe' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


LEAK_CHECK = """
import gc, weakref
from studio.faces.mesh import FaceMesher

class Trainer:  # whatever builds the first mesher of a process
    def __init__(self):
        FaceMesher().close()

trainer = weakref.ref(Trainer())
gc.collect()
print("freed" if trainer() is None else "kept")
"""


def test_first_mesher_does_not_keep_its_callers_alive():
    """mediapipe's first import must not pin the frames (and models) of whoever triggered it."""
    out = subprocess.run(
        [sys.executable, "-c", LEAK_CHECK], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "freed"


def test_missing_mediapipe_names_the_install_command(monkeypatch):
    for name in ("mediapipe", "mediapipe.python", "mediapipe.python.solutions"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install --no-deps mediapipe==0\.10\.21"):
        FaceMesher()


# --- landmarks on real photos -----------------------------------------------------------------


@pytest.mark.parametrize("name", PORTRAITS)
def test_mesh_on_portrait(name, meshes, images):
    mesh = meshes[name]
    assert mesh is not None
    assert mesh.shape == (NUM_LANDMARKS, 3)
    assert mesh.dtype == np.float32
    height, width = images[name].shape[:2]
    nose = mesh[1]
    assert 0 < nose[0] < width and 0 < nose[1] < height
    for side in ("left", "right"):
        contour = mesh[list(EYE_POLYGONS[side]), :2]
        iris = tuple(float(v) for v in mesh[IRIS_CENTRES[side], :2])
        assert cv2.pointPolygonTest(contour, iris, False) > 0, f"{side} iris outside its eye"


@pytest.mark.parametrize("name", PORTRAITS)
def test_eyes_in_upper_half_of_independent_face_box(name, meshes, images):
    x, y, w, h = haar_face(images[name])
    left, right = (centre(meshes[name], EYE_POLYGONS[side]) for side in ("left", "right"))
    for eye in (left, right):
        assert x < eye[0] < x + w
        assert y < eye[1] < y + h / 2
    # The subject's left eye is on the image's right.
    assert left[0] > right[0]


@pytest.mark.parametrize("name", ["astronaut", "impostor_2", "person_a_1"])
def test_bbox_crop_gives_the_same_mesh(name, mesher, meshes, images):
    box = haar_face(images[name])
    cropped = mesher.landmarks(images[name], box)
    assert cropped is not None
    error = np.linalg.norm(cropped[:, :2] - meshes[name][:, :2], axis=1).mean()
    assert error < 0.02 * box[2]


def side_by_side(*images: np.ndarray) -> tuple[np.ndarray, list[int]]:
    height = max(image.shape[0] for image in images)
    padded = [
        cv2.copyMakeBorder(im, 0, height - im.shape[0], 0, 0, cv2.BORDER_REPLICATE) for im in images
    ]
    offsets = np.cumsum([0] + [im.shape[1] for im in images[:-1]]).tolist()
    return np.hstack(padded), offsets


def test_largest_face_without_bbox_and_chosen_face_with_bbox(mesher, images):
    big = cv2.resize(images["person_b_1"], None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    small = cv2.resize(images["impostor_2"], None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA)
    scene, (_, split) = side_by_side(big, small)

    largest = mesher.landmarks(scene)
    assert largest is not None and largest[1, 0] < split

    box = haar_face(scene[:, split:])
    box = (box[0] + split, *box[1:])
    chosen = mesher.landmarks(scene, box)
    assert chosen is not None
    assert box[0] < chosen[1, 0] < box[0] + box[2]


def test_bbox_finds_a_small_face(mesher, images, meshes):
    scale, offset = 0.1, np.array([800, 500])
    small = cv2.resize(images["person_b_1"], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = np.full((900, 1200, 3), 200, np.uint8)
    canvas[offset[1] : offset[1] + small.shape[0], offset[0] : offset[0] + small.shape[1]] = small
    box = haar_face(canvas)
    mesh = mesher.landmarks(canvas, box)
    assert mesh is not None
    expected = meshes["person_b_1"][:, :2] * scale + offset
    assert np.linalg.norm(mesh[:, :2] - expected, axis=1).mean() < 0.05 * box[2]


def test_blank_image_has_no_face(mesher):
    blank = np.zeros((256, 256, 3), np.uint8)
    assert mesher.landmarks(blank) is None
    assert mesher.landmarks(blank, (64, 64, 128, 128)) is None


def test_bad_inputs_are_refused(mesher):
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        mesher.landmarks(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="w, h > 0"):
        mesher.landmarks(np.zeros((64, 64, 3), np.uint8), (0, 0, 0, 10))
    with pytest.raises(ValueError, match="outside"):
        mesher.landmarks(np.zeros((64, 64, 3), np.uint8), (500, 500, 10, 10))


def test_closed_mesher_refuses_work(mesher):
    with FaceMesher() as other:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        other.landmarks(np.zeros((64, 64, 3), np.uint8))


# --- head pose --------------------------------------------------------------------------------


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """``Rz(roll) @ Ry(yaw) @ Rx(-pitch)``: the convention ``head_pose`` documents."""
    a, b, c = np.radians([yaw, -pitch, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def posed_model(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The canonical points turned by a pose and put in pixels (20 px/cm, y down, z away)."""
    indices = [i for i, _ in _CANONICAL_POINTS]
    model = np.array([p for _, p in _CANONICAL_POINTS])
    mesh = np.zeros((NUM_LANDMARKS, 3), np.float32)
    posed = model @ rotation(yaw, pitch, roll).T
    mesh[indices] = posed * 20 * np.array([1, -1, -1]) + np.array([300, 300, 0])
    return mesh


@pytest.mark.parametrize(
    ("yaw", "pitch", "roll"), [(25, 0, 0), (0, 15, 0), (0, 0, -30), (-20, -10, 12)]
)
def test_pose_of_a_posed_model(yaw, pitch, roll):
    pose = head_pose(posed_model(yaw, pitch, roll))
    assert (pose.yaw, pose.pitch, pose.roll) == pytest.approx((yaw, pitch, roll), abs=1e-3)


@pytest.mark.parametrize("sign", [1, -1])
def test_pose_signs_mean_what_the_docstring_says(sign):
    frontal = posed_model(0, 0, 0)
    nose_tip, eye_image_left, eye_image_right = 1, 33, 263
    turned = posed_model(sign * 20, 0, 0)
    assert np.sign(turned[nose_tip, 0] - frontal[nose_tip, 0]) == sign  # + : towards image right
    tilted = posed_model(0, sign * 20, 0)
    assert np.sign(frontal[nose_tip, 1] - tilted[nose_tip, 1]) == sign  # + : up (y grows down)
    leaned = posed_model(0, 0, sign * 20)
    height_difference = leaned[eye_image_left, 1] - leaned[eye_image_right, 1]
    assert np.sign(height_difference) == sign  # + : the eye on the image's right is higher


@pytest.mark.parametrize("name", PORTRAITS)
def test_frontal_portraits_have_small_pose(name, meshes):
    pose = head_pose(meshes[name])
    assert max(abs(pose.yaw), abs(pose.pitch), abs(pose.roll)) < 15


def test_face_turned_to_image_left_has_negative_yaw(meshes):
    # In person_a_2 the face looks towards the image's left (checked by eye).
    assert head_pose(meshes["person_a_2"]).yaw < -5


@pytest.mark.parametrize("name", PORTRAITS)
def test_mirroring_flips_yaw_and_roll(name, mesher, meshes, images):
    pose = head_pose(meshes[name])
    mirrored_mesh = mesher.landmarks(np.ascontiguousarray(images[name][:, ::-1]))
    mirrored = head_pose(mirrored_mesh)
    assert mirrored.yaw == pytest.approx(-pose.yaw, abs=3)
    assert mirrored.roll == pytest.approx(-pose.roll, abs=3)
    assert mirrored.pitch == pytest.approx(pose.pitch, abs=4)
    for before, after in ((pose.yaw, mirrored.yaw), (pose.roll, mirrored.roll)):
        if abs(before) > 4:
            assert np.sign(after) == -np.sign(before)


@pytest.mark.parametrize("angle", [20, -20])
@pytest.mark.parametrize("name", PORTRAITS)
def test_in_plane_rotation_changes_roll(name, angle, mesher, meshes, images):
    image, mesh = images[name], meshes[name]
    cx, cy = (float(v) for v in mesh[:, :2].mean(axis=0))
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)  # positive: counter-clockwise
    rotated = cv2.warpAffine(image, matrix, (image.shape[1], image.shape[0]))
    before, after = head_pose(mesh), head_pose(mesher.landmarks(rotated))
    assert after.roll - before.roll == pytest.approx(angle, abs=5)
    assert after.yaw == pytest.approx(before.yaw, abs=5)


# --- eye openness -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", PORTRAITS)
def test_open_eyes_read_as_open(name, meshes):
    left, right = eye_openness(meshes[name])
    assert EYE_CLOSED_THRESHOLD < left < 0.6
    assert EYE_CLOSED_THRESHOLD < right < 0.6


def close_lids(mesh: np.ndarray, upper, lower, fraction: float) -> np.ndarray:
    """Move the upper lid ``fraction`` of the way onto the lower lid."""
    moved = mesh.copy()
    moved[list(upper)] = (1 - fraction) * mesh[list(upper)] + fraction * mesh[list(lower)]
    return moved


def test_openness_drops_as_one_lid_closes(meshes):
    mesh = meshes["astronaut"]
    readings = [
        eye_openness(close_lids(mesh, regions.LEFT_EYE_UPPER, regions.LEFT_EYE_LOWER, t))
        for t in (0.0, 0.3, 0.6, 0.9)
    ]
    lefts = [left for left, _ in readings]
    assert np.all(np.diff(lefts) < 0)
    assert lefts[-1] < EYE_CLOSED_THRESHOLD < lefts[0]
    assert all(right == readings[0][1] for _, right in readings)  # the other eye is untouched


# --- region masks -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", PORTRAITS)
def test_region_masks(name, meshes, images):
    masks = region_masks(meshes[name], images[name].shape)
    assert set(masks) == set(MASK_REGIONS)
    assert all(m.shape == images[name].shape[:2] and m.dtype == bool for m in masks.values())
    assert all(m.any() for m in masks.values())
    oval = masks["face_oval"]
    assert oval.sum() > 5 * masks["mouth"].sum()
    assert oval.sum() > 5 * masks["lips"].sum()
    assert not (masks["left_eye"] & masks["right_eye"]).any()
    assert not (masks["left_eyebrow"] & masks["left_eye"]).any()
    for region, mask in masks.items():
        assert not (mask & ~oval).any(), f"{region} leaks out of the face oval"
    assert not (masks["nose"] & masks["mouth"]).any()
    # Top to bottom: brows, eyes, nose, mouth.
    rows = {region: np.nonzero(mask)[0].mean() for region, mask in masks.items()}
    assert rows["left_eyebrow"] < rows["left_eye"] < rows["nose"] < rows["mouth"]


def test_region_masks_subset_and_errors(meshes):
    mesh = meshes["astronaut"]
    assert set(region_masks(mesh, (512, 512), regions=("nose",))) == {"nose"}
    with pytest.raises(ValueError, match="unknown mask regions"):
        region_masks(mesh, (512, 512), regions=("ears",))
    with pytest.raises(ValueError, match="refined mesh"):
        region_masks(mesh[:468], (512, 512), regions=("left_iris",))
    with pytest.raises(ValueError, match=r"\(478, 3\)"):
        region_masks(mesh[:, :2], (512, 512))
