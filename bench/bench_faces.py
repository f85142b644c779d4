"""Face pipeline speed: detect + align + SFace embed per photo, on one CPU core.

Prints, per photo at its native size, the median milliseconds of each stage and its share of
the total, and side by side, measured interleaved in the same run, two other ways of doing the
same work, as ratios: this pipeline as it was before it moved YuNet to onnxruntime and loaded
SFace through ``prepare_for_ort`` ("previous": YuNet on OpenCV's dnn module at <= 640 px, SFace's
graph as shipped), and OpenCV's own YuNet + SFace wrappers at full resolution (the reference a
user could write in five lines). The ~720p row is a fixture portrait placed on a 1280x720
canvas. Issue target: <= 30 ms median for a ~720p photo.

    .venv/bin/python bench/bench_faces.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

import cv2
import numpy as np
import onnxruntime as ort

from studio.faces.align import align_face
from studio.faces.detect import DETECT_MAX_SIDE, YuNetDetector, _shrink_to, yunet_model_path
from studio.faces.encoders import SFaceEncoder
from studio.images import load_image

FACES = Path(__file__).resolve().parents[1] / "tests" / "data" / "faces"
SFACE_FILE = yunet_model_path().parent / "face_recognition_sface_2021dec_int8bq.onnx"
TARGET_MS = 30.0


def interleaved_medians(fns: dict[str, object], repeats: int) -> dict[str, float]:
    """Median ms of each function, run round-robin (one warm-up round first)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def photos() -> dict[str, np.ndarray]:
    found = {p.stem: load_image(p).rgb for p in sorted(FACES.glob("*.jpg"))}
    portrait = found["person_b_1"]
    scale = 720 / portrait.shape[0]
    small = cv2.resize(portrait, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = np.full((720, 1280, 3), 200, np.uint8)
    x = (1280 - small.shape[1]) // 2
    canvas[:, x : x + small.shape[1]] = small
    found["720p"] = canvas
    return found


class OpenCVReference:
    """YuNet at full resolution + FaceRecognizerSF.alignCrop + feature, all in OpenCV."""

    def __init__(self):
        self.det = cv2.FaceDetectorYN.create(str(yunet_model_path()), "", (320, 320), 0.6)
        self.rec = cv2.FaceRecognizerSF.create(str(SFACE_FILE), "")

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        self.det.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, faces = self.det.detect(bgr)
        return self.rec.feature(self.rec.alignCrop(bgr, faces[0]))


class Previous:
    """The pipeline before: YuNet on OpenCV's dnn at <= 640 px, SFace's graph as shipped."""

    def __init__(self):
        self.det = cv2.FaceDetectorYN.create(str(yunet_model_path()), "", (320, 320), 0.6, 0.3)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        self.sface = ort.InferenceSession(str(SFACE_FILE), options)
        image, *stale = self.sface.get_inputs()
        self.image = image.name
        self.feed = {item.name: np.zeros(item.shape, np.float32) for item in stale}

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        small, (sx, sy) = _shrink_to(rgb, DETECT_MAX_SIDE)
        self.det.setInputSize((small.shape[1], small.shape[0]))
        _, faces = self.det.detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        kps = (faces[0, 4:14].reshape(5, 2) + 0.5) * (sx, sy) - 0.5
        crop = align_face(rgb, kps, 112).image
        blob = crop.transpose(2, 0, 1)[None].astype(np.float32)
        return self.sface.run(None, {self.image: blob, **self.feed})[0]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    detector = YuNetDetector(intra_op_threads=1)
    encoder = SFaceEncoder(intra_op_threads=1)
    previous = Previous()
    reference = OpenCVReference()

    print(f"{cpu_name()}, 1 core, median of {args.repeats}, interleaved")
    print(
        f"{'photo':<12} {'size':>9} {'detect':>8} {'align':>7} {'embed':>7} {'total':>7} "
        f"{'previous':>9} {'opencv':>8} {'ours/prev':>10} {'ours/opencv':>12}   "
        "shares detect/align/embed"
    )
    totals = {}
    for name, rgb in photos().items():
        det = detector.detect(rgb)[0]
        crop = align_face(rgb, det.kps, 112).image

        def ours(rgb=rgb):
            d = detector.detect(rgb)[0]
            return encoder.encode(align_face(rgb, d.kps, 112).image)

        t = interleaved_medians(
            {
                "detect": lambda rgb=rgb: detector.detect(rgb),
                "align": lambda rgb=rgb, k=det.kps: align_face(rgb, k, 112),
                "embed": lambda c=crop: encoder.encode(c),
                "total": ours,
                "previous": lambda rgb=rgb: previous(rgb),
                "opencv": lambda rgb=rgb: reference(rgb),
            },
            args.repeats,
        )
        totals[name] = t["total"]
        stages = t["detect"] + t["align"] + t["embed"]
        shares = "/".join(f"{100 * t[s] / stages:.0f}%" for s in ("detect", "align", "embed"))
        size = f"{rgb.shape[1]}x{rgb.shape[0]}"
        print(
            f"{name:<12} {size:>9} {t['detect']:>6.1f}ms {t['align']:>5.1f}ms "
            f"{t['embed']:>5.1f}ms {t['total']:>5.1f}ms {t['previous']:>7.1f}ms "
            f"{t['opencv']:>6.1f}ms {t['total'] / t['previous']:>9.2f}x "
            f"{t['total'] / t['opencv']:>11.2f}x   {shares}"
        )
    median_all = statistics.median(totals.values())
    print(f"median over photos: {median_all:.1f} ms")
    print(
        f"~720p photo: {totals['720p']:.1f} ms = {totals['720p'] / TARGET_MS:.2f}x "
        f"the {TARGET_MS:.0f} ms target"
    )


if __name__ == "__main__":
    main()
