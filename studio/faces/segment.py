"""Person segmentation with mediapipe's selfie-segmentation model (bundled with mediapipe 0.10.21,
no download): a per-pixel probability of "person" (head, hair, body, clothes) against the
background. The mesh face parser uses it to find hair, ears, neck and clothes around the face.
"""

from __future__ import annotations

import numpy as np

from studio.faces.mesh import MediapipeGraph, _drop_kept_traceback, _native_stderr_silenced
from studio.faces.types import check_rgb

PERSON_THRESHOLD = 0.5
"""Probability above which a pixel counts as the person."""

_INSTALL_HINT = (
    "person segmentation needs the optional mediapipe extra (the `mesh` extra; `make install`, "
    "or `pip install --no-deps mediapipe==0.10.21` plus absl-py attrs flatbuffers matplotlib)"
)


class PersonSegmenter(MediapipeGraph):
    """One mediapipe SelfieSegmentation graph (the general 256x256 model). Not thread-safe; close
    it, or use it as a context manager, to free the graph."""

    def __init__(self) -> None:
        with _native_stderr_silenced():
            try:
                from mediapipe.python.solutions import selfie_segmentation
            except ImportError as err:
                raise ImportError(f"{_INSTALL_HINT} (import failed: {err})") from err
            _drop_kept_traceback()
            self._graph = selfie_segmentation.SelfieSegmentation(model_selection=0)

    def probability(self, image_rgb: np.ndarray) -> np.ndarray:
        """``(H, W)`` float32 probability, in 0..1, that each pixel belongs to a person."""
        if self._graph is None:
            raise RuntimeError("this PersonSegmenter is closed; build a new one")
        check_rgb(image_rgb)
        result = self._graph.process(np.ascontiguousarray(image_rgb))
        return np.clip(np.asarray(result.segmentation_mask, dtype=np.float32), 0.0, 1.0)
