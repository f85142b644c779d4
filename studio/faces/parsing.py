"""Face parsing: the 19-class vocabulary of the published BiSeNet face parser, and its result.

``CLASSES`` is the label order of zllrunning/face-parsing.PyTorch (``79999_iter.pth``, trained on
CelebAMask-HQ): index ``i`` of the model's 19 output channels is ``CLASSES[i]``. Every parser of
the studio (the mesh polygons of :mod:`studio.faces.mesh_parser`, BiSeNet in torch or ONNX)
answers in this vocabulary with a :class:`FaceParsing`.

``eye_g`` is eyeglasses, ``ear_r`` earrings, ``neck_l`` a necklace, ``mouth`` the opening
between the lips (teeth, tongue), ``cloth`` clothing. ``l_``/``r_``: the mesh parser gives the
subject's own sides, as mediapipe does (``l_eye`` is on the image's right in an unmirrored
frontal photo); BiSeNet gives CelebAMask-HQ's annotation sides (its training swaps them on every
flip, so they are consistent, but which side the annotators meant is not documented). Code that
must not depend on it uses both sides together, as the attribute table does.

A parser states which classes it can produce at all (:attr:`FaceParsing.classes`): a class it
cannot produce is *unknown* in its result (:meth:`FaceParsing.present` is ``None``), which is not
the same as *absent* (``False``). Pure numpy, no model code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from studio.errors import StudioError

CLASSES: tuple[str, ...] = (
    "background",
    "skin",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "eye_g",
    "l_ear",
    "r_ear",
    "ear_r",
    "nose",
    "mouth",
    "u_lip",
    "l_lip",
    "neck",
    "neck_l",
    "cloth",
    "hair",
    "hat",
)
"""Class names in BiSeNet's output-channel order (CelebAMask-HQ's 18 parts after background)."""

CLASS_INDEX: Mapping[str, int] = MappingProxyType({name: i for i, name in enumerate(CLASSES)})

FACE_CLASSES: tuple[str, ...] = (
    "skin",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "nose",
    "mouth",
    "u_lip",
    "l_lip",
)
"""The face itself: what a swap replaces and what counts as "face" inside the face oval."""


class ParsingError(StudioError, ValueError):
    """A parsing asked for what it cannot give (a class its parser does not see); the message
    says what it sees and the fix."""


class UnknownClassError(ParsingError):
    """A class name outside :data:`CLASSES`."""


def check_classes(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` as a tuple, refusing any that is not a parsing class (the message lists them)."""
    names = tuple(names)
    unknown = [n for n in names if n not in CLASS_INDEX]
    if unknown:
        raise UnknownClassError(
            f"unknown face-parsing class {unknown[0]!r}; choose from {', '.join(CLASSES)}"
        )
    return names


@dataclass(frozen=True, eq=False)
class FaceParsing:
    """One face parsed: a class per pixel at the image's size, and what the parser can see.

    ``labels`` is ``(H, W)`` ``uint8``, indices into :data:`CLASSES`, exclusive (one class per
    pixel). ``classes`` are the classes the parser can produce at all (``background`` always
    included); pixels it did not look at (outside ``extent``, ``(x0, y0, x1, y1)``) are
    ``background``. ``parser`` names the parser, for notes and messages.
    """

    labels: np.ndarray
    classes: frozenset[str]
    parser: str
    extent: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 2 or labels.dtype != np.uint8:
            raise ValueError(f"labels must be (H, W) uint8, got {labels.dtype} {labels.shape}")
        check_classes(self.classes)
        if "background" not in self.classes:
            raise ValueError("a parser's classes always include 'background'")
        if labels.size and int(labels.max()) >= len(CLASSES):
            raise ValueError(f"labels hold {int(labels.max())}, beyond the {len(CLASSES)} classes")
        labels.setflags(write=False)
        object.__setattr__(self, "labels", labels)

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the parsed image."""
        return self.labels.shape  # type: ignore[return-value]

    def sees(self, name: str) -> bool:
        """Whether this parser can produce class ``name`` at all."""
        check_classes((name,))
        return name in self.classes

    def mask(self, name: str) -> np.ndarray:
        """Boolean ``(H, W)`` mask of class ``name``; a class the parser cannot produce is a
        :class:`ParsingError` naming the parser and what it can see (ask :meth:`sees` first)."""
        return self.union((name,))

    def union(self, names: Iterable[str]) -> np.ndarray:
        """Boolean ``(H, W)`` mask of any of ``names`` (all must be classes the parser sees)."""
        names = check_classes(names)
        blind = [n for n in names if n not in self.classes]
        if blind:
            seen = ", ".join(n for n in CLASSES if n in self.classes)
            raise ParsingError(
                f"the {self.parser} parser cannot tell {blind[0]!r}; it sees: {seen}. "
                "Install the BiSeNet face parser (model catalog component 'face_parser') for all "
                f"{len(CLASSES)} classes"
            )
        lookup = np.zeros(len(CLASSES), dtype=bool)
        lookup[[CLASS_INDEX[n] for n in names]] = True
        return lookup[self.labels]

    def present(self, name: str, min_pixels: int = 1) -> bool | None:
        """Whether class ``name`` covers at least ``min_pixels``; ``None`` when the parser cannot
        produce it (could not check), which differs from ``False`` (checked, absent)."""
        if not self.sees(name):
            return None
        return int(np.count_nonzero(self.labels == CLASS_INDEX[name])) >= min_pixels

    def areas(self) -> dict[str, int]:
        """Pixel count of every class the parser sees (zeros included)."""
        counts = np.bincount(self.labels.ravel(), minlength=len(CLASSES))
        return {n: int(counts[CLASS_INDEX[n]]) for n in CLASSES if n in self.classes}


def labels_from_masks(
    shape: tuple[int, int], masks: Iterable[tuple[str, np.ndarray]]
) -> np.ndarray:
    """A label map from ``(class, boolean mask)`` pairs, later pairs painted over earlier ones."""
    labels = np.zeros(shape, dtype=np.uint8)
    for name, mask in masks:
        labels[np.asarray(mask, dtype=bool)] = CLASS_INDEX[check_classes((name,))[0]]
    return labels
