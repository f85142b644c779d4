"""The face-perception facade on real photos: faces, embeddings, quality verdicts, head crops."""

from itertools import combinations

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

from studio.faces.analyzer import FaceAnalyzer
from studio.faces.mesh import EYE_CLOSED_THRESHOLD
from studio.faces.quality import DEFAULT_THRESHOLDS, QualityThresholds, assess
from studio.faces.types import Detection, Pose
from studio.images import load_image

NAMES = ["person_a_1", "person_a_2", "person_b_1", "person_b_2", "impostor_1", "impostor_2"]


@pytest.fixture(scope="module")
def analyzer():
    return FaceAnalyzer(encoders=("sface",))


@pytest.fixture(scope="module")
def photos(faces_dir):
    return {name: load_image(faces_dir / f"{name}.jpg").rgb for name in NAMES}


@pytest.fixture(scope="module")
def analyzed(analyzer, photos):
    return {name: analyzer.analyze(image) for name, image in photos.items()}


def test_every_portrait_has_one_good_face(analyzed, analyzer):
    for name, faces in {**analyzed, "astronaut": analyzer.analyze(astronaut())}.items():
        assert len(faces) == 1, name
        face = faces[0]
        assert face.quality.ok, (name, face.quality.reasons)
        assert face.mesh is not None and face.mesh.shape == (478, 3)
        assert abs(face.pose.yaw) < 20 and abs(face.pose.pitch) < 20
        vec = face.embeddings["sface"]
        assert vec.shape == (128,) and abs(np.linalg.norm(vec) - 1) < 1e-5
        x, y, w, h = face.bbox
        assert all(x <= kx <= x + w and y <= ky <= y + h for kx, ky in face.kps), name


def test_same_person_pairs_beat_every_impostor_pair(analyzed, analyzer):
    threshold = analyzer.encoders["sface"].threshold
    vec = {n: faces[0].embeddings["sface"] for n, faces in analyzed.items()}
    same = {("person_a_1", "person_a_2"), ("person_b_1", "person_b_2")}
    sims = {pair: float(vec[pair[0]] @ vec[pair[1]]) for pair in combinations(NAMES, 2)}
    assert min(sims[p] for p in same) > threshold
    assert max(s for p, s in sims.items() if p not in same) < threshold


def test_several_faces_come_largest_first_each_with_its_identity(analyzer, photos, analyzed):
    big = photos["person_b_1"]
    small = cv2.resize(photos["impostor_2"], None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    canvas = np.full((big.shape[0], big.shape[1] + small.shape[1], 3), 255, np.uint8)
    canvas[: big.shape[0], : big.shape[1]] = big
    canvas[: small.shape[0], big.shape[1] :] = small
    faces = analyzer.analyze(canvas)
    assert len(faces) == 2
    assert faces[0].bbox[2] * faces[0].bbox[3] > faces[1].bbox[2] * faces[1].bbox[3]
    for face, source in zip(faces, ("person_b_1", "impostor_2"), strict=True):
        reference = analyzed[source][0].embeddings["sface"]
        assert float(face.embeddings["sface"] @ reference) > 0.8


def test_tiny_face_is_too_small(analyzer, photos):
    tiny = cv2.resize(photos["person_b_2"], None, fx=0.18, fy=0.18, interpolation=cv2.INTER_AREA)
    (face,) = analyzer.analyze(tiny)
    assert not face.quality.ok
    assert any(r.startswith("face too small") for r in face.quality.reasons)


def test_blurred_photo_is_blurry(analyzer, photos):
    blurred = cv2.GaussianBlur(photos["person_b_1"], (0, 0), 8)
    faces = analyzer.analyze(blurred)
    assert faces, "a blurred face should still be detected"
    assert any(r.startswith("blurry") for r in faces[0].quality.reasons)


@pytest.mark.parametrize(("gain", "reason"), [(0.25, "underexposed"), (3.0, "overexposed")])
def test_exposure(analyzer, photos, gain, reason):
    image = np.clip(photos["impostor_1"].astype(np.float32) * gain, 0, 255).astype(np.uint8)
    (face,) = analyzer.analyze(image)
    assert any(r.startswith(reason) for r in face.quality.reasons), face.quality.reasons


def test_extreme_pose_from_mesh_pose_and_from_keypoints(analyzed):
    face = analyzed["person_b_1"][0]
    det = Detection(face.bbox, face.score, face.kps)
    crop = np.full((112, 112, 3), 128, np.uint8)
    crop[::2] = 200  # sharp enough
    turned = assess(det, crop, pose=Pose(yaw=62.0, pitch=3.0, roll=0.0))
    assert any(r.startswith("extreme pose (yaw 62°") for r in turned.reasons)
    profile_kps = face.kps.copy()
    profile_kps[2, 0] = profile_kps[1, 0] + 0.2 * (profile_kps[1, 0] - profile_kps[0, 0])
    profile = assess(Detection(face.bbox, face.score, profile_kps), crop)
    assert any("profile view" in r for r in profile.reasons)
    frontal = assess(det, crop)
    assert not any("pose" in r for r in frontal.reasons)


def test_closed_eyes_from_the_mesh(analyzed, photos):
    face = analyzed["person_a_2"][0]
    det = Detection(face.bbox, face.score, face.kps)
    crop = np.full((112, 112, 3), 128, np.uint8)
    crop[::2] = 200
    mesh = face.mesh.copy()
    assert assess(det, crop, mesh=mesh).metrics["eye_openness"] > EYE_CLOSED_THRESHOLD
    for upper, lower in ((387, 373), (385, 380), (160, 144), (158, 153)):  # lids meet
        mesh[upper] = mesh[lower]
    closed = assess(det, crop, mesh=mesh)
    assert any(r.startswith("eyes closed") for r in closed.reasons)


def test_thresholds_live_in_one_object(analyzed, photos):
    strict = FaceAnalyzer(encoders=(), mesher=None, thresholds=QualityThresholds(min_face_px=500))
    (face,) = strict.analyze(photos["person_b_1"])
    assert face.embeddings == {} and face.mesh is None and face.pose is None
    assert face.quality.reasons[0] == f"face too small ({max(face.bbox[2:]):.0f} px < 500 px)"
    assert DEFAULT_THRESHOLDS.min_face_px == 96


def test_head_crop_centres_the_face(analyzer, analyzed, photos):
    face = analyzed["person_b_2"][0]
    crop = analyzer.crop(photos["person_b_2"], face, size=512)
    assert crop.image.shape == (512, 512, 3)
    from studio.faces.align import transform_points

    kps = transform_points(face.kps, crop.matrix)
    eye_mid = (kps[0] + kps[1]) / 2
    assert abs(eye_mid[0] - 256) < 10
    eye_dist = np.linalg.norm(kps[1] - kps[0])
    assert 0.1 * 512 < eye_dist < 0.2 * 512  # head and shoulders, not a tight face crop
    back = transform_points(kps, crop.inverse)
    np.testing.assert_allclose(back, face.kps, atol=1e-3)
