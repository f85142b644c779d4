"""Face swap speed per face: path A (inswapper, ONNX Runtime) and path B (identity inpainting).

Both paths run on the same six-face group photo (the six test portraits tiled 3 x 2) and are
printed side by side. Path A runs the inswapper given by ``--inswapper PATH`` (the real
``inswapper_128.onnx`` when you have it); else, with ``--proxy``, a random-weight graph of the
real network's size and shape (ReSwapper's published reproduction of inswapper_128: a 7x7 and
three 3x3 convolutions down to 1024 x 32 x 32, six style blocks of two 1024-channel 3x3
convolutions with AdaIN from the source latent, and the mirrored decoder; about 175 GMAC and
137 M weights, as the 554 MB file holds); else a graph of its exact signature whose own compute
is negligible, which times our part of the path (alignment at 128 px, face mask, LAB colour
match, feathered paste-back) without the network. Path B runs the
``--models`` set (default ``tiny``: random 64-px weights, so seconds per face of the mechanics,
not of a real model) with ``--steps`` denoising steps per face. Medians over ``--repeats``
runs after one warm-up; face analysis is done once, outside the timings.

    PYTHONPATH=. .venv/bin/python bench/bench_swap.py [--threads 1] [--repeats 3] [--steps 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "tests" / "data" / "faces"
GROUP = ("person_a_1", "person_b_1", "impostor_1", "person_b_2", "impostor_2", "person_a_2")


def group_photo() -> np.ndarray:
    canvas = Image.new("RGB", (600, 480))
    for index, name in enumerate(GROUP):
        tile = ImageOps.fit(Image.open(FACES / f"{name}.jpg").convert("RGB"), (200, 240))
        canvas.paste(tile, ((index % 3) * 200, (index // 3) * 240))
    return np.asarray(canvas)


def proxy_inswapper(path: Path) -> None:
    """Save a random-weight ONNX graph shaped like inswapper_128 (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights = [], []

    def conv(x: str, cin: int, cout: int, k: int, stride: int = 1) -> str:
        name = f"conv{len(weights)}"
        scale = np.sqrt(2.0 / (cin * k * k))
        kernel = (rng.standard_normal((cout, cin, k, k)) * scale).astype(np.float32)
        weights.append(numpy_helper.from_array(kernel, name))
        nodes.append(
            helper.make_node(
                "Conv", [x, name], [name + "_y"], pads=[k // 2] * 4, strides=[stride] * 2
            )
        )
        return name + "_y"

    def op(kind: str, inputs: list[str], **attrs) -> str:
        out = f"{kind.lower()}{len(nodes)}"
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def adain(x: str, channels: int) -> str:
        name = f"style{len(weights)}"
        style = (rng.standard_normal((512, channels)) * 0.01).astype(np.float32)
        weights.append(numpy_helper.from_array(style, name))
        ones = f"ones{channels}"
        if ones not in {w.name for w in weights}:
            weights.append(numpy_helper.from_array(np.ones(channels, np.float32), ones))
            weights.append(
                numpy_helper.from_array(np.zeros(channels, np.float32), f"zeros{channels}")
            )
        normed = op("InstanceNormalization", [x, ones, f"zeros{channels}"])
        gamma = op("Reshape", [op("MatMul", ["source", name]), "shape4"])
        return op("Add", [op("Mul", [normed, gamma]), normed])

    x = op("LeakyRelu", [conv("target", 3, 128, 7)], alpha=0.2)
    x = op("LeakyRelu", [conv(x, 128, 256, 3)], alpha=0.2)
    x = op("LeakyRelu", [conv(x, 256, 512, 3, 2)], alpha=0.2)
    x = op("LeakyRelu", [conv(x, 512, 1024, 3, 2)], alpha=0.2)
    for _ in range(6):
        y = op("Relu", [adain(conv(x, 1024, 1024, 3), 1024)])
        x = op("Add", [adain(conv(y, 1024, 1024, 3), 1024), x])
    x = op("Resize", [x, "", "up2"], mode="linear")
    x = op("LeakyRelu", [conv(x, 1024, 512, 3)], alpha=0.2)
    x = op("Resize", [x, "", "up2"], mode="linear")
    x = op("LeakyRelu", [conv(x, 512, 256, 3)], alpha=0.2)
    x = op("LeakyRelu", [conv(x, 256, 128, 3)], alpha=0.2)
    x = op("Tanh", [conv(x, 128, 3, 7)])
    nodes.append(helper.make_node("Clip", [x, "zero", "one"], ["output"]))
    weights += [
        numpy_helper.from_array(np.array([1, -1, 1, 1], np.int64), "shape4"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up2"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(rng.standard_normal((512, 512), np.float32), "emap"),
    ]
    image = [1, 3, 128, 128]
    graph = helper.make_graph(
        nodes,
        "inswapper_proxy",
        [helper.make_tensor_value_info("target", TensorProto.FLOAT, image),
         helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, image)],
        initializer=weights,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    times = []
    for round_ in range(repeats + 1):
        start = time.perf_counter()
        fn()
        if round_:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inswapper", type=Path, help="inswapper_128.onnx (default: synthetic)")
    parser.add_argument(
        "--proxy", action="store_true", help="path A on a random graph of inswapper's size"
    )
    parser.add_argument("--models", default="tiny", help="model set for path B")
    parser.add_argument("--steps", type=int, default=2, help="path B denoising steps per face")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from studio.faces.swapper import InSwapper
    from studio.orchestrator import Studio
    from studio.settings import load_settings
    from studio.swap.engine import diffusion_swap, swap_faces

    work = Path(tempfile.mkdtemp(prefix="bench-swap-"))
    os.environ.setdefault("STUDIO_MODELS_DIR", str(work / "models"))
    settings = load_settings(data_dir=work / "data", output_dir=work / "out")
    studio = Studio(settings, args.models)
    image = group_photo()
    faces = studio.analyze(image, studio.scoring_encoder())
    indices = list(range(len(faces)))

    model = args.inswapper
    if model is None and args.proxy:
        model = work / "inswapper_proxy.onnx"
        proxy_inswapper(model)
    elif model is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from synthetic_models import inswapper_like_model

        model = work / "inswapper_like.onnx"
        inswapper_like_model(model)
    swapper = InSwapper(model, intra_op_threads=args.threads)
    source = np.random.default_rng(0).normal(size=512).astype(np.float32)
    generator = torch.Generator().manual_seed(0)

    def path_a():
        swap_faces(
            image,
            faces,
            indices,
            inswapper=(swapper, source),
            diffusion=None,
            strength=1.0,
            generator=generator,
            parser=studio.face_parser,
        )

    with studio.library() as library:
        library.create("Ada", [FACES / "person_a_2.jpg"], consent=True)
    identity = studio.identity("Ada")
    studio.pipeline()
    swap = diffusion_swap(studio.host, studio.model_set, identity, args.steps)

    swap.pipe.set_progress_bar_config(disable=True)

    def path_b():
        swap_faces(
            image,
            faces,
            indices,
            inswapper=None,
            diffusion=swap,
            strength=0.85,
            generator=generator,
            parser=studio.face_parser,
        )

    a = timed(path_a, args.repeats) / len(faces)
    b = timed(path_b, args.repeats) / len(faces)
    where = f"{platform.processor() or platform.machine()}, {args.threads} thread(s)"
    kind = "real" if args.inswapper else "synthetic (signature only; network excluded)"
    if args.proxy and not args.inswapper:
        kind = "random weights, inswapper_128's size and shape"
    print(f"faces: {len(faces)} on a 600x480 group photo; {where}")
    print(f"path A inswapper ({kind}): {1000 * a:8.1f} ms/face")
    print(
        f"path B diffusion ({args.models}, {args.steps} steps, {swap.size} px): "
        f"{b:8.3f} s/face = {b / a:.3g} x path A"
    )


if __name__ == "__main__":
    main()
