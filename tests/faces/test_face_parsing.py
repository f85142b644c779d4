"""Face parsing on real portraits with the mesh parser; mask composition; the attribute table."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

from studio.faces.align import align_face, transform_points
from studio.faces.analyzer import FaceAnalyzer
from studio.faces.keywords import (
    KEYWORD_CLASSES,
    SYNONYMS,
    attribute_mask,
    attribute_of,
    attributes_in,
)
from studio.faces.masks import (
    EmptyMaskError,
    box_mask,
    compose_face_mask,
    mask_in_crop,
    occlusion_mask,
    region_mask,
)
from studio.faces.mesh_parser import MESH_CLASSES, FaceParseError, MeshFaceParser
from studio.faces.parsing import (
    CLASS_INDEX,
    CLASSES,
    FaceParsing,
    ParsingError,
    UnknownClassError,
    check_classes,
)
from studio.faces.types import Face
from studio.images import load_image

NAMES = ("person_a_1", "person_a_2", "person_b_1", "person_b_2", "impostor_1", "impostor_2")
FACE_PARTS = ("skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "mouth", "u_lip", "l_lip")


@pytest.fixture(scope="module")
def photos(faces_dir) -> dict[str, np.ndarray]:
    loaded = {name: load_image(faces_dir / f"{name}.jpg").rgb for name in NAMES}
    return {**loaded, "astronaut": astronaut()}


@pytest.fixture(scope="module")
def faces(photos) -> dict[str, Face]:
    analyzer = FaceAnalyzer(encoders=())
    return {name: analyzer.analyze(image)[0] for name, image in photos.items()}


@pytest.fixture(scope="module")
def parser():
    parser = MeshFaceParser()
    yield parser
    parser.close()


@pytest.fixture(scope="module")
def parsed(parser, photos, faces) -> dict[str, FaceParsing]:
    return {name: parser.parse(photos[name], faces[name]) for name in photos}


def centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    assert len(xs), "empty mask"
    return np.array([xs.mean(), ys.mean()])


def grown_box(face: Face, shape, grow: float) -> np.ndarray:
    x, y, w, h = face.bbox
    inside = np.zeros(shape[:2], bool)
    y0, y1 = max(0, int(y - grow * h)), int(y + h + grow * h) + 1
    x0, x1 = max(0, int(x - grow * w)), int(x + w + grow * w) + 1
    inside[y0:y1, x0:x1] = True
    return inside


# --- the vocabulary ---------------------------------------------------------------------------


def test_classes_follow_the_published_bisenet_order():
    assert len(CLASSES) == 19 and CLASSES[0] == "background"
    assert CLASSES[1:] == (
        *("skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r"),
        *("nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat"),
    )
    assert CLASS_INDEX["hair"] == 17 and CLASS_INDEX["eye_g"] == 6
    with pytest.raises(UnknownClassError, match="'beard'.*choose from background, skin"):
        check_classes(["hair", "beard"])


def test_could_not_check_differs_from_absent():
    labels = np.zeros((8, 8), np.uint8)
    labels[2:4, 2:4] = CLASS_INDEX["skin"]
    parsing = FaceParsing(labels, MESH_CLASSES, "mesh", (0, 0, 8, 8))
    assert parsing.present("skin") is True
    assert parsing.present("mouth") is False
    assert parsing.present("eye_g") is None
    assert parsing.mask("skin").sum() == 4
    with pytest.raises(ParsingError, match="mesh parser cannot tell 'eye_g'.*face_parser"):
        parsing.mask("eye_g")
    assert parsing.areas()["skin"] == 4 and "hat" not in parsing.areas()
    assert not parsing.labels.flags.writeable


# --- the mesh parser on real photos -----------------------------------------------------------


@pytest.mark.parametrize("name", [*NAMES, "astronaut"])
def test_mesh_parser_regions_lie_where_faces_have_them(name, parsed, photos, faces):
    parsing, face, image = parsed[name], faces[name], photos[name]
    assert parsing.shape == image.shape[:2]
    assert parsing.classes == MESH_CLASSES | {"hair", "l_ear", "r_ear", "neck", "cloth"}
    for absent in ("eye_g", "ear_r", "neck_l", "hat"):
        assert parsing.present(absent) is None
    face_pixels = parsing.union(FACE_PARTS)
    inside = grown_box(face, image.shape, 0.25)
    assert np.count_nonzero(face_pixels & inside) >= 0.99 * np.count_nonzero(face_pixels)
    w, h = face.bbox[2:]
    assert parsing.areas()["skin"] > 0.3 * w * h

    eyes = centroid(parsing.union(["l_eye", "r_eye"]))
    brows = centroid(parsing.union(["l_brow", "r_brow"]))
    nose = centroid(parsing.mask("nose"))
    upper, lower = centroid(parsing.mask("u_lip")), centroid(parsing.mask("l_lip"))
    assert brows[1] < eyes[1] < nose[1] < upper[1] < lower[1]
    # The subject's left is the image's right in these frontal, unmirrored photos.
    assert centroid(parsing.mask("l_eye"))[0] > centroid(parsing.mask("r_eye"))[0]
    assert centroid(parsing.mask("l_brow"))[0] > centroid(parsing.mask("r_brow"))[0]
    assert centroid(parsing.mask("l_ear"))[0] > eyes[0] > centroid(parsing.mask("r_ear"))[0]

    hair = parsing.mask("hair")
    assert np.count_nonzero(hair[: int(eyes[1])]) > 0.01 * w * h  # hair above the eyes
    assert np.count_nonzero(hair & face_pixels) == 0
    assert centroid(parsing.mask("cloth"))[1] > lower[1]


def test_without_segmentation_only_the_mesh_classes(photos, faces):
    parser = MeshFaceParser(segmenter=False)
    parsing = parser.parse(photos["person_b_1"], faces["person_b_1"])
    assert parsing.classes == MESH_CLASSES
    assert parsing.present("hair") is None and parsing.present("nose") is True


def test_a_face_without_mesh_is_meshed_in_its_box(parser, photos, faces, parsed):
    face = faces["impostor_2"]
    bare = Face(bbox=face.bbox, score=face.score, kps=face.kps)
    parsing = parser.parse(photos["impostor_2"], bare)
    agree = parsing.mask("skin") == parsed["impostor_2"].mask("skin")
    assert agree.mean() > 0.99
    empty = np.full((300, 300, 3), 128, np.uint8)
    nowhere = Face(bbox=(100.0, 100.0, 80.0, 80.0), score=1.0, kps=face.kps)
    with pytest.raises(FaceParseError, match=r"face box \(100, 100, 80, 80\)"):
        parser.parse(empty, nowhere)


def test_a_face_too_small_to_parse_is_a_clear_error(photos, faces):
    face = faces["impostor_2"]
    dot = np.zeros_like(np.asarray(face.mesh, np.float32)) + 50.0  # a mesh collapsed to a point
    tiny = Face(bbox=(49.0, 49.0, 2.0, 2.0), score=face.score, kps=face.kps, mesh=dot)
    with pytest.raises(FaceParseError, match=r"box \(49, 49, 2, 2\).*too small to parse"):
        MeshFaceParser(segmenter=False).parse(photos["impostor_2"], tiny)


def test_without_mediapipe_a_face_without_mesh_is_a_clear_error(photos, faces, monkeypatch):
    import studio.faces.mesh

    def missing():
        raise ImportError("FaceMesher needs the optional mediapipe extra")

    monkeypatch.setattr(studio.faces.mesh, "FaceMesher", missing)  # as if not installed
    face = faces["impostor_1"]
    bare = Face(bbox=face.bbox, score=face.score, kps=face.kps)
    with pytest.raises(FaceParseError, match="no mesh and none can be made.*mediapipe extra"):
        MeshFaceParser(segmenter=False).parse(photos["impostor_1"], bare)


def test_an_object_over_the_cheek_is_an_occluder_kept_from_the_target(parser, photos, faces):
    image, face = photos["person_a_2"].copy(), faces["person_a_2"]
    x, y, w, h = (int(v) for v in face.bbox)
    patch = (slice(y + h // 2, y + h // 2 + h // 5), slice(x + w // 8, x + w // 8 + w // 5))
    image[patch] = (30, 60, 200)  # a blue object in front of the subject's right cheek
    skin_before = parser.parse(photos["person_a_2"], face).mask("skin")
    covered = np.zeros(skin_before.shape, bool)
    covered[patch] = True
    covered &= skin_before
    assert covered.sum() > 0.02 * w * h
    parsing = parser.parse(image, face)
    assert not parsing.mask("skin")[covered].any()
    masks = compose_face_mask(parsing, face)
    assert (masks.occlusion[covered] == 1.0).all()
    assert (masks.mask[covered] == 0.0).all()
    assert masks.mask.max() > 0.99  # the rest of the face is still there


# --- mask composition -------------------------------------------------------------------------


def test_region_mask_is_zero_outside_and_soft_only_near_its_edge(parsed, faces):
    parsing, face = parsed["person_b_2"], faces["person_b_2"]
    hard = parsing.union(FACE_PARTS)
    soft = region_mask(parsing, face, feather=0.02)
    assert soft.dtype == np.float32 and soft.shape == parsing.shape
    assert (soft[~hard] == 0).all()
    fractional = (soft > 0) & (soft < 1 - 1e-4)
    assert fractional.any()
    depth = cv2.distanceTransform(hard.astype(np.uint8), cv2.DIST_L2, 5)
    reach = 4 * 0.02 * max(face.bbox[2:]) + 2  # the Gaussian kernel's radius, and a margin
    assert depth[fractional].max() <= reach
    assert (soft[depth > reach] > 1 - 1e-4).all()


def test_box_mask_feathers_inside_the_padded_box():
    mask = box_mask((200, 300), (100, 50, 100, 100), padding=(0.1, 0.2, 0.1, 0.2), blur=0.3)
    assert mask[100, 150] == pytest.approx(1.0, abs=1e-3)
    outside = np.ones_like(mask, bool)
    outside[40:160, 80:220] = False
    assert (mask[outside] == 0).all()
    fractional = (mask > 0) & (mask < 1 - 1e-4)
    ys, xs = np.nonzero(fractional)
    edge = np.minimum.reduce([ys - 40, 159 - ys, xs - 80, 219 - xs])
    assert edge.min() >= 0 and edge.max() <= 0.3 * 100  # only in the blur band
    assert (box_mask((50, 50), (10, 10, 20, 20), blur=0.0)[12:30, 12:30] == 1).all()


def test_occlusion_keeps_hair_and_composition_excludes_it(parsed, faces):
    parsing, face = parsed["person_b_1"], faces["person_b_1"]
    occlusion = occlusion_mask(parsing, face)
    assert (occlusion[parsing.mask("hair")] == 1).all()
    masks = compose_face_mask(parsing, face)
    assert (masks.box[parsing.union(FACE_PARTS)] >= 0.9).mean() > 0.95  # the box spares the face
    assert (masks.mask[parsing.mask("hair")] == 0).all()
    assert (masks.mask[~parsing.union(FACE_PARTS)] == 0).all()
    assert masks.mask.max() > 0.99
    np.testing.assert_allclose(masks.mask, masks.box * masks.region * (1 - masks.occlusion))


def test_a_mask_carried_into_the_aligned_crop(parsed, faces, photos):
    parsing, face = parsed["person_a_2"], faces["person_a_2"]
    masks = compose_face_mask(parsing, face)
    crop = align_face(photos["person_a_2"], face.kps, 256)
    inside = mask_in_crop(masks.mask, crop)
    assert inside.shape == (256, 256) and inside.dtype == np.float32
    nose_tip = np.round(transform_points(face.kps[2:3], crop.matrix)[0]).astype(int)
    assert (
        inside[nose_tip[1] - 20 : nose_tip[1] - 10, nose_tip[0] + 20 : nose_tip[0] + 30].min() > 0.9
    )
    assert inside[:10].max() == 0 and inside[-5:].max() == 0  # hair above, neck below


def test_an_empty_region_is_an_error_naming_the_face(parsed, faces):
    parsing, face = parsed["impostor_1"], faces["impostor_1"]
    box = ", ".join(f"{v:.0f}" for v in face.bbox)
    with pytest.raises(EmptyMaskError, match=rf"none of hat on the face at \({box}\)"):
        compose_face_mask(parsing, face, region=("hat",))
    nothing = FaceParsing(np.zeros(parsing.shape, np.uint8), MESH_CLASSES, "mesh", (0, 0, 1, 1))
    with pytest.raises(EmptyMaskError, match="face at"):
        region_mask(nothing, face)
    far = Face(bbox=(0.0, 0.0, 10.0, 10.0), score=1.0, kps=face.kps)
    with pytest.raises(EmptyMaskError, match=r"face at \(0, 0, 10, 10\).*covers nothing"):
        compose_face_mask(parsing, far)


# --- the attribute table ----------------------------------------------------------------------


def test_the_table_names_only_parsing_classes():
    for classes in KEYWORD_CLASSES.values():
        check_classes(classes)
    assert all(target in KEYWORD_CLASSES for target in SYNONYMS.values())
    assert attribute_of("Spectacles") == "glasses"
    with pytest.raises(ParsingError, match="unknown face attribute 'tattoo'; choose from hair"):
        attribute_of("tattoo")


def test_attributes_in_a_prompt():
    prompt = "a woman with red hair, round glasses, gold earrings and a smile, curls"
    assert attributes_in(prompt) == ("hair", "glasses", "earrings", "mouth")
    assert attributes_in("a plain studio portrait") == ()


@pytest.mark.parametrize("name", NAMES)
def test_attribute_masks_on_real_portraits(name, parsed):
    parsing = parsed[name]
    eyes = attribute_mask(parsing, "eyes")
    np.testing.assert_array_equal(eyes, parsing.mask("l_eye") | parsing.mask("r_eye"))
    mouth = attribute_mask(parsing, "lips")
    assert mouth.any() and centroid(mouth)[1] > centroid(eyes)[1]
    hair = attribute_mask(parsing, "hair")
    assert np.count_nonzero(hair[: int(centroid(eyes)[1])]) > 0.5 * np.count_nonzero(eyes)
    assert attribute_mask(parsing, "brows").any()
    assert attribute_mask(parsing, "nose").any()
    for unseen in ("glasses", "earrings", "necklace", "hat"):
        assert attribute_mask(parsing, unseen) is None  # could not check
