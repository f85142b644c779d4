"""Photos to W+ and back: the FFHQ crop e4e encodes, its W+, and the StyleGAN preview image.

The face work (keypoints or mesh to the FFHQ quad) is :mod:`studio.faces.align`; the models are
:mod:`adapters.e4e`. W+ is not an embedding: it is not unit-norm and is kept as the encoder
returns it, ``[1, 18, 512]`` per photo.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from adapters.e4e import E4E, E4E_INPUT_SIZE
from adapters.wplus_refine import resize_to
from studio.errors import StudioError
from studio.faces.align import (
    E4E_MIN_QUAD_SIDE,
    align_ffhq_quad,
    ffhq_points_from_kps,
    ffhq_points_from_mesh,
)
from studio.faces.analyzer import FaceAnalyzer
from studio.faces.types import AlignedFace, Face
from studio.images import ImageLoadError, load_image
from studio.profiles.errors import PhotoWPlusError

PREVIEW_SIZE = 256
"""Side of the StyleGAN preview images the studio shows."""


def e4e_crop(image: np.ndarray, points: np.ndarray) -> AlignedFace:
    """The 256-px FFHQ crop of the face with anchor ``points`` (eyes, mouth corners), as e4e
    expects; a face too small for e4e is a :class:`StudioError`."""
    try:
        return align_ffhq_quad(image, points, E4E_INPUT_SIZE, min_quad_side=E4E_MIN_QUAD_SIDE)
    except ValueError as error:
        raise StudioError(f"cannot encode this face to W+: {error}") from error


def to_model_input(crop: np.ndarray) -> torch.Tensor:
    """RGB ``uint8`` ``(H, W, 3)`` to ``[1, 3, H, W]`` in ``[-1, 1]``."""
    tensor = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float()
    return tensor / 127.5 - 1.0


def face_points(face: Face) -> np.ndarray:
    """FFHQ's anchor points of a face: from its mesh when it has one, else its keypoints."""
    return (
        ffhq_points_from_mesh(face.mesh)
        if face.mesh is not None
        else ffhq_points_from_kps(face.kps)
    )


@torch.no_grad()
def photo_wplus(e4e: E4E, image: np.ndarray, points: np.ndarray) -> torch.Tensor:
    """W+ ``[1, n_latent, style_dim]`` of the face with anchor ``points`` in ``image``."""
    return e4e.encode(to_model_input(e4e_crop(image, points).image))


def to_image(rendered: torch.Tensor) -> np.ndarray:
    """A generator's ``[1, 3, H, W]`` output in about ``[-1, 1]`` as RGB ``uint8``."""
    pixels = ((rendered[0].float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return pixels.permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def render_preview(e4e: E4E, w_plus: torch.Tensor, size: int = PREVIEW_SIZE) -> np.ndarray:
    """W+ ``[1, rows, dim]`` rendered by the e4e's generator, as RGB ``uint8`` ``size`` px."""
    parameter = e4e.latent_avg
    rendered = e4e.render(w_plus.to(device=parameter.device, dtype=parameter.dtype))
    return to_image(resize_to(rendered.float(), size))


class PhotoWPlusEncoder:
    """The profile library's W+ encoder (:class:`~studio.profiles.types.WPlusEncoder`): finds
    the profile's face in a stored photo again and encodes its FFHQ crop with e4e.

    ``e4e`` and ``analyzer`` are called on first use, so opening a library loads no model.
    """

    def __init__(
        self, key: str, e4e: Callable[[], E4E], analyzer: Callable[[], FaceAnalyzer]
    ) -> None:
        self.key = key
        self._e4e = e4e
        self._analyzer = analyzer

    def encode(self, photo: Path, face_index: int, face_count: int) -> np.ndarray:
        e4e = self._e4e()  # missing weights stop here, before any photo is judged
        try:
            rgb = load_image(photo).rgb
        except ImageLoadError as exc:
            raise PhotoWPlusError(f"cannot read the photo for W+: {exc}") from exc
        faces = self._analyzer().analyze(rgb)
        if len(faces) != face_count:
            raise PhotoWPlusError(
                f"found {len(faces)} faces where the profile recorded {face_count}, so the "
                "profile's face is unclear for W+"
            )
        try:
            w_plus = photo_wplus(e4e, rgb, face_points(faces[face_index]))
        except StudioError as exc:  # a face too small for e4e
            raise PhotoWPlusError(str(exc)) from exc
        return w_plus.float().cpu().numpy()
