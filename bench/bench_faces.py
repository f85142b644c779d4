"""Face pipeline speed: detect + align + SFace embed per photo, on one CPU core.

Prints, per photo at its native size, the median milliseconds of each stage and its share of
the total, and side by side the same work done by OpenCV's own YuNet + SFace wrappers at full
resolution (the reference a user could write in five lines), as a ratio. The ~720p row is a
fixture portrait placed on a 1280x720 canvas. Issue target: <= 30 ms median for a ~720p photo.

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

from studio.faces.align import align_face
from studio.faces.detect import YuNetDetector, yunet_model_path
from studio.faces.encoders import SFaceEncoder
from studio.images import load_image

FACES = Path(__file__).resolve().parents[1] / "tests" / "data" / "faces"
TARGET_MS = 30.0


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


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
        models = yunet_model_path().parent
        self.det = cv2.FaceDetectorYN.create(str(yunet_model_path()), "", (320, 320), 0.6)
        self.rec = cv2.FaceRecognizerSF.create(
            str(models / "face_recognition_sface_2021dec_int8bq.onnx"), ""
        )

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        self.det.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, faces = self.det.detect(bgr)
        return self.rec.feature(self.rec.alignCrop(bgr, faces[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    detector = YuNetDetector()
    encoder = SFaceEncoder(intra_op_threads=1)
    reference = OpenCVReference()

    print(f"{platform.processor() or platform.machine()}, 1 core, median of {args.repeats}")
    header = f"{'photo':<12} {'size':>9} {'detect':>8} {'align':>7} {'embed':>7} {'total':>7}"
    print(f"{header} {'opencv':>7} {'ours/opencv':>12}")
    totals = {}
    for name, rgb in photos().items():
        det = detector.detect(rgb)[0]
        crop = align_face(rgb, det.kps, 112).image
        t_det = median_ms(lambda rgb=rgb: detector.detect(rgb), args.repeats)
        t_align = median_ms(lambda rgb=rgb, k=det.kps: align_face(rgb, k, 112), args.repeats)
        t_embed = median_ms(lambda c=crop: encoder.encode(c), args.repeats)

        def ours(rgb=rgb):
            d = detector.detect(rgb)[0]
            encoder.encode(align_face(rgb, d.kps, 112).image)

        total = median_ms(ours, args.repeats)
        ref = median_ms(lambda rgb=rgb: reference(rgb), args.repeats)
        totals[name] = total
        stages = sum((t_det, t_align, t_embed))
        shares = "/".join(f"{100 * t / stages:.0f}%" for t in (t_det, t_align, t_embed))
        size = f"{rgb.shape[1]}x{rgb.shape[0]}"
        print(
            f"{name:<12} {size:>9} {t_det:>6.1f}ms {t_align:>5.1f}ms {t_embed:>5.1f}ms "
            f"{total:>5.1f}ms {ref:>5.1f}ms {total / ref:>11.2f}x   shares {shares}"
        )
    median_all = statistics.median(totals.values())
    print(f"median over photos: {median_all:.1f} ms")
    print(
        f"~720p photo: {totals['720p']:.1f} ms = {totals['720p'] / TARGET_MS:.2f}x "
        f"the {TARGET_MS:.0f} ms target"
    )


if __name__ == "__main__":
    main()
