"""BiSeNet face parsing around the model: the published pre-processing and the way back.

The published parser was trained on CelebAMask-HQ: FFHQ-style aligned faces resized to 512 px,
RGB scaled to 0..1 and normalised with ImageNet's mean and std. :func:`bisenet_crop` cuts that
512-px FFHQ square from the photo by the face's five keypoints; :func:`bisenet_input` makes the
``[1, 3, 512, 512]`` float32 batch; :func:`parsing_from_logits` takes the per-pixel argmax of the
``[19, 512, 512]`` logits back into the photo (nearest label, pixels outside the square are
``background``). Shared by the torch and the ONNX runners; torch-free.
"""

from __future__ import annotations

import cv2
import numpy as np

from studio.faces.align import align_ffhq
from studio.faces.parsing import CLASSES, FaceParsing
from studio.faces.types import AlignedFace, Face

INPUT_SIZE = 512
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def bisenet_crop(image: np.ndarray, face: Face) -> AlignedFace:
    """The face's 512-px FFHQ square (mirrored beyond the photo's edges)."""
    return align_ffhq(image, face.kps, INPUT_SIZE, border="reflect")


def bisenet_input(crop: AlignedFace) -> np.ndarray:
    """``[1, 3, 512, 512]`` float32: RGB 0..1, ImageNet-normalised, channels first."""
    pixels = (crop.image.astype(np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


def parsing_from_logits(
    logits: np.ndarray, crop: AlignedFace, shape: tuple[int, ...], parser: str
) -> FaceParsing:
    """The argmax of ``[19, 512, 512]`` (or ``[1, 19, 512, 512]``) logits as the photo's labels."""
    logits = np.asarray(logits)
    if logits.ndim == 4:
        logits = logits[0]
    expected = (len(CLASSES), INPUT_SIZE, INPUT_SIZE)
    if logits.shape != expected:
        raise ValueError(f"expected face-parsing logits of shape {expected}, got {logits.shape}")
    labels = logits.argmax(axis=0).astype(np.uint8)
    height, width = (int(s) for s in shape[:2])
    back = cv2.warpAffine(
        labels,
        crop.inverse,
        (width, height),
        flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    seen = cv2.warpAffine(
        np.ones_like(labels), crop.inverse, (width, height), flags=cv2.INTER_NEAREST
    )
    points = cv2.findNonZero(seen)
    x, y, w, h = cv2.boundingRect(points) if points is not None else (0, 0, 0, 0)
    return FaceParsing(back, frozenset(CLASSES), parser, (x, y, x + w, y + h))
