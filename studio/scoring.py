"""Identity scoring: how much a generated image looks like a person, by a face recognizer.

Training validation and the studio's ranking both use it with a recognizer that does not
condition generation (SFace by default), so the score is not the model grading itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from studio.faces.analyzer import FaceAnalyzer
from studio.faces.encoders import IdentityEmbedding


@dataclass(frozen=True)
class IdentityScore:
    """``similarity``: the best cosine of any face in the image to the reference, 0.0 when no
    face is found; ``same_person``: at or above the encoder's documented threshold."""

    similarity: float
    faces: int
    same_person: bool


class IdentityScorer:
    """Scores RGB images against a reference embedding (e.g. a profile's mean)."""

    def __init__(self, analyzer: FaceAnalyzer, reference: IdentityEmbedding) -> None:
        if reference.encoder not in analyzer.encoders:
            raise ValueError(
                f"the analyzer has no {reference.encoder!r} encoder to score with; it has "
                f"{', '.join(analyzer.encoders)}"
            )
        self.analyzer = analyzer
        self.reference = reference
        self.threshold = analyzer.encoders[reference.encoder].threshold

    @property
    def encoder(self) -> str:
        return self.reference.encoder

    def score(self, image: np.ndarray | Image.Image) -> IdentityScore:
        """Score an RGB ``uint8`` array or a PIL image."""
        rgb = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else image
        faces = self.analyzer.analyze(rgb)
        if not faces:
            return IdentityScore(0.0, 0, False)
        best = max(
            self.reference.similarity(IdentityEmbedding(self.encoder, f.embeddings[self.encoder]))
            for f in faces
        )
        return IdentityScore(best, len(faces), best >= self.threshold)
