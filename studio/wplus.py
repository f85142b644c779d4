"""Photos to W+ and back: the FFHQ crop e4e encodes, its W+, and the StyleGAN preview image.

The face work (keypoints or mesh to the FFHQ quad) is :mod:`studio.faces.align`; the models are
:mod:`adapters.e4e`. W+ is not an embedding: it is not unit-norm and is kept as the encoder
returns it, ``[1, 18, 512]`` per photo.
"""

from __future__ import annotations

import numpy as np
import torch

from adapters.e4e import E4E, E4E_INPUT_SIZE
from studio.errors import StudioError
from studio.faces.align import E4E_MIN_QUAD_SIDE, align_ffhq_quad
from studio.faces.types import AlignedFace


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


@torch.no_grad()
def photo_wplus(e4e: E4E, image: np.ndarray, points: np.ndarray) -> torch.Tensor:
    """W+ ``[1, n_latent, style_dim]`` of the face with anchor ``points`` in ``image``."""
    return e4e.encode(to_model_input(e4e_crop(image, points).image))


def to_image(rendered: torch.Tensor) -> np.ndarray:
    """A generator's ``[1, 3, H, W]`` output in about ``[-1, 1]`` as RGB ``uint8``."""
    pixels = ((rendered[0].float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return pixels.permute(1, 2, 0).cpu().numpy()
