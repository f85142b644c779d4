"""The studio's face parser: BiSeNet when its file is present, else the mesh parser.

:func:`face_parser_for` picks it from the model catalog's optional ``face_parser`` component
(``79999_iter.pth``; the set's own, else the ``sd15`` set's) or a ``--weights face_parser=FILE``
override: a ``.onnx`` file runs under onnxruntime (:class:`~studio.faces.bisenet_onnx.
OnnxFaceParser`), a ``.pth`` in torch (:class:`BiSeNetFaceParser`). Nothing is downloaded here:
without the file the offline :class:`~studio.faces.mesh_parser.MeshFaceParser` answers.
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from adapters.bisenet import BiSeNet, load_bisenet
from studio.errors import ModelUnavailableError
from studio.faces.bisenet_io import INPUT_SIZE, bisenet_crop, bisenet_input, parsing_from_logits
from studio.faces.parsing import CLASSES, FaceParsing
from studio.faces.types import Face, check_rgb
from studio.models.catalog import ModelSet
from studio.models.resolver import find_optional
from studio.settings import Settings
from studio.stages import FaceParser

logger = logging.getLogger(__name__)

COMPONENT = "face_parser"


class BiSeNetFaceParser:
    """The 19-class BiSeNet parser in torch, from ``79999_iter.pth``; calls are serialised."""

    name = "bisenet"
    classes = frozenset(CLASSES)

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        self.path = Path(path)
        self.device = torch.device(device)
        self.model = load_bisenet(self.path, self.device)
        self._lock = threading.Lock()

    def parse(self, image: np.ndarray, face: Face) -> FaceParsing:
        """Parse ``face`` in the RGB ``image``."""
        check_rgb(image)
        crop = bisenet_crop(image, face)
        batch = torch.from_numpy(bisenet_input(crop)).to(self.device)
        with self._lock, torch.inference_mode():
            logits = self.model(batch)[0][0].float().cpu().numpy()
        return parsing_from_logits(logits, crop, image.shape, self.name)


def export_bisenet_onnx(model: BiSeNet, path: str | Path) -> Path:
    """Export ``model`` to ONNX as the published export does: input ``input`` ``[1, 3, 512,
    512]``, outputs ``output`` (the parsing), ``output16``, ``output32`` (TorchScript exporter,
    opset 17, no onnxscript needed)."""
    path = Path(path)
    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model.eval(),
            (dummy,),
            str(path),
            input_names=["input"],
            output_names=["output", "output16", "output32"],
            opset_version=17,
            dynamo=False,
        )
    return path


def face_parser_for(settings: Settings, model_set: ModelSet) -> FaceParser:
    """BiSeNet (torch for ``.pth``, onnxruntime for ``.onnx``) when the ``face_parser`` file is
    local, else the mesh parser. A present but broken file is an error naming it."""
    from studio.faces.mesh_parser import MeshFaceParser

    path = find_optional(settings, model_set, COMPONENT)
    if path is None:
        logger.info("no BiSeNet face parser file: parsing faces with the mesh polygons")
        return MeshFaceParser()
    if not path.is_file():
        raise ModelUnavailableError(
            f"--weights {COMPONENT}={path}: a folder, not a file; give the BiSeNet "
            "79999_iter.pth or its ONNX export, or drop the override to parse faces with the mesh"
        )
    if path.suffix.lower() == ".onnx":
        from studio.faces.bisenet_onnx import OnnxFaceParser
        from studio.faces.onnx_session import face_providers

        return OnnxFaceParser(path, face_providers(settings))
    device = settings.torch_device() if settings.faces_device == "auto" else settings.faces_device
    return BiSeNetFaceParser(path, device)
