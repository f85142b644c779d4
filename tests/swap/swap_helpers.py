"""Helpers of the face swap tests."""

from __future__ import annotations

from studio.faces.types import Face

GROUP = ("person_a_1", "person_b_1", "impostor_1", "person_b_2", "impostor_2", "person_a_2")
"""The group photo's people, row by row (person_a_1 top left)."""
TILE = (200, 240)


def tile_of(face: Face) -> str:
    """The name of the portrait whose tile holds ``face``."""
    x, y, w, h = face.bbox
    column, row = int((x + w / 2) // TILE[0]), int((y + h / 2) // TILE[1])
    return GROUP[row * 3 + column]
