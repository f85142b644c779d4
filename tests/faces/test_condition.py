"""Landmark ControlNet condition images: mesh and keypoint drawings, placement, mirroring."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

from studio.faces import regions
from studio.faces.analyzer import FaceAnalyzer
from studio.faces.condition import (
    KEYPOINT_COLORS,
    KEYPOINT_MIRROR,
    KEYPOINT_RADIUS,
    LIMB_COLORS,
    MESH_MIDLINE,
    MESH_MIRROR,
    MESH_PUPIL_COLORS,
    MESH_REGION_COLORS,
    PUPIL_HALF_WIDTH,
    STICK_WIDTH,
    draw_face_mesh,
    draw_keypoints,
    place_landmarks,
    placement_matrix,
    pose_condition,
)
from studio.faces.mesh import region_masks
from studio.faces.types import Face
from studio.images import load_image

PORTRAITS = ("person_a_1", "person_b_1", "impostor_1")
CANVAS = (640, 768)
BLACK = (0, 0, 0)
CONTROLNET_AUX_INSTALL = "pip install --no-deps controlnet-aux==0.0.10"
# ControlNetMediaPipeFace's DrawingSpec colours as published (laion_face_common.py), written on
# a canvas whose channels are reversed afterwards.
PUBLISHED_SPEC_COLOURS = {
    "face_oval": (10, 200, 10),
    "left_eye": (180, 200, 10),
    "left_eyebrow": (180, 220, 10),
    "right_eye": (10, 200, 180),
    "right_eyebrow": (10, 220, 180),
    "lips": (10, 180, 10),
}
PUBLISHED_PUPIL_COLOURS = {468: (10, 200, 250), 473: (250, 200, 10)}
MIRRORED_PATHS = (
    (regions.LEFT_EYE_UPPER, regions.RIGHT_EYE_UPPER),
    (regions.LEFT_EYE_LOWER, regions.RIGHT_EYE_LOWER),
    (regions.LEFT_EYEBROW_UPPER, regions.RIGHT_EYEBROW_UPPER),
    (regions.LEFT_EYEBROW_LOWER, regions.RIGHT_EYEBROW_LOWER),
    ((regions.LEFT_IRIS_CENTER,), (regions.RIGHT_IRIS_CENTER,)),
)


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    analyzer = FaceAnalyzer(encoders=())
    if analyzer.mesher is None:
        pytest.skip("needs mediapipe (the `mesh` extra)")
    return analyzer


@pytest.fixture(scope="module")
def photos(faces_dir: Path) -> dict[str, np.ndarray]:
    loaded = {"astronaut": astronaut()}
    loaded.update({name: load_image(faces_dir / f"{name}.jpg").rgb for name in PORTRAITS})
    return loaded


@pytest.fixture(scope="module")
def faces(analyzer: FaceAnalyzer, photos: dict[str, np.ndarray]) -> dict[str, Face]:
    return {name: analyzer.analyze(image)[0] for name, image in photos.items()}


@pytest.fixture(scope="module")
def face(faces: dict[str, Face]) -> Face:
    """The astronaut: a frontal face."""
    return faces["astronaut"]


def colours(image: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in c) for c in np.unique(image.reshape(-1, 3), axis=0)}


def of_colour(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return (image == colour).all(axis=-1)


def centroid(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.mean(), rows.mean()])


def test_mirror_permutation_pairs_left_and_right_regions():
    mirror = np.array(MESH_MIRROR)
    assert sorted(MESH_MIRROR) == list(range(478))
    np.testing.assert_array_equal(mirror[mirror], np.arange(478))
    assert tuple(np.flatnonzero(mirror == np.arange(478))) == MESH_MIDLINE
    for left, right in MIRRORED_PATHS:
        assert tuple(mirror[list(left)]) == right
    # Symmetric paths read backwards on the other side; the nose ridge lies on the midline.
    oval = np.array(regions.FACE_OVAL)
    np.testing.assert_array_equal(mirror[oval], np.roll(oval[::-1], 1))
    for lip in (regions.LIPS_OUTER_UPPER, regions.LIPS_INNER_LOWER):
        assert tuple(mirror[list(lip)]) == lip[::-1]
    assert all(mirror[i] == i for i in regions.NOSE_BRIDGE)
    for name in ("eye", "eyebrow", "iris"):
        left = {frozenset(mirror[list(e)]) for e in regions.CONNECTIONS[f"left_{name}"]}
        assert left == {frozenset(e) for e in regions.CONNECTIONS[f"right_{name}"]}
    assert [KEYPOINT_MIRROR[i] for i in KEYPOINT_MIRROR] == list(range(5))


@pytest.mark.parametrize("name", ["astronaut", *PORTRAITS])
def test_mirroring_predicts_the_landmarks_of_the_flipped_photo(name, analyzer, photos, faces):
    image, face = photos[name], faces[name]
    flipped = analyzer.analyze(np.ascontiguousarray(image[:, ::-1]))[0]
    height, width = image.shape[:2]
    # Canvas = the photo itself, unscaled: the mirror is x -> width - x.
    same_frame = {
        "canvas_size": (width, height),
        "src_box": (0, 0, width, height),
        "position": (0.5, 0.5),
        "face_height": 1.0,
        "mirror": True,
    }
    face_size = np.ptp(face.mesh[:, 1])

    def error(predicted: np.ndarray, observed: np.ndarray) -> np.ndarray:
        return np.linalg.norm(predicted[:, :2] - observed[:, :2], axis=1) / face_size

    mesh = place_landmarks(face.mesh, **same_frame)
    assert np.median(error(mesh, flipped.mesh)) < 0.02
    assert np.percentile(error(mesh, flipped.mesh), 99) < 0.05
    irises = [regions.RIGHT_IRIS_CENTER, *regions.RIGHT_IRIS, regions.LEFT_IRIS_CENTER]
    irises += regions.LEFT_IRIS
    assert error(mesh[irises], flipped.mesh[irises]).max() < 0.02
    reflected_only = face.mesh * (-1, 1, 1) + (width, 0, 0)
    assert np.median(error(reflected_only, flipped.mesh)) > 0.2
    kps = place_landmarks(face.kps, **same_frame)
    assert error(kps, flipped.kps).max() < 0.1
    assert kps[0, 0] < kps[1, 0] and kps[3, 0] < kps[4, 0]


def test_mesh_colours_are_the_published_ones_in_rgb():
    assert dict(MESH_REGION_COLORS) == {k: v[::-1] for k, v in PUBLISHED_SPEC_COLOURS.items()}
    assert dict(MESH_PUPIL_COLORS) == {k: v[::-1] for k, v in PUBLISHED_PUPIL_COLOURS.items()}
    assert list(MESH_REGION_COLORS) == list(PUBLISHED_SPEC_COLOURS)  # the drawing order


def test_mesh_drawing_colours_each_region_in_place(face, photos):
    height, width = photos["astronaut"].shape[:2]
    image = draw_face_mesh([face.mesh], (width, height))
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    expected = {*MESH_REGION_COLORS.values(), *MESH_PUPIL_COLORS.values(), BLACK}
    assert colours(image) == expected
    assert of_colour(image, BLACK).mean() > 0.95

    # Lines are 2 px thick through vertices snapped to whole pixels: each colour stays within
    # 4 px of its region as filled from the same mesh (the face oval: of its outline).
    near = np.ones((9, 9), np.uint8)
    masks = {
        name: mask.astype(np.uint8) for name, mask in region_masks(face.mesh, image.shape).items()
    }
    within = {
        name: cv2.dilate(masks[name], near).astype(bool)
        for name in ("left_eye", "right_eye", "left_eyebrow", "right_eyebrow")
    }
    within["lips"] = cv2.dilate(masks["mouth"], near).astype(bool)
    within["face_oval"] = cv2.dilate(masks["face_oval"], near) > cv2.erode(masks["face_oval"], near)
    pixels = np.floor(face.mesh[:, :2]).astype(int)
    for name, colour in MESH_REGION_COLORS.items():
        drawn = of_colour(image, colour)
        assert drawn.sum() > 20, name
        assert not (drawn & ~within[name]).any(), name
        vertices = sorted({i for edge in regions.CONNECTIONS[name] for i in edge})
        hits = [drawn[y, x] for x, y in pixels[vertices]]
        assert np.mean(hits) > 0.9, name

    # Pupils: a 4 x 4 square on each iris centre; the nose and the landmarks themselves are
    # not drawn.
    half = PUPIL_HALF_WIDTH
    for index, colour in MESH_PUPIL_COLORS.items():
        x, y = pixels[index]
        assert of_colour(image[y - half : y + half, x - half : x + half], colour).all()
        assert of_colour(image, colour).sum() == (2 * half) ** 2
    for index in (1, 4, 50, 280):  # nose tip, nose, both cheeks
        x, y = pixels[index]
        assert not image[y - 1 : y + 2, x - 1 : x + 2].any(), index


def test_mesh_lines_are_two_pixels_thick(face):
    image = draw_face_mesh(face.mesh, (512, 512))
    oval = of_colour(image, MESH_REGION_COLORS["face_oval"])
    x, y = np.floor(face.mesh[152, :2]).astype(int)  # chin: a horizontal stretch of the oval
    assert oval[y - 8 : y + 9, x].sum() == 3  # cv2's 2 px line covers 3 px across
    x, y = np.floor(face.mesh[234, :2]).astype(int)  # cheek side: a vertical stretch
    assert oval[y, x - 8 : x + 9].sum() == 3


def test_mirrored_mesh_keeps_each_colour_on_its_own_eye(face):
    left, right = MESH_REGION_COLORS["left_eye"], MESH_REGION_COLORS["right_eye"]
    plain = pose_condition(face, CANVAS, position=(0.5, 0.5))
    mirrored = pose_condition(face, CANVAS, position=(0.5, 0.5), mirror=True)
    # Frontal faces show the subject's left eye on the image's right, mirrored or not ...
    for image in (plain, mirrored):
        assert centroid(of_colour(image, left))[0] > CANVAS[0] / 2
        assert centroid(of_colour(image, right))[0] < CANVAS[0] / 2
    # ... and the mirror moved the physical right eye across: it now plays the left eye.
    moved = centroid(of_colour(plain, right)) * (-1, 1) + (CANVAS[0], 0)
    np.testing.assert_allclose(centroid(of_colour(mirrored, left)), moved, atol=2)
    pupil = MESH_PUPIL_COLORS[regions.LEFT_IRIS_CENTER]
    assert centroid(of_colour(mirrored, pupil))[0] > CANVAS[0] / 2
    # A plain image flip would have drawn the face seen from behind.
    assert centroid(of_colour(plain[:, ::-1], left))[0] < CANVAS[0] / 2


def test_several_meshes_share_one_canvas(faces):
    meshes = [
        place_landmarks(faces[name].mesh, canvas_size=CANVAS, position=(x, 0.5), face_height=0.3)
        for name, x in (("astronaut", 0.25), ("person_a_1", 0.75))
    ]
    together = draw_face_mesh(meshes, CANVAS)
    singles = [draw_face_mesh(mesh, CANVAS) for mesh in meshes]
    np.testing.assert_array_equal(together, np.maximum(*singles))
    assert all(single.any() for single in singles)
    np.testing.assert_array_equal(draw_face_mesh(np.stack(meshes), CANVAS), together)


def test_keypoint_drawing_follows_instantid(face):
    kps = place_landmarks(face.kps, canvas_size=CANVAS, src_box=face.bbox, face_height=0.5)
    image = draw_keypoints(kps, CANVAS)
    assert image.shape == (CANVAS[1], CANVAS[0], 3) and image.dtype == np.uint8
    assert colours(image) == {*KEYPOINT_COLORS, *LIMB_COLORS, BLACK}
    assert LIMB_COLORS == ((153, 0, 0), (0, 153, 0), (153, 153, 0), (153, 0, 153))
    for (x, y), colour in zip(kps.astype(int), KEYPOINT_COLORS, strict=True):
        assert tuple(image[y, x]) == colour
        assert tuple(image[y, x + KEYPOINT_RADIUS]) == colour
        assert tuple(image[y - KEYPOINT_RADIUS, x]) == colour
        assert tuple(image[y - KEYPOINT_RADIUS - 2, x]) != colour
    nose_disc = of_colour(image, KEYPOINT_COLORS[2]).sum()
    assert abs(nose_disc - np.pi * KEYPOINT_RADIUS**2) < 10

    # Each limb is an ellipse of half-width STICK_WIDTH from a keypoint to the nose, in that
    # keypoint's colour dimmed to 60 %.
    nose = kps[2]
    for outer, colour in zip((0, 1, 3, 4), LIMB_COLORS, strict=True):
        middle = (kps[outer] + nose) / 2
        direction = (kps[outer] - nose) / np.linalg.norm(kps[outer] - nose)
        normal = np.array([-direction[1], direction[0]])
        across = [middle + t * normal for t in np.arange(-8, 9)]
        width = sum(tuple(image[int(y), int(x)]) == colour for x, y in across)
        assert 2 * STICK_WIDTH - 1 <= width <= 2 * STICK_WIDTH + 2


def test_keypoints_of_several_faces_sit_above_every_limb(face):
    kps = place_landmarks(face.kps, canvas_size=CANVAS, src_box=face.bbox, face_height=0.5)
    shift = np.array([150.0, 0.0])
    apart = [kps - shift, kps + shift]
    together = draw_keypoints(apart, CANVAS)
    np.testing.assert_array_equal(together, np.maximum(*(draw_keypoints(k, CANVAS) for k in apart)))
    # The second face's eye-to-nose limb runs over the first face's nose.
    overlapping = [kps, kps + (kps[2] - kps[0]) / 2]
    image = draw_keypoints(overlapping, CANVAS)
    for x, y in np.concatenate(overlapping).astype(int):
        assert tuple(image[y, x]) in KEYPOINT_COLORS


def test_placement_centres_and_scales_the_face(face):
    position, fraction = (0.3, 0.6), 0.5
    placed = place_landmarks(face.mesh, canvas_size=CANVAS, position=position, face_height=fraction)
    low, high = placed[:, :2].min(axis=0), placed[:, :2].max(axis=0)
    np.testing.assert_allclose((low + high) / 2, np.multiply(position, CANVAS), atol=1e-6)
    np.testing.assert_allclose(high[1] - low[1], fraction * CANVAS[1], atol=1e-6)
    scale = (high[1] - low[1]) / np.ptp(face.mesh[:, 1])
    np.testing.assert_allclose(placed[:, 2], face.mesh[:, 2] * scale, rtol=1e-5, atol=1e-4)

    mirrored = place_landmarks(
        face.mesh, canvas_size=CANVAS, position=position, face_height=fraction, mirror=True
    )
    reflected = placed[list(MESH_MIRROR)] * (-1, 1, 1) + (2 * position[0] * CANVAS[0], 0, 0)
    np.testing.assert_allclose(mirrored, reflected, atol=1e-6)

    # The detector box is what moves when one is given; keypoints and mesh move together.
    matrix = placement_matrix(face.bbox, CANVAS, position=position, face_height=fraction)
    x, y, w, h = face.bbox
    corners = np.array([[x, y, 1.0], [x + w, y + h, 1.0]]) @ matrix.T
    np.testing.assert_allclose(corners.mean(axis=0), np.multiply(position, CANVAS))
    np.testing.assert_allclose(corners[1, 1] - corners[0, 1], fraction * CANVAS[1])
    kps = place_landmarks(face.kps, canvas_size=CANVAS, src_box=face.bbox, position=position)
    on_mesh = place_landmarks(face.mesh, canvas_size=CANVAS, src_box=face.bbox, position=position)
    assert np.linalg.norm(kps[2] - on_mesh[4, :2]) < 0.05 * np.ptp(on_mesh[:, 1])  # nose tips


def test_mirrored_keypoints_swap_eyes_and_mouth_corners(face):
    plain = place_landmarks(face.kps, canvas_size=CANVAS, src_box=face.bbox)
    mirrored = place_landmarks(face.kps, canvas_size=CANVAS, src_box=face.bbox, mirror=True)
    centre_x = CANVAS[0] * 0.5
    np.testing.assert_allclose(mirrored[0], (2 * centre_x - plain[1, 0], plain[1, 1]))
    np.testing.assert_allclose(mirrored[3], (2 * centre_x - plain[4, 0], plain[4, 1]))
    assert mirrored[0, 0] < mirrored[1, 0] and mirrored[3, 0] < mirrored[4, 0]


def test_bad_inputs_are_refused_with_the_reason(face):
    with pytest.raises(ValueError, match="which points pair up"):
        place_landmarks(np.zeros((7, 2)), canvas_size=CANVAS, src_box=(0, 0, 1, 1), mirror=True)
    with pytest.raises(ValueError, match="w, h > 0"):
        place_landmarks(face.kps, canvas_size=CANVAS, src_box=(0, 0, 10, 0))
    with pytest.raises(ValueError, match="face_height"):
        place_landmarks(face.kps, canvas_size=CANVAS, face_height=0)
    with pytest.raises(ValueError, match=r"shape \(N, 2\) or \(N, 3\)"):
        place_landmarks(np.zeros((5, 4)), canvas_size=CANVAS)
    with pytest.raises(ValueError, match="478 or 468 points"):
        draw_face_mesh([face.kps], CANVAS)
    with pytest.raises(ValueError, match="5 points"):
        draw_keypoints(face.mesh, CANVAS)
    with pytest.raises(ValueError, match="non-finite"):
        draw_keypoints(np.full((5, 2), np.nan), CANVAS)
    with pytest.raises(ValueError, match="whole pixels"):
        draw_keypoints(face.kps, (0, 512))
    with pytest.raises(ValueError, match="kind"):
        pose_condition(face, CANVAS, kind="dense")  # type: ignore[arg-type]
    without_mesh = Face(bbox=face.bbox, score=face.score, kps=face.kps)
    with pytest.raises(ValueError, match="no mesh"):
        pose_condition(without_mesh, CANVAS)
    assert pose_condition(without_mesh, CANVAS, kind="kps").any()


def test_pose_condition_draws_the_placed_face(faces):
    face = faces["person_b_1"]
    where = {"position": (0.6, 0.45), "face_height": 0.35, "mirror": True}
    for kind, points, draw in (
        ("mesh", face.mesh, draw_face_mesh),
        ("kps", face.kps, draw_keypoints),
    ):
        image = pose_condition(face, CANVAS, kind, **where)
        placed = place_landmarks(points, canvas_size=CANVAS, src_box=face.bbox, **where)
        np.testing.assert_array_equal(image, draw(placed, CANVAS))
    mesh_image = pose_condition(face, CANVAS, "mesh", **where)
    rows, cols = np.nonzero(mesh_image.any(axis=-1))
    centre = np.array([(cols.min() + cols.max()) / 2, (rows.min() + rows.max()) / 2])
    target = np.multiply(where["position"], CANVAS)
    assert np.linalg.norm(centre - target) < 0.1 * where["face_height"] * CANVAS[1]
    assert 0.8 < (rows.max() - rows.min()) / (where["face_height"] * CANVAS[1]) < 1.5


@pytest.fixture(scope="module")
def controlnet_aux_face() -> ModuleType:
    """controlnet_aux's ``mediapipe_face_common``, loaded from its file.

    Importing it as ``controlnet_aux.mediapipe_face`` runs the package's ``__init__``, which
    needs torchvision, timm and einops; the module itself needs only mediapipe and numpy.
    """
    pytest.importorskip("mediapipe")
    spec = importlib.util.find_spec("controlnet_aux")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"controlnet-aux not installed: `{CONTROLNET_AUX_INSTALL}` enables this")
    path = Path(spec.submodule_search_locations[0], "mediapipe_face", "mediapipe_face_common.py")
    module_spec = importlib.util.spec_from_file_location("_controlnet_aux_face", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_mesh_drawing_equals_controlnet_aux_on_a_photo(controlnet_aux_face, analyzer, photos):
    image = photos["astronaut"]
    theirs = controlnet_aux_face.generate_annotation(image, 1, 0.5)
    ours = draw_face_mesh([analyzer.mesher.landmarks(image)], image.shape[1::-1])
    drawn = theirs.any(axis=-1) | ours.any(axis=-1)
    assert drawn.sum() > 1000
    assert (theirs == ours).all(axis=-1)[drawn].mean() >= 0.99


def test_mesh_drawing_equals_controlnet_aux_on_placed_meshes(controlnet_aux_face, faces):
    from mediapipe.framework.formats import landmark_pb2

    width, height = CANVAS
    meshes = [
        place_landmarks(faces["person_a_1"].mesh, canvas_size=CANVAS, face_height=0.6),
        place_landmarks(
            faces["astronaut"].mesh,
            canvas_size=CANVAS,
            position=(0.9, 0.05),  # partly off the canvas
            face_height=0.3,
            mirror=True,
        ),
    ]
    theirs = np.zeros((height, width, 3), np.uint8)
    for mesh in meshes:
        landmarks = landmark_pb2.NormalizedLandmarkList()
        for x, y, z in mesh:
            landmarks.landmark.add(x=x / width, y=y / height, z=z / width)
        controlnet_aux_face.mp_drawing.draw_landmarks(
            theirs,
            landmarks,
            connections=controlnet_aux_face.face_connection_spec.keys(),
            landmark_drawing_spec=None,
            connection_drawing_spec=controlnet_aux_face.face_connection_spec,
        )
        controlnet_aux_face.draw_pupils(theirs, landmarks, controlnet_aux_face.iris_landmark_spec)
    theirs = controlnet_aux_face.reverse_channels(theirs)
    ours = draw_face_mesh(meshes, CANVAS)
    drawn = theirs.any(axis=-1) | ours.any(axis=-1)
    assert (theirs == ours).all(axis=-1)[drawn].mean() >= 0.99
