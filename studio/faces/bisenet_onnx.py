"""BiSeNet face parsing from an ONNX export of ``79999_iter.pth``, under onnxruntime (torch-free).

The file must take ``[1, 3, 512, 512]`` (dynamic height/width accepted) and give ``[1, 19, 512,
512]`` logits as its first output, as zllrunning's model exported with ``torch.onnx.export``
(three outputs, the parsing first) or by :func:`studio.face_parsers.export_bisenet_onnx`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from studio.faces.bisenet_io import INPUT_SIZE, bisenet_crop, bisenet_input, parsing_from_logits
from studio.faces.onnx_session import CPU_ONLY, ModelFormatError, Provider, create_session
from studio.faces.parsing import CLASSES, FaceParsing
from studio.faces.types import Face, check_rgb

LABEL = "BiSeNet face parser"


class OnnxFaceParser:
    """The 19-class BiSeNet parser from an ONNX file; calls are serialised."""

    name = "bisenet-onnx"
    classes = frozenset(CLASSES)

    def __init__(self, path: str | Path, providers: Sequence[Provider] = CPU_ONLY) -> None:
        self.path = Path(path)
        self._session = create_session(self.path, label=LABEL, providers=providers, quiet=True)
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        want_in = (1, 3, INPUT_SIZE, INPUT_SIZE)
        want_out = (1, len(CLASSES), INPUT_SIZE, INPUT_SIZE)
        if len(inputs) != 1 or not _fits(inputs[0].shape, want_in):
            got = [tuple(i.shape) for i in inputs]
            raise ModelFormatError(
                f"{LABEL} model {self.path} takes {got}, not one {list(want_in)} image; use an "
                "ONNX export of 79999_iter.pth"
            )
        if not outputs or not _fits(outputs[0].shape, want_out):
            got = [tuple(o.shape) for o in outputs]
            raise ModelFormatError(
                f"{LABEL} model {self.path} gives {got}; its first output must be "
                f"{list(want_out)} logits (an ONNX export of 79999_iter.pth)"
            )
        self._input = inputs[0].name
        self._output = outputs[0].name
        self._lock = threading.Lock()

    def parse(self, image: np.ndarray, face: Face) -> FaceParsing:
        """Parse ``face`` in the RGB ``image``."""
        check_rgb(image)
        crop = bisenet_crop(image, face)
        with self._lock:
            (logits,) = self._session.run([self._output], {self._input: bisenet_input(crop)})
        return parsing_from_logits(logits, crop, image.shape, self.name)


def _fits(shape: Sequence, expected: tuple[int, ...]) -> bool:
    """Whether an ONNX shape (ints, or names/None for dynamic axes) admits ``expected``."""
    return len(shape) == len(expected) and all(
        not isinstance(d, int) or d == e for d, e in zip(shape, expected, strict=True)
    )
