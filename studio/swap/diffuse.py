"""Path B: the face repainted by diffusion at the pipeline's resolution, then pasted back.

The target face is cropped upright with a margin and scaled to the pipeline's resolution (no
128-px limit), its face region is inpainted with the person's identity adapter through the
loaded pipeline's identity-inpainting twin (``host.derived("portrait-inpaint")``, sharing every
weight), conditioned on the TARGET's own landmarks (mesh or keypoints, as the model set's pose
ControlNet reads them) so pose and expression stay; the result is colour-matched to the crop,
area-averaged back down to the face's size and feather-pasted. Outside the pasted weight the
photo is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from studio.faces.align import align_face, arcface_template, transform_points
from studio.faces.blend import match_color, paste_face
from studio.faces.condition import draw_face_mesh, draw_keypoints
from studio.faces.types import AlignedFace, Face
from studio.families import BaseFamily
from studio.host import register_derived
from studio.stages import FaceParser
from studio.swap.face_mask import check_covers, face_mask
from studio.swap.types import FaceEdit

DERIVED_KIND = "portrait-inpaint"
register_derived(DERIVED_KIND, BaseFamily.identity_inpaint_pipeline_class)

CROP_FACE_FRACTION = 0.55
"""The face in the crop at this fraction of its ArcFace-crop size: forehead, chin and a margin
of hair and background fit in, for the inpainting to blend into."""
MASK_GROWTH = 0.03
"""The inpainted region reaches this fraction of the crop side beyond the face mask, so the
feathered edge of the paste shows repainted pixels, not the VAE's seam."""
FEATHER = 0.02
"""Extra soft edge of the paste (the mask is feathered already), a fraction of the crop side."""
PROMPT = "a photo of {subject}, detailed natural skin, sharp focus"
NEGATIVE_PROMPT = "blurry, deformed, cartoon, painting, lowres"


@dataclass(frozen=True, eq=False)
class DiffusionSwap:
    """What path B uses of the loaded model set."""

    pipe: Any
    """The identity-inpainting pipeline (:data:`DERIVED_KIND`)."""
    run: Callable[..., tuple[list, str | None]]
    """``host.run``: calls the pipeline, falling back to CPU offload on out-of-memory."""
    size: int
    """The pipeline's resolution: the side the face crop is scaled to."""
    identity_embeds: torch.Tensor
    subject: str
    steps: int
    """Denoising steps that run: the schedule is ``steps / strength`` long, and its last
    ``strength`` of it runs."""
    guidance: float
    pose_kind: str | None
    """``mesh`` or ``kps`` when the pipeline has the pose ControlNet, else ``None``."""
    pose_argument: str = "control_image"


def crop_for_diffusion(image: np.ndarray, face: Face, size: int) -> AlignedFace:
    """The face upright in a ``size``-px square with a margin (edge pixels repeated beyond)."""
    template = arcface_template(112) * (size / 112)
    return align_face(
        image,
        face.kps,
        size,
        template=template,
        face_fraction=CROP_FACE_FRACTION,
        border="replicate",
        antialias=True,
    )


def pose_image(face: Face, aligned: AlignedFace, kind: str | None) -> np.ndarray | None:
    """The target face's landmarks drawn in crop pixels for the pose ControlNet."""
    size = aligned.image.shape[1], aligned.image.shape[0]
    if kind == "mesh" and face.mesh is not None:
        mesh = np.array(face.mesh, dtype=np.float64)
        mesh[:, :2] = transform_points(mesh[:, :2], aligned.matrix)
        return draw_face_mesh([mesh], size)
    if kind == "kps":
        return draw_keypoints([transform_points(face.kps, aligned.matrix)], size)
    return None


def shrink_to_photo(
    crop: np.ndarray, mask: np.ndarray, aligned: AlignedFace
) -> tuple[np.ndarray, np.ndarray]:
    """The crop and its mask area-averaged down to the face's size in the photo, when the crop
    is larger, so the paste's bilinear warp does not alias (a 512-px face into a 100-px one)."""
    scale = math.sqrt(abs(np.linalg.det(aligned.matrix[:, :2])))  # crop px per photo px
    if scale <= 1.0:
        return crop, mask
    side = max(1, round(crop.shape[0] / scale))
    size = (side, side)
    return (
        cv2.resize(crop, size, interpolation=cv2.INTER_AREA),
        cv2.resize(mask, size, interpolation=cv2.INTER_AREA),
    )


def diffuse_face(
    image: np.ndarray,
    face: Face,
    swap: DiffusionSwap,
    *,
    strength: float,
    generator: torch.Generator,
    parser: FaceParser,
    label: str,
) -> FaceEdit:
    """``image`` with ``face`` repainted as the person of ``swap.identity_embeds``, within the
    face mask of ``parser``."""
    aligned = crop_for_diffusion(image, face, swap.size)
    mask = face_mask(image, face, aligned, parser)
    check_covers(mask, label)
    grow = max(1, round(MASK_GROWTH * swap.size))
    hard = np.where(mask > 0, 255, 0).astype(np.uint8)
    inpaint_mask = cv2.dilate(hard, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    call: dict[str, Any] = {
        "prompt": PROMPT.format(subject=swap.subject),
        "negative_prompt": NEGATIVE_PROMPT,
        "image": Image.fromarray(aligned.image),
        "mask_image": Image.fromarray(inpaint_mask),
        "strength": strength,
        "num_inference_steps": math.ceil(swap.steps / strength),
        "guidance_scale": swap.guidance,
        "generator": generator,
        "identity_embeds": swap.identity_embeds,
        "width": swap.size,
        "height": swap.size,
    }
    notes = []
    condition = pose_image(face, aligned, swap.pose_kind)
    if condition is not None:
        call[swap.pose_argument] = Image.fromarray(condition)
    elif swap.pose_kind is not None:
        notes.append(f"{label}: no face mesh, so the pose is not held by the ControlNet")
    images, note = swap.run(swap.pipe, **call)
    if note:
        notes.append(note)
    painted = np.asarray(images[0].convert("RGB"))
    painted, mask = shrink_to_photo(match_color(painted, aligned.image, mask), mask, aligned)
    result, weight = paste_face(image, painted, aligned, mask, feather=FEATHER)
    check_covers(weight, label)
    return FaceEdit(result, weight, tuple(notes))
