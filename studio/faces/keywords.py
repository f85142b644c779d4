"""Attribute words of a prompt mapped to face-parsing classes, and their masks.

:data:`KEYWORD_CLASSES` is the documented table (data, one place): each attribute a prompt may
name (``hair``, ``glasses``, ``earrings`` ...) and the :data:`~studio.faces.parsing.CLASSES` that
show it. :data:`SYNONYMS` maps other words to those attributes (``spectacles`` -> ``glasses``).
:func:`attribute_mask` answers "where is it" on a parsed face, or ``None`` when the parser cannot
see any of the attribute's classes (could not check), which is not an empty mask (checked,
absent).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from studio.faces.parsing import FaceParsing, ParsingError, check_classes

KEYWORD_CLASSES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "hair": ("hair",),
        "glasses": ("eye_g",),
        "eyes": ("l_eye", "r_eye"),
        "brows": ("l_brow", "r_brow"),
        "mouth": ("mouth", "u_lip", "l_lip"),
        "lips": ("u_lip", "l_lip"),
        "teeth": ("mouth",),
        "nose": ("nose",),
        "ears": ("l_ear", "r_ear"),
        "earrings": ("ear_r",),
        "necklace": ("neck_l",),
        "neck": ("neck",),
        "hat": ("hat",),
        "skin": ("skin",),
        "clothes": ("cloth",),
    }
)
"""Attribute -> parsing classes that show it."""

SYNONYMS: Mapping[str, str] = MappingProxyType(
    {
        "haircut": "hair",
        "hairstyle": "hair",
        "bangs": "hair",
        "fringe": "hair",
        "ponytail": "hair",
        "braid": "hair",
        "braids": "hair",
        "curls": "hair",
        "eyeglasses": "glasses",
        "spectacles": "glasses",
        "sunglasses": "glasses",
        "goggles": "glasses",
        "eye": "eyes",
        "eyebrow": "brows",
        "eyebrows": "brows",
        "brow": "brows",
        "lip": "lips",
        "lipstick": "lips",
        "smile": "mouth",
        "ear": "ears",
        "earring": "earrings",
        "pendant": "necklace",
        "choker": "necklace",
        "cap": "hat",
        "beanie": "hat",
        "helmet": "hat",
        "freckles": "skin",
        "complexion": "skin",
        "shirt": "clothes",
        "dress": "clothes",
        "jacket": "clothes",
        "suit": "clothes",
        "sweater": "clothes",
    }
)
"""Other words for the attributes of :data:`KEYWORD_CLASSES`."""

_WORD = re.compile(r"[a-z]+")


def attribute_of(word: str) -> str:
    """The attribute ``word`` names (itself or through :data:`SYNONYMS`); an unknown word is a
    :class:`~studio.faces.parsing.ParsingError` listing the attributes."""
    key = word.strip().lower()
    key = SYNONYMS.get(key, key)
    if key not in KEYWORD_CLASSES:
        raise ParsingError(
            f"unknown face attribute {word!r}; choose from {', '.join(KEYWORD_CLASSES)} "
            f"(or {', '.join(SYNONYMS)})"
        )
    return key


def attributes_in(prompt: str) -> tuple[str, ...]:
    """The attributes a prompt names, in order of first mention (``"red hair, round glasses"``
    gives ``("hair", "glasses")``)."""
    found: dict[str, None] = {}
    for word in _WORD.findall(prompt.lower()):
        key = SYNONYMS.get(word, word)
        if key in KEYWORD_CLASSES:
            found.setdefault(key)
    return tuple(found)


def attribute_mask(parsing: FaceParsing, attribute: str) -> np.ndarray | None:
    """Boolean ``(H, W)`` mask of the attribute's classes that the parser sees; ``None`` when it
    sees none of them (could not check). Partly seen attributes use the classes it sees."""
    classes = check_classes(KEYWORD_CLASSES[attribute_of(attribute)])
    seen = [c for c in classes if parsing.sees(c)]
    return parsing.union(seen) if seen else None
