"""Shared fixtures of the face swap tests: the six-face group photo and its analysed faces.

No photo of six people ships with the test data, so the group photo is the six credited test
portraits (tests/data/faces/CREDITS.md) tiled 3 x 2, each face a real photo's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from swap_helpers import GROUP, TILE

from studio.faces.analyzer import FaceAnalyzer
from studio.faces.types import Face


@pytest.fixture(scope="session")
def group_photo(tmp_path_factory, faces_dir) -> Path:
    """A 600 x 480 JPEG of the six test portraits."""
    canvas = Image.new("RGB", (3 * TILE[0], 2 * TILE[1]))
    for index, name in enumerate(GROUP):
        tile = ImageOps.fit(Image.open(faces_dir / f"{name}.jpg").convert("RGB"), TILE)
        canvas.paste(tile, ((index % 3) * TILE[0], (index // 3) * TILE[1]))
    path = tmp_path_factory.mktemp("group") / "group.jpg"
    canvas.save(path, quality=95)
    return path


@pytest.fixture(scope="session")
def group_rgb(group_photo) -> np.ndarray:
    return np.asarray(Image.open(group_photo).convert("RGB"))


@pytest.fixture(scope="session")
def group_faces(group_rgb) -> list[Face]:
    """The group photo's faces (largest first) with mesh and SFace embeddings."""
    return FaceAnalyzer(("sface",)).analyze(group_rgb)
