"""One way to open an ONNX Runtime session for the face models, on the providers the settings ask.

``device`` follows the studio's ``--device`` / ``STUDIO_DEVICE`` values; ``STUDIO_FACES_DEVICE``
(setting ``faces_device``) overrides it for the face models alone, e.g. ``cpu`` to keep them off
the GPU. ``auto`` uses CUDA, then CoreML, when the installed onnxruntime offers them; the CPU
provider always comes last, as the fallback for operators a GPU provider lacks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.errors import StudioError
from studio.faces.onnx_rewrite import prepare_for_ort

if TYPE_CHECKING:
    import onnxruntime

    from studio.settings import Settings

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
COREML = "CoreMLExecutionProvider"
CPU_ONLY: tuple[str, ...] = (CPU,)
_ACCELERATED = {"cuda": (CUDA,), "mps": (COREML,), "auto": (CUDA, COREML)}

Provider = str | tuple[str, dict[str, Any]]
"""A provider name, or ``(name, options)`` as ONNX Runtime takes it."""


class ModelFormatError(StudioError, ValueError):
    """A model file does not load, or lacks the inputs or outputs the face model needs (also a
    ``ValueError``, as a bad value passed in)."""


def select_providers(available: Sequence[str], device: str = "auto") -> list[Provider]:
    """The providers to run on for ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``),
    given ONNX Runtime's ``get_available_providers()``: the accelerated ones present, then CPU."""
    kind, _, index = device.partition(":")
    chosen: list[Provider] = []
    for name in _ACCELERATED.get(kind, ()):
        if name in available:
            chosen.append((name, {"device_id": int(index)}) if name == CUDA and index else name)
    return [*chosen, CPU]


def available_providers(device: str = "auto") -> list[Provider]:
    """:func:`select_providers` for the onnxruntime installed here."""
    import onnxruntime

    return select_providers(onnxruntime.get_available_providers(), device)


def face_providers(settings: Settings) -> list[Provider]:
    """The providers ``settings`` ask for: ``faces_device``, or ``device`` when that is ``auto``."""
    device = settings.device if settings.faces_device == "auto" else settings.faces_device
    return available_providers(device)


def create_session(
    path: Path,
    *,
    label: str,
    providers: Sequence[Provider] = CPU_ONLY,
    intra_op_threads: int | None = None,
    quiet: bool = False,
    float_qdq: bool = False,
    prepare: bool = False,
    free_io_shapes: bool = False,
) -> onnxruntime.InferenceSession:
    """An inference session on ``path``; a file ONNX Runtime cannot load is a
    :class:`ModelFormatError` naming it.

    ``prepare`` loads the graph through :func:`~studio.faces.onnx_rewrite.prepare_for_ort`
    (constant weights, no PRelu kernels; ``free_io_shapes`` also frees a fixed input size).
    ``float_qdq`` runs quantized (QDQ) weights as float convolutions: ORT folds the constant
    DequantizeLinear nodes instead of fusing int8 kernels, 1.6x (SFace) to 2.7x (YuNet) faster
    on an AVX-512 EPYC core for the same output. ``quiet`` limits ORT's log to errors.
    """
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    options = ort.SessionOptions()
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    if quiet:
        options.log_severity_level = 3  # errors only
    if float_qdq:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    model: str | bytes = str(path)
    if prepare:
        try:
            model = prepare_for_ort(path.read_bytes(), free_io_shapes=free_io_shapes)
        except (ValueError, IndexError) as error:  # UnicodeDecodeError is a ValueError
            raise ModelFormatError(
                f"{label} model {path} is not an ONNX file; download it again"
            ) from error
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=list(providers))
    except (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.Fail) as error:
        raise ModelFormatError(
            f"{label} model {path} cannot be loaded by onnxruntime ({error}); use the file the "
            "model catalog names"
        ) from error
    logger.debug("%s runs on %s", label, ", ".join(session.get_providers()))
    return session
