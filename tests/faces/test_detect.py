"""Detection: YuNet on real portraits, SCRFD decoding on stub ONNX graphs with known outputs."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from studio.faces.detect import (
    DETECT_MAX_SIDE,
    FaceDetector,
    SCRFDDetector,
    YuNetDetector,
    create_detector,
    yunet_model_path,
)
from studio.faces.types import Detection

# det_10g.onnx (buffalo_l): input "input.1" [1, 3, ?, ?]; nine outputs, scores for strides
# 8/16/32, then boxes, then keypoints, with these names and shapes for a 640 x 640 input.
SCRFD_INPUT = "input.1"
SCRFD_OUTPUTS = ("448", "471", "494", "451", "474", "497", "454", "477", "500")
ANCHORS = {8: 12800, 16: 3200, 32: 800}
WIDTHS = (1, 4, 10)


def _read_rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _portraits(faces_dir) -> list[np.ndarray]:
    from skimage.data import astronaut

    return [_read_rgb(path) for path in sorted(faces_dir.glob("*.jpg"))] + [astronaut()]


@pytest.fixture(scope="module")
def yunet() -> YuNetDetector:
    return YuNetDetector()


def _assert_plausible_face(face: Detection) -> None:
    x, y, w, h = face.bbox
    assert face.kps.shape == (5, 2)
    assert ((face.kps >= [x, y]) & (face.kps <= [x + w, y + h])).all()
    right_eye, left_eye, nose, mouth_right, mouth_left = face.kps
    # Our order: the eye and mouth corner on the image's left come first.
    assert right_eye[0] < nose[0] < left_eye[0]
    assert mouth_right[0] < mouth_left[0]
    assert max(right_eye[1], left_eye[1]) < nose[1] < min(mouth_right[1], mouth_left[1])


def test_yunet_finds_the_one_face_in_every_portrait(yunet, faces_dir):
    portraits = _portraits(faces_dir)
    assert len(portraits) == 7
    for image in portraits:
        faces = yunet.detect(image)
        assert len(faces) == 1
        assert faces[0].score > 0.8
        _assert_plausible_face(faces[0])


def test_yunet_returns_every_face_largest_first(yunet, faces_dir):
    big = _read_rgb(faces_dir / "person_b_1.jpg")
    small = cv2.resize(_read_rgb(faces_dir / "impostor_1.jpg"), None, fx=0.4, fy=0.4)
    canvas = np.full((big.shape[0], big.shape[1] + small.shape[1] + 50, 3), 128, np.uint8)
    canvas[:, : big.shape[1]] = big
    top = (big.shape[0] - small.shape[0]) // 2
    canvas[top : top + small.shape[0], big.shape[1] + 50 :] = small

    faces = yunet.detect(canvas)
    assert len(faces) == 2
    assert faces[0].area > 2 * faces[1].area
    assert faces[0].bbox[0] + faces[0].bbox[2] < big.shape[1]
    assert faces[1].bbox[0] > big.shape[1] + 50
    for face in faces:
        _assert_plausible_face(face)


def test_yunet_reports_huge_photos_at_full_resolution(yunet, faces_dir):
    image = _read_rgb(faces_dir / "person_b_2.jpg")
    factor = 4000 / image.shape[0]
    huge = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
    faces = yunet.detect(huge)
    assert len(faces) == 1
    (face,) = faces
    width = face.bbox[2]

    # What YuNet sees: the photo at DETECT_MAX_SIDE, its answer scaled up to full size.
    side = DETECT_MAX_SIDE / 4000
    size = (round(huge.shape[1] * side), round(huge.shape[0] * side))
    (seen,) = yunet.detect(cv2.resize(huge, size, interpolation=cv2.INTER_AREA))
    up = np.array([huge.shape[1] / size[0], huge.shape[0] / size[1]])
    np.testing.assert_allclose(face.kps, (seen.kps + 0.5) * up - 0.5, atol=0.01)
    np.testing.assert_allclose(face.bbox[2:], np.array(seen.bbox[2:]) * up, rtol=1e-5)

    # And the face is where it is in the original photo (YuNet's points move a little
    # with the scale it runs at).
    (reference,) = yunet.detect(image)
    np.testing.assert_allclose(face.bbox, np.array(reference.bbox) * factor, atol=0.05 * width)
    np.testing.assert_allclose(face.kps, reference.kps * factor, atol=0.08 * width)


def test_yunet_finds_nothing_in_a_blank_image(yunet):
    assert yunet.detect(np.zeros((480, 640, 3), np.uint8)) == []
    assert yunet.detect(np.full((3000, 5000, 3), 200, np.uint8)) == []


def test_detectors_reject_non_rgb_input(yunet, tmp_path):
    with pytest.raises(ValueError, match="RGB uint8"):
        yunet.detect(np.zeros((100, 100), np.uint8))
    with pytest.raises(ValueError, match="RGB uint8"):
        yunet.detect(np.zeros((100, 100, 3), np.float32))
    scrfd = SCRFDDetector(_write_scrfd(tmp_path, _constant_outputs({})))
    with pytest.raises(ValueError, match="RGB uint8"):
        scrfd.detect(np.zeros((0, 100, 3), np.uint8))


def test_factory_and_protocol(yunet, tmp_path):
    assert yunet_model_path().is_file()
    assert isinstance(yunet, FaceDetector)
    assert isinstance(create_detector("yunet"), YuNetDetector)
    stub = _write_scrfd(tmp_path, _constant_outputs({}))
    scrfd = create_detector("scrfd", stub)
    assert isinstance(scrfd, SCRFDDetector) and isinstance(scrfd, FaceDetector)
    with pytest.raises(ValueError, match="model_path"):
        create_detector("scrfd")
    with pytest.raises(ValueError, match="unknown face detector"):
        create_detector("retinaface")


def test_scrfd_missing_file_says_where_to_get_it(tmp_path):
    missing = tmp_path / "models" / "det_10g.onnx"
    with pytest.raises(FileNotFoundError, match="buffalo_l") as error:
        SCRFDDetector(missing)
    assert str(missing) in str(error.value)


def test_scrfd_rejects_models_without_keypoints(tmp_path):
    outputs = _constant_outputs({})
    path = _write_scrfd(tmp_path, outputs[:6], names=SCRFD_OUTPUTS[:6])
    with pytest.raises(ValueError, match="has 6 outputs"):
        SCRFDDetector(path)


@pytest.mark.parametrize("batched", [False, True])
def test_scrfd_decodes_anchors_through_the_letterbox(tmp_path, batched):
    # Face A: stride 16, cell row 10 col 12, second anchor -> centre (192, 160).
    a_kps = np.array([[-1.0, -0.5], [1.0, -0.5], [0.0, 0.5], [-0.8, 1.5], [0.8, 1.5]])
    face_a = (16, (10 * 40 + 12) * 2 + 1, 0.9, [2.0, 3.0, 2.5, 3.5], a_kps)
    # The same box from stride 8 with a lower score: suppressed by NMS.
    duplicate = (8, (20 * 80 + 24) * 2, 0.7, [4.0, 6.0, 5.0, 7.0], np.zeros((5, 2)))
    # Face B: stride 32, cell row 3 col 15, first anchor -> centre (480, 96); smaller, surer.
    face_b = (32, (3 * 20 + 15) * 2, 0.95, [1.0, 1.0, 1.0, 1.0], np.full((5, 2), 0.25))
    # Below the score threshold: dropped.
    faint = (8, 5000, 0.3, [3.0, 3.0, 3.0, 3.0], np.zeros((5, 2)))
    outputs = _constant_outputs({"a": face_a, "dup": duplicate, "b": face_b, "faint": faint})
    detector = SCRFDDetector(_write_scrfd(tmp_path, outputs, batched=batched))

    # 1000 x 499 letterboxes to 640 x 319 (padded below): x scale 0.64, y scale 319 / 499.
    faces = detector.detect(np.zeros((499, 1000, 3), np.uint8))
    assert len(faces) == 2
    first, second = faces
    scale = np.array([640 / 1000, 319 / 499])
    # A: centre (192, 160) minus/plus distances x 16 -> (160, 112)-(232, 216) in the input.
    np.testing.assert_allclose(first.bbox, [160, 112, 72, 104] / np.tile(scale, 2), rtol=1e-5)
    np.testing.assert_allclose(first.kps, ([192, 160] + a_kps * 16) / scale, rtol=1e-5)
    assert first.score == pytest.approx(0.9)
    np.testing.assert_allclose(second.bbox, [448, 64, 64, 64] / np.tile(scale, 2), rtol=1e-5)
    np.testing.assert_allclose(second.kps, np.tile([488, 104], (5, 1)) / scale, rtol=1e-5)
    assert second.score == pytest.approx(0.95)


def test_scrfd_feeds_normalised_rgb_letterboxed_top_left(tmp_path):
    # Stride-32 scores are the network input's first channel sampled at the anchor centres,
    # so a face is reported exactly where (and only where) that channel is bright.
    outputs = _constant_outputs({})
    outputs[5][:] = 1.0  # every stride-32 box reaches one stride from its anchor
    path = _write_scrfd(tmp_path, outputs, score_32_from_input=True)
    detector = SCRFDDetector(path, score_threshold=0.5)

    image = np.zeros((200, 100, 3), np.uint8)  # letterboxes to 320 x 640, scale 3.2
    image[45:55, 25:35] = [255, 0, 0]  # red around input pixel (96, 160): cell row 5, col 3
    image[95:105, 5:15] = [0, 0, 255]  # blue around input pixel (32, 320): cell row 10, col 1
    faces = detector.detect(image)

    assert len(faces) == 1
    (face,) = faces
    assert face.score == pytest.approx((255 - 127.5) / 128)
    # Centre (96, 160) +- one stride in the input is (20, 40, 20, 20) in the photo.
    np.testing.assert_allclose(face.bbox, [20, 40, 20, 20], rtol=1e-6)
    np.testing.assert_allclose(face.kps, np.tile([30, 50], (5, 1)), rtol=1e-6)


def _constant_outputs(faces: dict) -> list[np.ndarray]:
    """The nine output tensors: zero scores except the given anchors.

    Each face is ``(stride, anchor index, score, box distances, keypoint offsets)`` with
    distances and offsets in stride units, as SCRFD predicts them.
    """
    scores = {s: np.zeros((n, 1), np.float32) for s, n in ANCHORS.items()}
    boxes = {s: np.zeros((n, 4), np.float32) for s, n in ANCHORS.items()}
    kps = {s: np.zeros((n, 10), np.float32) for s, n in ANCHORS.items()}
    for stride, anchor, score, distances, offsets in faces.values():
        scores[stride][anchor] = score
        boxes[stride][anchor] = distances
        kps[stride][anchor] = np.ravel(offsets)
    return [part[s] for part in (scores, boxes, kps) for s in ANCHORS]


def _write_scrfd(
    tmp_path,
    outputs: list[np.ndarray],
    *,
    names: tuple[str, ...] = SCRFD_OUTPUTS,
    batched: bool = False,
    score_32_from_input: bool = False,
):
    """Save an ONNX graph with SCRFD's input and outputs that returns ``outputs``."""
    nodes, values = [], []
    for name, array in zip(names, outputs, strict=True):
        array = array[None] if batched else array
        if score_32_from_input and name == "494":
            nodes += _sample_first_channel(name, stride=32, batched=batched)
        else:
            tensor = numpy_helper.from_array(array, name=f"{name}_value")
            nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        values.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(array.shape)))
    image = helper.make_tensor_value_info(SCRFD_INPUT, TensorProto.FLOAT, [1, 3, "?", "?"])
    graph = helper.make_graph(nodes, "scrfd_stub", [image], values)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / "det_stub.onnx"
    onnx.save(model, str(path))
    return path


def _sample_first_channel(name: str, *, stride: int, batched: bool) -> list[onnx.NodeProto]:
    """Nodes computing ``input[0, 0, ::stride, ::stride]``, one value per anchor (two a cell)."""

    def const(label, values):
        tensor = numpy_helper.from_array(np.array(values, np.int64), name=f"{label}_value")
        return helper.make_node("Constant", [], [label], value=tensor)

    big = np.iinfo(np.int64).max
    shape = [1, -1, 1] if batched else [-1, 1]
    return [
        const("starts", [0, 0, 0, 0]),
        const("ends", [1, 1, big, big]),
        const("steps", [1, 1, stride, stride]),
        const("column", [-1, 1]),
        const("final", shape),
        helper.make_node("Slice", [SCRFD_INPUT, "starts", "ends", "", "steps"], ["grid"]),
        helper.make_node("Reshape", ["grid", "column"], ["cells"]),
        helper.make_node("Concat", ["cells", "cells"], ["pairs"], axis=1),
        helper.make_node("Reshape", ["pairs", "final"], [name]),
    ]
