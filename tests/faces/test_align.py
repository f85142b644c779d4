"""Alignment: insightface parity, FFHQ quads, inverse matrices and paste-back on real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from studio.faces.align import (
    ARCFACE_TEMPLATE_112,
    E4E_MIN_QUAD_SIDE,
    HEAD_CROP_FACE_FRACTION,
    align_face,
    align_ffhq,
    align_ffhq_quad,
    arcface_template,
    estimate_similarity,
    ffhq_points_from_kps,
    ffhq_points_from_mesh,
    ffhq_quad,
    paste_back,
    transform_points,
)
from studio.faces.detect import YuNetDetector
from studio.faces.mesh import FaceMesher

# insightface's estimate_norm calls scikit-image's deprecated SimilarityTransform.estimate.
insightface_reference = pytest.mark.filterwarnings("ignore::FutureWarning")


def _read_rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def detector() -> YuNetDetector:
    return YuNetDetector()


@pytest.fixture(scope="module")
def portraits(faces_dir, detector) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each fixture photo with the keypoints of its one face."""
    photos = []
    for path in sorted(faces_dir.glob("*.jpg")):
        image = _read_rgb(path)
        photos.append((image, detector.detect(image)[0].kps))
    return photos


def _random_faces(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """Keypoints of faces with random size, roll, position and per-point jitter."""
    faces = []
    for _ in range(count):
        scale, angle = rng.uniform(0.5, 6.0), rng.uniform(-np.pi / 3, np.pi / 3)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        centred = (ARCFACE_TEMPLATE_112 - 56.0) * scale
        shift = rng.uniform(0, 900, size=2)
        faces.append(centred @ rotation.T + shift + rng.normal(0, 2.0 * scale, size=(5, 2)))
    return faces


def test_template_is_insightfaces_and_scales_by_its_rule():
    from insightface.utils.face_align import arcface_dst

    np.testing.assert_allclose(ARCFACE_TEMPLATE_112, arcface_dst, atol=1e-4)
    np.testing.assert_allclose(arcface_template(224), ARCFACE_TEMPLATE_112 * 2)
    # 512 = 4 x 128: scale by 4 and move right by 8 * 4 px.
    np.testing.assert_allclose(arcface_template(512)[:, 0], ARCFACE_TEMPLATE_112[:, 0] * 4 + 32)
    np.testing.assert_allclose(arcface_template(512)[:, 1], ARCFACE_TEMPLATE_112[:, 1] * 4)
    with pytest.raises(ValueError, match="multiple of 112 or 128"):
        arcface_template(500)


def test_estimate_similarity_recovers_a_known_transform_and_never_mirrors():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 500, size=(7, 2))
    angle, scale, shift = 0.7, 1.9, np.array([-30.0, 12.5])
    linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = estimate_similarity(src, src @ linear.T + shift)
    np.testing.assert_allclose(matrix, np.column_stack([linear, shift]), atol=1e-9)

    mirrored = src * [-1, 1]
    assert np.linalg.det(estimate_similarity(src, mirrored)[:, :2]) > 0
    with pytest.raises(ValueError, match="coincide"):
        estimate_similarity(np.ones((5, 2)), src[:5])


@insightface_reference
@pytest.mark.parametrize("size", [112, 224, 256, 512])
def test_matches_insightface_norm_crop(portraits, size):
    from insightface.utils.face_align import estimate_norm, norm_crop

    rng = np.random.default_rng(size)
    noise = rng.integers(0, 256, size=(1000, 1000, 3), dtype=np.uint8)
    cases = [(image, kps) for image, kps in portraits]
    cases += [(noise, kps) for kps in _random_faces(rng, 10)]
    for image, kps in cases:
        ours = align_face(image, kps, size)
        theirs = estimate_norm(kps.astype(np.float32), size)
        # Where each keypoint lands, and where each crop corner comes from, within 1e-3 px.
        np.testing.assert_allclose(
            transform_points(kps, ours.matrix), transform_points(kps, theirs), atol=1e-3
        )
        corners = np.array([[0.0, 0.0], [size, 0.0], [0.0, size], [size, size]])
        np.testing.assert_allclose(
            transform_points(corners, ours.inverse),
            transform_points(corners, cv2.invertAffineTransform(theirs)),
            atol=1e-3,
        )
        # Same pixels, but for the few where insightface's float32 template moves OpenCV's
        # 1/32-px sampling grid by one step (at most 255 / 32 on full-contrast noise).
        reference = norm_crop(image, kps.astype(np.float32), size).astype(int)
        difference = np.abs(ours.image.astype(int) - reference)
        assert ours.image.shape == (size, size, 3)
        assert difference.max() <= 8 and (difference > 0).mean() < 0.01


def test_inverse_round_trips_points(portraits):
    rng = np.random.default_rng(1)
    image, kps = portraits[0]
    for aligned in (
        align_face(image, kps, 224),
        align_face(image, kps, 1024, face_fraction=HEAD_CROP_FACE_FRACTION),
        align_ffhq(image, kps, 256),
    ):
        points = rng.uniform(-50, 1000, size=(20, 2))
        back = transform_points(transform_points(points, aligned.matrix), aligned.inverse)
        np.testing.assert_allclose(back, points, atol=1e-6)


@pytest.mark.parametrize(("size", "face_fraction"), [(224, 1.0), (512, HEAD_CROP_FACE_FRACTION)])
def test_crops_put_the_real_eyes_on_the_template(portraits, detector, size, face_fraction):
    centre = size / 2
    expected = centre + (arcface_template(size)[:2] - centre) * face_fraction
    eye_distance = np.linalg.norm(expected[1] - expected[0])
    for image, kps in portraits:
        crop = align_face(image, kps, size, face_fraction=face_fraction).image
        found = detector.detect(crop)
        assert len(found) == 1
        # The detector, run again on the crop, finds the eyes where the template put them
        # (YuNet's eye points scatter by up to ~20 % of the eye distance from crop to crop).
        np.testing.assert_allclose(found[0].kps[:2], expected, atol=0.25 * eye_distance)


def test_head_crop_keeps_the_face_centred_and_smaller(portraits):
    image, kps = portraits[2]
    tight = align_face(image, kps, 512)
    head = align_face(image, kps, 512, face_fraction=HEAD_CROP_FACE_FRACTION)
    tight_eyes = np.linalg.norm(np.subtract(*transform_points(kps[:2], tight.matrix)))
    head_eyes = np.linalg.norm(np.subtract(*transform_points(kps[:2], head.matrix)))
    assert head_eyes == pytest.approx(tight_eyes * HEAD_CROP_FACE_FRACTION, rel=1e-6)
    face_centre = transform_points(kps, head.matrix).mean(axis=0)
    np.testing.assert_allclose(face_centre, [256, 256], atol=0.1 * 512)
    # The head crop with mirrored padding has no black border where the photo ends.
    mirrored = align_face(image, kps, 512, face_fraction=0.25, border="reflect").image
    black = align_face(image, kps, 512, face_fraction=0.25).image
    assert (black.max(axis=2) == 0).mean() > 0.05
    assert (mirrored.max(axis=2) == 0).mean() < 0.001


def test_ffhq_quad_follows_the_published_rule():
    # Upright face: eyes 40 px apart, mouth 40 px below them.
    kps = np.array([[100.0, 100.0], [140.0, 100.0], [120.0, 120.0], [105.0, 140.0], [135.0, 140]])
    # x = max(2 * 40, 1.8 * 40) = 80 to the right, y = 80 down, c = eye centre + 0.1 * (0, 40).
    expected = np.array([[40.0, 24.0], [40.0, 184.0], [200.0, 184.0], [200.0, 24.0]])
    np.testing.assert_allclose(ffhq_quad(kps), expected)

    # A tall face: the eye-to-mouth span wins, and the quad turns with the face.
    tall = kps * [1, 2] - [0, 100]
    angle = np.deg2rad(25)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    quad = ffhq_quad(tall @ rotation.T)
    sides = np.linalg.norm(np.diff(np.vstack([quad, quad[:1]]), axis=0), axis=1)
    np.testing.assert_allclose(sides, 2 * 1.8 * 80)
    top = quad[3] - quad[0]
    assert np.degrees(np.arctan2(top[1], top[0])) == pytest.approx(25)


@pytest.mark.parametrize("index", range(6))
def test_ffhq_crop_of_a_real_photo_has_level_eyes_in_the_ffhq_band(portraits, detector, index):
    image, kps = portraits[index]
    size = 256
    aligned = align_ffhq(image, kps, size)
    quad = ffhq_quad(kps)
    np.testing.assert_allclose(
        transform_points(quad, aligned.matrix),
        [[-0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5], [size - 0.5, -0.5]],
        atol=1e-6,
    )
    found = detector.detect(aligned.image)
    assert len(found) == 1
    left, right = found[0].kps[:2] / size
    assert abs(left[1] - right[1]) < 0.03
    assert 0.38 < left[1] < 0.52 and 0.38 < right[1] < 0.52
    assert 0.28 < left[0] < 0.45 and 0.55 < right[0] < 0.72


def test_ffhq_of_a_huge_photo_matches_the_small_one(portraits):
    image, kps = portraits[1]
    factor = 4000 / max(image.shape[:2])
    huge = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
    huge_kps = (kps + 0.5) * (huge.shape[1] / image.shape[1], huge.shape[0] / image.shape[0]) - 0.5

    small = align_ffhq(image, kps, 256)
    large = align_ffhq(huge, huge_kps, 256)
    plain = align_ffhq(huge, huge_kps, 256, antialias=False)
    error = np.abs(large.image.astype(float) - small.image).mean()
    aliased = np.abs(plain.image.astype(float) - small.image).mean()
    assert error < 3.0
    assert error < aliased  # shrinking first beats point-sampling a 13x bigger photo
    np.testing.assert_allclose(
        transform_points(huge_kps, large.matrix), transform_points(kps, small.matrix), atol=0.05
    )


@pytest.mark.parametrize("antialias", [True, False])
def test_downsampling_warps_keep_subpixel_geometry(antialias):
    # A 4000-px photo whose FFHQ square is ~13x the crop: the shrink-then-supersample path.
    spot = np.array([1810.3, 2205.7])
    ys, xs = np.mgrid[1900:2500, 1500:2100]
    image = np.zeros((4000, 4000, 3), dtype=np.uint8)
    blob = 255 * np.exp(-((xs - spot[0]) ** 2 + (ys - spot[1]) ** 2) / (2 * 50.0**2))
    image[1900:2500, 1500:2100] = blob.astype(np.uint8)[..., None]
    kps = np.array([[1600, 1700], [2400, 1750], [2000, 2100], [1650, 2550], [2350, 2600]], float)

    for aligned in (
        align_ffhq(image, kps, 256, antialias=antialias),
        align_face(image, kps, 112, face_fraction=0.5, antialias=antialias),
    ):
        # The blob's centroid in the crop is where the matrix sends its centre.
        crop = aligned.image[..., 0].astype(float)
        crop_ys, crop_xs = np.mgrid[: crop.shape[0], : crop.shape[1]]
        centroid = [(crop * crop_xs).sum() / crop.sum(), (crop * crop_ys).sum() / crop.sum()]
        np.testing.assert_allclose(
            centroid, transform_points(spot[None], aligned.matrix)[0], atol=0.05
        )


def test_paste_back_restores_the_photo_and_leaves_the_rest_untouched(portraits):
    image, kps = portraits[4]
    size = 1024
    aligned = align_face(image, kps, size, face_fraction=0.75)
    inside = _crop_coordinates(image.shape, aligned.matrix, size)

    restored = paste_back(image, aligned.image, aligned)
    core = _within(inside, 0.2 * size, 0.8 * size)
    outside = ~_within(inside, -1.0, size)
    error = np.abs(restored.astype(int) - image)[core]
    assert error.mean() < 2.0 and np.percentile(error, 99) < 20
    assert np.array_equal(restored[outside], image[outside])
    assert not np.array_equal(restored, image)

    red = np.zeros_like(aligned.image)
    red[..., 0] = 255
    painted = paste_back(image, red, aligned)
    assert (painted[core] == [255, 0, 0]).all()
    assert np.array_equal(painted[outside], image[outside])
    # The feathered edge: the crop's own border never shows.
    edge = _within(inside, 0.5, size - 1.5) & ~_within(inside, 2.0, size - 3.0)
    assert np.abs(painted.astype(int) - image)[edge].max() <= 2

    # A crop at another resolution (e.g. a face restorer's output) lands in the same place.
    half = cv2.resize(red, (size // 2, size // 2), interpolation=cv2.INTER_AREA)
    assert (paste_back(image, half, aligned)[core] == [255, 0, 0]).all()

    # A mask limits the paste: the crop's right half stays the photo.
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[:, : size // 2] = 255
    halved = paste_back(image, red, aligned, mask, feather=0.05)
    right = _within(inside, [0.6 * size, 0.2 * size], [0.95 * size, 0.8 * size])
    left = _within(inside, [0.1 * size, 0.2 * size], [0.4 * size, 0.8 * size])
    assert np.array_equal(halved[right], image[right])
    assert (halved[left] == [255, 0, 0]).all()


def test_rejects_bad_inputs(portraits):
    image, kps = portraits[0]
    with pytest.raises(ValueError, match="RGB uint8"):
        align_face(image.astype(np.float32), kps)
    with pytest.raises(ValueError, match=r"\(5, 2\) keypoints"):
        align_face(image, kps[:4])
    with pytest.raises(ValueError, match="border"):
        align_face(image, kps, border="wrap")
    aligned = align_face(image, kps)
    with pytest.raises(ValueError, match="mask"):
        paste_back(image, aligned.image, aligned, mask=np.ones((10, 10)))


def _crop_coordinates(shape: tuple[int, ...], matrix: np.ndarray, size: int) -> np.ndarray:
    """For every image pixel, where it falls in the crop: ``(H, W, 2)``."""
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    points = np.column_stack([xs.ravel(), ys.ravel()]).astype(float)
    return transform_points(points, matrix).reshape(shape[0], shape[1], 2)


def _within(coordinates: np.ndarray, low, high) -> np.ndarray:
    return ((coordinates >= low) & (coordinates <= high)).all(axis=2)


def _published_alignment(shape, points, output_size, enable_padding=True):
    """``recreate_aligned_images`` (NVlabs/ffhq-dataset) re-derived from its published formulas:
    the final quad in photo pixels, through the shrink (PIL resize to rounded sizes), crop and
    pad steps, and whether it shrank and padded."""
    eye_left, eye_right, mouth_left, mouth_right = np.asarray(points, dtype=np.float64)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_left + mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    qsize = np.hypot(*x) * 2
    size = (shape[1], shape[0])
    resize = (1.0, 1.0)
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(float(size[0]) / shrink)), int(np.rint(float(size[1]) / shrink)))
        resize = (size[0] / rsize[0], size[1] / rsize[1])
        size = rsize
        quad /= shrink
        qsize /= shrink
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )
    crop = (
        max(crop[0] - border, 0),
        max(crop[1] - border, 0),
        min(crop[2] + border, size[0]),
        min(crop[3] + border, size[1]),
    )
    offset = np.zeros(2)
    if crop[2] - crop[0] < size[0] or crop[3] - crop[1] < size[1]:
        size = (crop[2] - crop[0], crop[3] - crop[1])
        quad -= crop[0:2]
        offset += crop[0:2]
    pad = (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )
    pad = (
        max(-pad[0] + border, 0),
        max(-pad[1] + border, 0),
        max(pad[2] - size[0] + border, 0),
        max(pad[3] - size[1] + border, 0),
    )
    padded = enable_padding and max(pad) > border - 4
    if padded:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        quad += pad[:2]
        offset -= pad[:2]
    # Back to photo pixels: undo pad and crop, then PIL's resize (pixel edges onto edges).
    quad = quad + offset
    quad = (quad + 0.5) * resize - 0.5
    return quad, shrink > 1, padded


@pytest.fixture(scope="module")
def meshes(faces_dir) -> list[np.ndarray]:
    with FaceMesher() as mesher:
        return [mesher.landmarks(_read_rgb(path)) for path in sorted(faces_dir.glob("*.jpg"))]


@pytest.mark.parametrize("source", ["kps", "mesh"])
def test_ffhq_quad_alignment_matches_the_published_recipe(portraits, meshes, source):
    size = 256
    cases = []
    for (image, kps), mesh in zip(portraits, meshes, strict=True):
        points = ffhq_points_from_kps(kps) if source == "kps" else ffhq_points_from_mesh(mesh)
        cases.append((image, points))
        # A 3x photo takes the shrink step; a tight cut around the face takes the padding.
        big = cv2.resize(image, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
        cases.append((big, (points + 0.5) * 3 - 0.5))
        x0, y0 = np.floor(points.min(axis=0)).astype(int) - 10
        cases.append((image[max(y0, 0) :, max(x0, 0) :], points - np.maximum([x0, y0], 0)))
    steps = set()
    for image, points in cases:
        aligned = align_ffhq_quad(image, points, size)
        quad, shrunk, padded = _published_alignment(image.shape, points, size)
        steps.add((shrunk, padded))
        corners = np.array([[0, 0], [0, size], [size, size], [size, 0]]) - 0.5
        np.testing.assert_allclose(transform_points(corners, aligned.inverse), quad, atol=0.5)
        assert aligned.image.shape == (size, size, 3)
    assert {shrunk for shrunk, _ in steps} == {True, False}
    assert {padded for _, padded in steps} == {True, False}


def test_ffhq_mesh_points_are_the_eye_contour_means_and_mouth_corners(portraits, meshes):
    for (_, kps), mesh in zip(portraits, meshes, strict=True):
        points = ffhq_points_from_mesh(mesh)
        # The mesh's eye centres and mouth corners sit near the detector's, on the same sides.
        eye_distance = np.hypot(*(kps[1] - kps[0]))
        assert np.abs(points - ffhq_points_from_kps(kps)).max() < 0.25 * eye_distance
    with pytest.raises(ValueError, match="face mesh"):
        ffhq_points_from_mesh(np.zeros((5, 2)))


def test_ffhq_padding_reflects_and_fades_beyond_the_photo(portraits):
    image, kps = portraits[0]
    points = ffhq_points_from_kps(kps)
    x0, y0 = np.floor(points.min(axis=0)).astype(int) - 10
    tight, points = image[y0:, x0:], points - [x0, y0]
    padded = align_ffhq_quad(tight, points, 64)
    black = align_ffhq_quad(tight, points, 64, padding=False)
    assert black.image[:4, :4].max() == 0
    assert padded.image[:4, :4].mean() > 10
    np.testing.assert_allclose(padded.matrix, black.matrix)
    with pytest.raises(ValueError, match="transform_size"):
        align_ffhq_quad(image, points, 256, transform_size=128)
    small = (points - points.mean(axis=0)) * 0.1 + points.mean(axis=0)
    with pytest.raises(ValueError, match="too small"):
        align_ffhq_quad(image, small, 256, min_quad_side=E4E_MIN_QUAD_SIDE)
    with pytest.raises(ValueError, match="coincide"):
        align_ffhq_quad(image, np.ones((4, 2)), 256)
