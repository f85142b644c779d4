"""Turn a profile or photos into what the pipelines take: ``[num_refs, dim]`` identity embeds.

Pipelines never touch face libraries; these helpers do the face work and hand over tensors.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from studio.errors import StudioError
from studio.faces.analyzer import FaceAnalyzer
from studio.images import ImageLoadError, load_image
from studio.profiles.types import Profile


def profile_identity_embeds(profile: Profile, encoder: str) -> torch.Tensor:
    """The accepted photos' unit embeddings from ``encoder``, one row per photo."""
    if encoder not in {info.name for info in profile.encoders}:
        kept = ", ".join(info.name for info in profile.encoders)
        raise StudioError(
            f"profile {profile.name!r} has no {encoder} embeddings (it keeps: {kept}); "
            f"create it with `--encoder {encoder}` to use this model set"
        )
    rows = [photo.embeddings[encoder].vector for photo in profile.accepted]
    if not rows:
        raise StudioError(
            f"profile {profile.name!r} has no accepted photo; add photos of the person with "
            "`python -m studio profile add`"
        )
    return torch.from_numpy(np.stack(rows).astype(np.float32))


def photo_identity_embeds(
    analyzer: FaceAnalyzer, photos: Iterable[str | Path], encoder: str
) -> torch.Tensor:
    """The largest face's unit embedding from each photo, one row per photo."""
    rows = []
    for path in photos:
        try:
            image = load_image(path).rgb
        except ImageLoadError as exc:
            raise StudioError(str(exc)) from exc
        faces = analyzer.analyze(image)
        if not faces:
            raise StudioError(f"{path}: no face found; choose a photo where the face is clear")
        rows.append(faces[0].embeddings[encoder])
    if not rows:
        raise StudioError("no reference photo given; pass at least one photo of the person")
    return torch.from_numpy(np.stack(rows).astype(np.float32))
