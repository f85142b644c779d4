"""Which photos and faces belong to the profile's person, from identity embeddings alone.

:func:`judge` compares each photo with the normalised mean of the *other* photos
(leave-one-out) and excludes those below the encoder's same-person threshold, the worst first
and recomputing after each exclusion, so that one impostor cannot drag a genuine photo below the
threshold. Two photos that disagree cannot say which of them is someone else, so both are
excluded until more photos decide. :func:`pick_face` chooses the face of a group photo that best
matches the others.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from studio.faces.encoders import IdentityEmbedding

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Verdict:
    """Whether a photo matches the rest; ``similarity`` is ``None`` for a lone photo."""

    accepted: bool
    similarity: float | None
    reasons: tuple[str, ...] = ()


def judge(embeddings: Mapping[K, IdentityEmbedding], threshold: float) -> dict[K, Verdict]:
    """Verdicts for photos of one person, one embedding (one encoder) each.

    While three or more photos remain, the one least similar to the normalised mean of the
    others is excluded if it is below ``threshold``; an excluded photo's similarity is then
    measured against the accepted ones. Two photos are both excluded when they disagree. A
    single photo is accepted: there is nothing to compare it with.
    """
    keys = list(embeddings)
    if not keys:
        return {}
    vectors = np.stack([embeddings[key].vector for key in keys]).astype(np.float64)
    active = list(range(len(keys)))
    dropped: list[int] = []
    while len(active) >= 3:
        similarities = _leave_one_out(vectors[active])
        worst = int(np.argmin(similarities))
        if similarities[worst] >= threshold:
            break
        dropped.append(active.pop(worst))

    verdicts: dict[K, Verdict] = {}
    if len(active) == 1:
        verdicts[keys[active[0]]] = Verdict(True, None)
    elif len(active) == 2:
        similarity = float(vectors[active[0]] @ vectors[active[1]])
        reasons: tuple[str, ...] = ()
        if similarity < threshold:
            reasons = (
                f"the two photos do not match each other (similarity {similarity:.2f} < "
                f"{threshold:g}) and either could be someone else; add more photos of the person",
            )
        for index in active:
            verdicts[keys[index]] = Verdict(similarity >= threshold, similarity, reasons)
    else:
        for index, value in zip(active, _leave_one_out(vectors[active]), strict=True):
            verdicts[keys[index]] = Verdict(True, float(value))
    accepted = [i for i in active if verdicts[keys[i]].accepted]
    reference = vectors[accepted].sum(axis=0) if accepted else None
    for index in dropped:
        others = reference if reference is not None else vectors.sum(axis=0) - vectors[index]
        value = float(others @ vectors[index] / max(np.linalg.norm(others), 1e-12))
        reason = f"does not match the other photos (similarity {value:.2f} < {threshold:g})"
        verdicts[keys[index]] = Verdict(False, value, (reason,))
    return {key: verdicts[key] for key in keys}


def _leave_one_out(vectors: np.ndarray) -> np.ndarray:
    """Each row's cosine to the normalised sum of the other rows."""
    others = vectors.sum(axis=0) - vectors
    others /= np.maximum(np.linalg.norm(others, axis=1, keepdims=True), 1e-12)
    return np.einsum("ij,ij->i", others, vectors)


def pick_face(
    candidates: Sequence[IdentityEmbedding], reference: IdentityEmbedding | None
) -> tuple[int, str | None]:
    """Index of the face to use among a photo's faces (largest first), and a note on the choice.

    The face most similar to ``reference`` (the mean of the other photos) wins; without a
    reference the largest face does. A photo with one face gets no note.
    """
    if len(candidates) == 1:
        return 0, None
    if reference is None:
        return 0, f"{len(candidates)} faces: used the largest (no other photo to compare with)"
    similarities = [reference.similarity(candidate) for candidate in candidates]
    best = int(np.argmax(similarities))
    return best, (
        f"{len(candidates)} faces: used the one matching the rest "
        f"(similarity {similarities[best]:.2f})"
    )
