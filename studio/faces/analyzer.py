"""The face-perception facade: ``FaceAnalyzer(...).analyze(image) -> list[Face]``.

It composes the stages (detect, mesh, pose, align, embed, judge); each stage is a small module
of its own. Models load once, in the constructor, never at import.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from studio.errors import StudioError
from studio.faces.align import HEAD_CROP_FACE_FRACTION, align_face
from studio.faces.detect import FaceDetector, YuNetDetector, create_detector
from studio.faces.encoders import EncoderUnavailableError, IdentityEncoder, create_encoder
from studio.faces.onnx_session import face_providers
from studio.faces.quality import ARCFACE_CROP, DEFAULT_THRESHOLDS, QualityThresholds, assess
from studio.faces.types import AlignedFace, Detection, Face

if TYPE_CHECKING:
    from studio.faces.mesh import FaceMesher
    from studio.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "sface"
# Catalog entries for the insightface models (buffalo_l, which IP-Adapter-FaceID was trained on).
ARCFACE_COMPONENT = ("sd15", "arcface")
SCRFD_COMPONENT = ("sd15", "face_detector")


class FaceAnalyzer:
    """Detect every face (largest first) and describe each one as a :class:`Face`."""

    def __init__(
        self,
        encoders: Iterable[IdentityEncoder | str] = (DEFAULT_ENCODER,),
        detector: FaceDetector | None = None,
        mesher: FaceMesher | str | None = "auto",
        thresholds: QualityThresholds = DEFAULT_THRESHOLDS,
    ):
        built = [create_encoder(e) if isinstance(e, str) else e for e in encoders]
        self.encoders: Mapping[str, IdentityEncoder] = MappingProxyType({e.name: e for e in built})
        self.detector = detector or YuNetDetector()
        self.mesher = _default_mesher() if mesher == "auto" else mesher
        self.thresholds = thresholds

    def analyze(self, image: np.ndarray) -> list[Face]:
        """Every face in an RGB ``uint8`` image, largest first, with embeddings and a verdict."""
        return [self.describe(image, det) for det in self.detector.detect(image)]

    def describe(self, image: np.ndarray, det: Detection) -> Face:
        """Mesh, pose, embeddings and quality for one detected face."""
        from studio.faces.mesh import head_pose

        mesh = self.mesher.landmarks(image, det.bbox) if self.mesher is not None else None
        pose = head_pose(mesh) if mesh is not None else None
        embeddings = {
            name: enc.encode(align_face(image, det.kps, enc.crop_size, template=enc.template).image)
            for name, enc in self.encoders.items()
        }
        crop112 = align_face(image, det.kps, ARCFACE_CROP).image
        return Face(
            bbox=det.bbox,
            score=det.score,
            kps=det.kps,
            mesh=mesh,
            pose=pose,
            embeddings=MappingProxyType(embeddings),
            quality=assess(det, crop112, mesh, pose, self.thresholds),
        )

    def crop(
        self,
        image: np.ndarray,
        face: Face,
        size: int = 512,
        face_fraction: float = HEAD_CROP_FACE_FRACTION,
    ) -> AlignedFace:
        """A head-and-shoulders crop centred on the face (previews, training data)."""
        from studio.faces.align import arcface_template

        template = arcface_template(112) * (size / 112)
        return align_face(
            image,
            face.kps,
            size,
            template=template,
            face_fraction=face_fraction,
            border="replicate",
            antialias=True,
        )


def _default_mesher() -> FaceMesher | None:
    if importlib.util.find_spec("mediapipe") is None:
        logger.info("mediapipe not installed: no face mesh, pose or eye checks")
        return None
    from studio.faces.mesh import FaceMesher

    return FaceMesher()


def analyzer_from_settings(
    settings: Settings,
    encoders: Iterable[str] = (DEFAULT_ENCODER,),
    detector: str = "auto",
) -> FaceAnalyzer:
    """An analyzer whose insightface models (ArcFace, SCRFD) come from the model catalog.

    ``detector="auto"`` uses SCRFD when its file is already local, else the bundled YuNet. The
    ONNX models run on the providers ``settings.faces_device`` (``auto``: ``settings.device``)
    asks for, where the installed onnxruntime has them.
    """
    from studio.models.catalog import load_catalog
    from studio.models.resolver import ModelResolver

    catalog = load_catalog()
    resolver = ModelResolver(settings)
    providers = face_providers(settings)
    built: list[IdentityEncoder] = []
    for name in encoders:
        if name == "arcface":
            set_name, comp = ARCFACE_COMPONENT
            path = resolver.resolve(catalog[set_name], comp)
            built.append(create_encoder(name, model_path=path, providers=providers))
        else:
            try:
                built.append(create_encoder(name, providers=providers))
            except (ValueError, EncoderUnavailableError) as exc:  # unknown, or not installed
                raise StudioError(f"--encoder {name}: {exc}") from exc
    set_name, comp = SCRFD_COMPONENT
    if detector == "auto":
        local = resolver.find_local(catalog[set_name], comp)
        det = create_detector("scrfd" if local else "yunet", local, providers=providers)
    elif detector == "scrfd":
        path = resolver.resolve(catalog[set_name], comp)
        det = create_detector("scrfd", path, providers=providers)
    else:
        det = create_detector(detector, providers=providers)
    return FaceAnalyzer(built, detector=det)
