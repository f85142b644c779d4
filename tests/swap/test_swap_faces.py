"""Face swap geometry and models, torch-free: alignment round trip, feathered paste-back, LAB
colour matching, the inswapper's signature and maths, face choice and masks on a real group."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from swap_helpers import tile_of
from synthetic_models import inswapper_like_model

from studio.errors import StudioError
from studio.faces.align import align_face, transform_points
from studio.faces.analyzer import FaceAnalyzer
from studio.faces.blend import match_color, paste_face
from studio.faces.encoders import IdentityEmbedding, create_encoder
from studio.faces.masks import mask_in_crop
from studio.faces.mesh_parser import MeshFaceParser
from studio.faces.onnx_rewrite import last_initializer
from studio.faces.onnx_session import ModelFormatError
from studio.faces.swapper import INSWAPPER_SIZE, InSwapper, SwapperUnavailableError
from studio.images import load_image
from studio.swap.diffuse import crop_for_diffusion, shrink_to_photo
from studio.swap.face_mask import check_covers, face_mask
from studio.swap.inswap import inswap_face
from studio.swap.targets import FaceChoice, choose_faces


@pytest.fixture(scope="module")
def parser() -> MeshFaceParser:
    return MeshFaceParser()


@pytest.fixture(scope="module")
def inswapper_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inswapper") / "inswapper_128.onnx"
    weight, emap = inswapper_like_model(path)
    return path, weight, emap


def test_alignment_round_trip_is_under_a_pixel(group_faces):
    for face in group_faces:
        aligned = align_face(np.zeros((480, 600, 3), np.uint8), face.kps, INSWAPPER_SIZE)
        in_crop = transform_points(face.kps, aligned.matrix)
        back = transform_points(in_crop, aligned.inverse)
        assert np.abs(back - face.kps).max() < 1.0
        # and the keypoints land on the ArcFace template at 128 px (insightface's norm_crop2)
        assert np.abs(in_crop - np.array([[46.3, 51.7], [81.5, 51.5], [64.0, 71.7],
                                          [49.5, 92.4], [78.7, 92.2]])).max() < 6  # fmt: skip


def test_paste_back_leaves_pixels_outside_the_mask_unchanged(group_rgb, group_faces, parser):
    face = group_faces[0]
    aligned = align_face(group_rgb, face.kps, INSWAPPER_SIZE)
    mask = face_mask(group_rgb, face, aligned, parser)
    crop = np.full_like(aligned.image, (0, 255, 0))
    result, weight = paste_face(group_rgb, crop, aligned, mask, feather=0.1)
    outside = weight == 0
    assert outside.mean() > 0.9 and (~outside).sum() > 1000
    assert np.array_equal(result[outside], group_rgb[outside])
    # fully pasted pixels are the crop's, and the edge is feathered in between
    assert (np.abs(result[weight == 255].astype(int) - (0, 255, 0)) <= 1).all()
    assert ((weight > 0) & (weight < 255)).sum() > 100


def test_colour_match_moves_the_mean_toward_the_reference(group_rgb, group_faces, parser):
    aligned = align_face(group_rgb, group_faces[0].kps, INSWAPPER_SIZE)
    mask = face_mask(group_rgb, group_faces[0], aligned, parser)
    reference = aligned.image
    bluish = np.clip(reference.astype(int) * [0.6, 0.7, 1.0] + [0, 0, 60], 0, 255).astype(np.uint8)
    matched = match_color(bluish, reference, mask)
    inside = mask >= 0.5
    before = np.abs(bluish[inside].mean(0) - reference[inside].mean(0)).sum()
    after = np.abs(matched[inside].mean(0) - reference[inside].mean(0)).sum()
    assert after < before / 4


def test_inswapper_reads_emap_and_runs_insightface_maths(inswapper_file):
    path, weight, emap = inswapper_file
    assert np.array_equal(last_initializer(path.read_bytes()), emap)
    swapper = InSwapper(path)
    rng = np.random.default_rng(3)
    crop = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    embedding = rng.normal(size=512).astype(np.float32)

    unit = embedding / np.linalg.norm(embedding)
    latent = unit @ emap
    latent /= np.linalg.norm(latent)
    assert np.allclose(swapper.latent(embedding), latent[None], atol=1e-6)
    expected = np.clip(0.5 * crop / 255.0 + latent @ weight, 0, 1)
    assert np.abs(swapper.swap(crop, embedding).astype(int) - np.rint(expected * 255)).max() <= 1
    other = swapper.swap(crop, rng.normal(size=512))
    assert not np.array_equal(other, swapper.swap(crop, embedding))  # the source matters


def test_inswapper_refuses_missing_and_misshapen_files(tmp_path):
    with pytest.raises(SwapperUnavailableError, match="non-commercial research"):
        InSwapper(tmp_path / "inswapper_128.onnx")
    wrong = tmp_path / "wrong.onnx"
    inswapper_like_model(wrong, emap_shape=(512, 256))
    with pytest.raises(ModelFormatError, match=r"emap\) is \[512, 256\]"):
        InSwapper(wrong)
    small = tmp_path / "small.onnx"
    inswapper_like_model(small, size=64)
    with pytest.raises(ModelFormatError, match=r"expected inputs target \[1, 3, 128, 128\]"):
        InSwapper(small)


def test_path_a_swaps_inside_the_face_mask_only(inswapper_file, group_rgb, group_faces, parser):
    swapper = InSwapper(inswapper_file[0])
    embedding = np.random.default_rng(0).normal(size=512)
    edit = inswap_face(group_rgb, group_faces[2], swapper, embedding, parser=parser, label="face 2")
    changed = np.any(edit.image != group_rgb, axis=2)
    assert changed.sum() > 500
    assert not changed[edit.weight == 0].any()
    x, y, w, h = group_faces[2].bbox  # the change stays on that face
    ys, xs = np.nonzero(changed)
    assert x - w / 2 < xs.min() and xs.max() < x + 1.5 * w
    assert y - h / 2 < ys.min() and ys.max() < y + 1.5 * h


def test_face_choice_parses_the_three_forms():
    assert FaceChoice.parse("2") == FaceChoice(index=2)
    assert FaceChoice.parse(" ALL ").every
    assert str(FaceChoice.parse("match:me.jpg")) == "match:me.jpg"
    for bad, message in (
        ("two", "use a face number"),
        ("-1", "start at 0"),
        ("match:", "needs a photo"),
    ):
        with pytest.raises(StudioError, match=message):
            FaceChoice.parse(bad)


def test_group_photo_all_index_and_match(group_faces, faces_dir):
    assert len(group_faces) == 6
    assert all(face.mesh is not None for face in group_faces)
    assert choose_faces(group_faces, FaceChoice(every=True, index=None), target="g") == list(
        range(6)
    )
    assert choose_faces(group_faces, FaceChoice(index=5), target="g") == [5]
    with pytest.raises(StudioError, match=r"--face 6: target photo g has 6 faces \(numbers 0 to 5"):
        choose_faces(group_faces, FaceChoice(index=6), target="g")
    with pytest.raises(StudioError, match="target photo g: no face found"):
        choose_faces([], FaceChoice(), target="g")

    photo = FaceAnalyzer((create_encoder("sface"),), mesher=None)
    reference = photo.analyze(load_image(faces_dir / "person_b_2.jpg").rgb)[0]
    embedding = IdentityEmbedding("sface", reference.embeddings["sface"])
    choice = FaceChoice(index=None, match=faces_dir / "person_b_2.jpg")
    [best] = choose_faces(group_faces, choice, target="g", reference=embedding, threshold=0.363)
    assert tile_of(group_faces[best]) in ("person_b_1", "person_b_2")
    with pytest.raises(StudioError, match="no face in target photo g looks like person_b_2.jpg"):
        choose_faces(group_faces, choice, target="g", reference=embedding, threshold=0.99)


def test_a_mask_that_covers_nothing_is_refused(group_rgb, group_faces, parser, inswapper_file):
    face = group_faces[0]
    centre = face.mesh[1]  # a face oval of a few pixels: nothing to replace
    tiny = replace(face, mesh=centre + (face.mesh - centre) * 0.03)
    swapper = InSwapper(inswapper_file[0])
    with pytest.raises(StudioError, match="found none of skin.* on the face at"):
        inswap_face(group_rgb, tiny, swapper, np.ones(512), parser=parser, label="face 0")
    aligned = align_face(group_rgb, face.kps, INSWAPPER_SIZE)
    elsewhere = face_mask(group_rgb, group_faces[1], aligned, parser)  # another face's mask
    with pytest.raises(StudioError, match="face mask of face 0 covers nothing"):
        check_covers(elsewhere, "face 0")


def test_the_mask_keeps_hair_and_background_of_the_target(group_rgb, group_faces, parser):
    face = group_faces[0]
    aligned = align_face(group_rgb, face.kps, INSWAPPER_SIZE)
    mask = face_mask(group_rgb, face, aligned, parser)
    assert mask.dtype == np.float32 and mask.min() >= 0 and mask.max() <= 1
    assert mask[60:80, 50:78].min() > 0.9  # cheeks and nose are replaced
    parsing = parser.parse(group_rgb, face)
    for kept in ("hair", "background"):  # hair and background are the target's
        where = mask_in_crop(parsing.mask(kept).astype(np.float32), aligned) > 0.99
        assert where.sum() > 50 and mask[where].max() < 0.05


def test_a_large_crop_is_area_averaged_to_the_face_size_before_pasting(group_rgb, group_faces):
    aligned = crop_for_diffusion(group_rgb, group_faces[0], 512)
    crop, mask = aligned.image, np.ones((512, 512), np.float32)
    small, small_mask = shrink_to_photo(crop, mask, aligned)
    scale = np.sqrt(abs(np.linalg.det(aligned.matrix[:, :2])))
    assert scale > 2 and small.shape[0] == round(512 / scale) == small_mask.shape[0]
    tiny = crop_for_diffusion(group_rgb, group_faces[0], 16)  # smaller than the face: kept
    assert shrink_to_photo(tiny.image, mask[:16, :16], tiny)[0] is tiny.image
