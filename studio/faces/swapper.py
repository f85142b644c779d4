"""insightface's inswapper (``inswapper_128.onnx``) on ONNX Runtime, torch-free.

The model swaps one face at 128 px, as insightface's ``model_zoo/inswapper.py`` runs it:

* ``target``: ``[1, 3, 128, 128]`` RGB in ``0..1``, the face aligned on the ArcFace template at
  128 px (:func:`~studio.faces.align.arcface_template`, insightface's ``norm_crop2``);
* ``source``: ``[1, 512]``, the source person's unit ArcFace embedding times the graph's last
  initializer ``emap`` (``[512, 512]``), L2-normalised again;
* output: ``[1, 3, 128, 128]`` RGB in ``0..1``.

The weights are insightface's, for non-commercial research only; they are never bundled or
downloaded by the studio unasked (catalog component ``inswapper``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from studio.faces.onnx_rewrite import last_initializer
from studio.faces.onnx_session import CPU_ONLY, ModelFormatError, Provider, create_session
from studio.faces.types import check_rgb

INSWAPPER_SIZE = 128
"""Side of the aligned face crop the model takes and returns."""
LATENT_DIM = 512
"""ArcFace embedding and swapper latent size."""
SOURCE_HINT = (
    "inswapper_128.onnx is insightface's (non-commercial research use only); place it in the "
    "models folder or pass --weights inswapper=PATH"
)


class SwapperUnavailableError(ModelFormatError):
    """The inswapper file is missing."""


class InSwapper:
    """``inswapper_128.onnx``: :meth:`swap` one aligned 128-px face to another identity."""

    name = "inswapper"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        providers: Sequence[Provider] = CPU_ONLY,
        intra_op_threads: int | None = None,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise SwapperUnavailableError(f"inswapper model not found at {path}: {SOURCE_HINT}")
        try:
            emap = last_initializer(path.read_bytes())
        except (ValueError, IndexError) as error:
            raise ModelFormatError(
                f"inswapper model {path} is not an ONNX file with an emap; {SOURCE_HINT}"
            ) from error
        if emap.shape != (LATENT_DIM, LATENT_DIM):
            raise ModelFormatError(
                f"inswapper model {path}: its last initializer (emap) is {list(emap.shape)}, "
                f"expected [{LATENT_DIM}, {LATENT_DIM}]; {SOURCE_HINT}"
            )
        self.emap = emap
        self._session = create_session(
            path,
            label=self.name,
            providers=providers,
            intra_op_threads=intra_op_threads,
            quiet=True,
        )
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        image_shape = [1, 3, INSWAPPER_SIZE, INSWAPPER_SIZE]
        found = [(item.name, item.shape) for item in inputs]
        if (
            len(inputs) != 2
            or list(inputs[0].shape) != image_shape
            or list(inputs[1].shape) != [1, LATENT_DIM]
            or len(outputs) != 1
            or list(outputs[0].shape) != image_shape
        ):
            raise ModelFormatError(
                f"inswapper model {path}: expected inputs target {image_shape} and source "
                f"[1, {LATENT_DIM}] and one output {image_shape}, found inputs {found} and "
                f"outputs {[(item.name, item.shape) for item in outputs]}; {SOURCE_HINT}"
            )
        self._target, self._source = inputs[0].name, inputs[1].name
        self._output = outputs[0].name

    def latent(self, embedding: np.ndarray) -> np.ndarray:
        """The ``[1, 512]`` source input: the unit embedding times ``emap``, L2-normalised."""
        vector = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        if vector.shape[1] != LATENT_DIM or not np.isfinite(vector).all():
            raise ValueError(
                f"the inswapper takes a finite {LATENT_DIM}-d ArcFace embedding, got "
                f"{vector.shape[1]} values"
            )
        vector = vector / np.linalg.norm(vector)
        latent = vector @ self.emap
        return (latent / np.linalg.norm(latent)).astype(np.float32)

    def swap(self, aligned_rgb: np.ndarray, embedding: np.ndarray) -> np.ndarray:
        """The 128-px RGB ``uint8`` face of ``aligned_rgb`` with the identity of ``embedding``."""
        check_rgb(aligned_rgb)
        if aligned_rgb.shape[:2] != (INSWAPPER_SIZE, INSWAPPER_SIZE):
            raise ValueError(
                f"the inswapper takes a {INSWAPPER_SIZE}-px aligned crop, got "
                f"{aligned_rgb.shape[1]}x{aligned_rgb.shape[0]}"
            )
        blob = aligned_rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        feed = {self._target: blob, self._source: self.latent(embedding)}
        out = self._session.run([self._output], feed)[0][0].transpose(1, 2, 0)
        return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
