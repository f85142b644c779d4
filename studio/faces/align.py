"""Face alignment: five-point similarity warps, FFHQ quads, and pasting crops back.

Pure numpy and OpenCV on RGB ``uint8`` images of shape ``(H, W, 3)``. Keypoints are ``(5, 2)``
arrays in the order of :mod:`studio.faces.types`. Every warp returns an
:class:`~studio.faces.types.AlignedFace` whose ``matrix`` maps image pixels to crop pixels and
whose ``inverse`` maps back, so later stages can paste an edited crop into the photo.

Two conventions are reproduced from published code:

* ArcFace crops follow insightface's ``estimate_norm``/``norm_crop``: the 112-px template below,
  scaled to other sizes by ``size / 112`` (sizes divisible by 112) or by ``size / 128`` with an
  ``8 * ratio`` px shift to the right (sizes divisible by 128), and a least-squares similarity.
* FFHQ crops follow ``recreate_aligned_images`` of NVlabs/ffhq-dataset (what StyleGAN and e4e
  expect), computed from the eye centres and mouth corners (:func:`ffhq_points_from_kps`,
  :func:`ffhq_points_from_mesh`): :func:`align_ffhq` as one anti-aliased warp,
  :func:`align_ffhq_quad` step for step (shrink, crop with border, reflect padding with blur,
  quad transform, resize), as e4e's inference alignment does.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import cv2
import numpy as np

from studio.faces import regions
from studio.faces.types import ARCFACE_TEMPLATE_112, NUM_KEYPOINTS, AlignedFace, check_rgb

logger = logging.getLogger(__name__)

ARCFACE_BASE_SIZES = (112, 128)
"""Crop sizes the ArcFace template is defined for; other sizes must be multiples of one."""

HEAD_CROP_FACE_FRACTION = 0.5
"""``face_fraction`` for training crops: the face at half its ArcFace size, centred, so the crop
keeps the hair, ears and the top of the shoulders (eyes about 14 % of the width apart)."""

FFHQ_EYE_SPAN = 2.0
"""FFHQ crop half-width, in eye-to-eye distances (the published rule)."""

FFHQ_MOUTH_SPAN = 1.8
"""FFHQ crop half-width, in eye-to-mouth distances; the larger of the two spans wins."""

FFHQ_CENTRE_SHIFT = 0.1
"""FFHQ crop centre: from the eyes' midpoint this fraction of the way towards the mouth."""

FFHQ_BORDER = 0.1
"""FFHQ crop border around the quad, as a fraction of the quad's side (at least 3 px)."""

FFHQ_PAD = 0.3
"""FFHQ reflect padding, as a fraction of the quad's side, when the quad leaves the photo."""

FFHQ_BLUR = 0.02
"""Sigma of the blur that FFHQ fades into the padding, as a fraction of the quad's side."""

E4E_SIZE = 256
"""Side of the FFHQ crop that e4e encodes."""

E4E_MIN_QUAD_SIDE = 128
"""Smallest FFHQ square, in photo pixels, worth encoding with e4e: below it the 256-px crop is
more than 2x upscaled and the inversion sees blur instead of a face."""

MAX_SUPERSAMPLING = 4
"""Most output-pixel subdivisions of an anti-aliased warp (FFHQ renders 4096 px for 1024)."""

DEFAULT_FEATHER = 0.1
"""Soft edge of :func:`paste_back`'s mask, as a fraction of the crop's shorter side."""

Border = Literal["constant", "reflect", "replicate"]
_BORDER_MODES = {
    "constant": cv2.BORDER_CONSTANT,
    "reflect": cv2.BORDER_REFLECT_101,
    "replicate": cv2.BORDER_REPLICATE,
}


def arcface_template(size: int = 112) -> np.ndarray:
    """Return the ``(5, 2)`` ArcFace template for a square crop of ``size`` pixels.

    Multiples of 112 scale the 112-px template; other multiples of 128 scale it by
    ``size / 128`` and shift it ``8 * size / 128`` px right, exactly as insightface does.
    """
    if size > 0 and size % 112 == 0:
        return ARCFACE_TEMPLATE_112 * (size / 112)
    if size > 0 and size % 128 == 0:
        ratio = size / 128
        return ARCFACE_TEMPLATE_112 * ratio + np.array([8.0 * ratio, 0.0])
    raise ValueError(
        f"ArcFace crops need a size that is a multiple of 112 or 128, got {size}; "
        "pass `template=` with your own destination points for other sizes"
    )


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking ``src`` to ``dst``.

    Umeyama's closed form (1991), the same estimate as scikit-image's ``SimilarityTransform``.
    Returns the 2 x 3 ``float64`` matrix ``M`` with ``dst ≈ M @ [x, y, 1]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(
            f"expected two (N, 2) point arrays of equal shape with N >= 2, "
            f"got {src.shape} and {dst.shape}"
        )
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_centred, dst_centred = src - src_mean, dst - dst_mean
    src_variance = (src_centred**2).sum() / len(src)
    if src_variance <= np.finfo(np.float64).eps:
        raise ValueError("source points coincide; a similarity transform is undefined")

    covariance = dst_centred.T @ src_centred / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    reflection = np.array([1.0, -1.0 if np.linalg.det(covariance) < 0 else 1.0])
    rotation = u @ np.diag(reflection) @ vt
    scale = float(singular @ reflection) / src_variance

    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2 x 3 affine ``matrix`` to ``(N, 2)`` points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def align_face(
    image: np.ndarray,
    kps: np.ndarray,
    size: int = 112,
    *,
    template: np.ndarray | None = None,
    face_fraction: float = 1.0,
    border: Border = "constant",
    antialias: bool = False,
) -> AlignedFace:
    """Warp the face with keypoints ``kps`` onto a five-point template in a ``size``-px square.

    Args:
        image: RGB ``uint8`` photo, ``(H, W, 3)``.
        kps: ``(5, 2)`` keypoints in image pixels.
        size: side of the square crop.
        template: ``(5, 2)`` destination points in crop pixels; defaults to
            :func:`arcface_template` for ``size``.
        face_fraction: shrinks the template towards the crop centre by this factor. ``1.0`` is
            the ArcFace crop that recognition models expect; :data:`HEAD_CROP_FACE_FRACTION`
            gives a head-and-shoulders training crop.
        border: how pixels outside the photo are filled: black, mirrored or edge-repeated.
        antialias: pre-shrink and supersample when the warp downsamples. ``False`` samples
            exactly as insightface's ``norm_crop``, which recognition models were trained on.
    """
    check_rgb(image)
    kps = _check_kps(kps)
    dst = arcface_template(size) if template is None else np.asarray(template, dtype=np.float64)
    if dst.shape != (NUM_KEYPOINTS, 2):
        raise ValueError(f"template must have shape ({NUM_KEYPOINTS}, 2), got {dst.shape}")
    if face_fraction <= 0:
        raise ValueError(f"face_fraction must be positive, got {face_fraction}")
    centre = np.array([size / 2.0, size / 2.0])
    dst = centre + (dst - centre) * face_fraction

    matrix = estimate_similarity(kps, dst)
    return _aligned(image, matrix, size, border, antialias)


def ffhq_points_from_kps(kps: np.ndarray) -> np.ndarray:
    """FFHQ's four anchor points from five keypoints: the eyes and the mouth corners.

    Rows: image-left eye, image-right eye, image-left mouth corner, image-right mouth corner.
    """
    kps = _check_kps(kps)
    return kps[[0, 1, 3, 4]].copy()


def ffhq_points_from_mesh(mesh: np.ndarray) -> np.ndarray:
    """FFHQ's four anchor points from a 468- or 478-point face mesh.

    Each eye is the mean of its lid contour (as FFHQ averages dlib's six eye points); the mouth
    corners are points 61 and 291. Rows as in :func:`ffhq_points_from_kps`.
    """
    mesh = np.asarray(mesh, dtype=np.float64)
    if mesh.ndim != 2 or mesh.shape[0] < 468 or mesh.shape[1] < 2:
        raise ValueError(f"expected a (468 or 478, 2 or 3) face mesh, got shape {mesh.shape}")
    if not np.isfinite(mesh[:, :2]).all():
        raise ValueError("the face mesh has non-finite points")
    xy = mesh[:, :2]
    # The subject's right eye and mouth corner are on the image's left.
    return np.stack(
        [
            xy[list(regions.RIGHT_EYE)].mean(axis=0),
            xy[list(regions.LEFT_EYE)].mean(axis=0),
            xy[regions.LIPS_OUTER_UPPER[0]],
            xy[regions.LIPS_OUTER_UPPER[-1]],
        ]
    )


def ffhq_quad(kps: np.ndarray) -> np.ndarray:
    """The FFHQ crop square as four image points: top-left, bottom-left, bottom-right, top-right.

    The published ``recreate_aligned_images`` rule, fed with our eye centres and mouth corners.
    """
    return ffhq_quad_from_points(ffhq_points_from_kps(kps))


def ffhq_quad_from_points(points: np.ndarray) -> np.ndarray:
    """:func:`ffhq_quad` from the four anchor points of :func:`ffhq_points_from_kps` or
    :func:`ffhq_points_from_mesh`."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (4, 2) or not np.isfinite(points).all():
        raise ValueError(
            "expected finite (4, 2) FFHQ points (eyes, then mouth corners), "
            f"got shape {points.shape}"
        )
    eye_avg = (points[0] + points[1]) / 2
    eye_to_eye = points[1] - points[0]
    mouth_avg = (points[2] + points[3]) / 2
    eye_to_mouth = mouth_avg - eye_avg

    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    norm = np.hypot(*x)
    if norm <= np.finfo(np.float64).eps:
        raise ValueError("the eyes and mouth coincide; the FFHQ quad is undefined")
    x /= norm
    x *= max(np.hypot(*eye_to_eye) * FFHQ_EYE_SPAN, np.hypot(*eye_to_mouth) * FFHQ_MOUTH_SPAN)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * FFHQ_CENTRE_SHIFT
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def align_ffhq(
    image: np.ndarray,
    kps: np.ndarray,
    size: int = 1024,
    *,
    border: Border = "reflect",
    antialias: bool = True,
) -> AlignedFace:
    """Crop the FFHQ square of :func:`ffhq_quad` to ``size`` px, as StyleGAN and e4e expect.

    The quad's outer corners land on the crop's outer pixel edges. Pixels beyond the photo
    are mirrored (FFHQ pads by reflection). With ``antialias`` large photos are shrunk by the
    published integer factor, then supersampled, instead of FFHQ's PIL chain.
    """
    check_rgb(image)
    quad = ffhq_quad(kps)
    edges = np.array([[-0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]])
    matrix = estimate_similarity(quad[:3], edges)
    return _aligned(image, matrix, size, border, antialias)


def align_ffhq_quad(
    image: np.ndarray,
    points: np.ndarray,
    size: int = E4E_SIZE,
    *,
    transform_size: int | None = None,
    padding: bool = True,
    min_quad_side: float = 0.0,
) -> AlignedFace:
    """FFHQ's ``recreate_aligned_images``, step for step, from four anchor points.

    1. Shrink the photo by ``floor(quad side / size / 2)`` when that is at least 2.
    2. Crop the quad's bounding box plus a border of :data:`FFHQ_BORDER` of its side.
    3. Where the quad (plus border) leaves the photo and ``padding`` is on: reflect-pad by at
       least :data:`FFHQ_PAD` of the side, blur the padding and fade it to the median colour.
    4. Warp the quad onto a ``transform_size`` square (bilinear), then area-resize to ``size``.

    Args:
        image: RGB ``uint8`` photo, ``(H, W, 3)``.
        points: ``(4, 2)`` eyes and mouth corners from :func:`ffhq_points_from_kps` or
            :func:`ffhq_points_from_mesh`.
        size: side of the result; :data:`E4E_SIZE` for e4e, 1024 for StyleGAN's FFHQ.
        transform_size: side of the warp before the final resize, at least ``size``
            (FFHQ renders at 4 x the output); defaults to ``4 * size``.
        padding: fill beyond the photo as FFHQ does (reflect, blur, fade) instead of black.
        min_quad_side: refuse faces whose FFHQ square is smaller in the photo, e.g.
            :data:`E4E_MIN_QUAD_SIDE` before e4e.

    Returns:
        The crop, with ``matrix`` mapping photo pixels to crop pixels through every step.
    """
    check_rgb(image)
    quad = ffhq_quad_from_points(points)
    transform_size = MAX_SUPERSAMPLING * size if transform_size is None else transform_size
    if size <= 0 or transform_size < size:
        raise ValueError(
            f"need 0 < size <= transform_size, got size={size}, transform_size={transform_size}"
        )
    qsize = float(np.hypot(*(quad[3] - quad[0])))
    if qsize < min_quad_side:
        raise ValueError(
            f"the face is too small: its FFHQ square is {qsize:.0f} px in the photo, at least "
            f"{min_quad_side:.0f} px are needed; use a photo where the face is larger"
        )
    work, to_work = image, np.eye(2, 3)

    # 1. Shrink
    shrink = math.floor(qsize / size * 0.5)
    if shrink > 1:
        height, width = work.shape[:2]
        shrunk = (round(width / shrink), round(height / shrink))
        work = cv2.resize(work, shrunk, interpolation=cv2.INTER_AREA)
        to_work = _resize_matrix((width, height), shrunk)
        quad, qsize = quad / shrink, qsize / shrink

    # 2. Crop
    border = max(round(qsize * FFHQ_BORDER), 3)
    height, width = work.shape[:2]
    low, high = np.floor(quad.min(axis=0)).astype(int), np.ceil(quad.max(axis=0)).astype(int)
    x0, y0 = np.maximum(low - border, 0)
    x1, y1 = np.minimum(high + border, [width, height])
    if x1 - x0 < width or y1 - y0 < height:
        work = work[y0:y1, x0:x1]
        quad = quad - [x0, y0]
        to_work = _compose(_translation(-x0, -y0), to_work)

    # 3. Pad
    if padding:
        height, width = work.shape[:2]
        low, high = np.floor(quad.min(axis=0)).astype(int), np.ceil(quad.max(axis=0)).astype(int)
        pad = np.maximum(
            [
                -low[0] + border,
                -low[1] + border,
                high[0] - width + border,
                high[1] - height + border,
            ],
            0,
        )
        if pad.max() > border - 4:
            pad = np.maximum(pad, round(qsize * FFHQ_PAD))
            work = _pad_blurred(work, pad, qsize * FFHQ_BLUR)
            quad = quad + pad[:2]
            to_work = _compose(_translation(pad[0], pad[1]), to_work)

    # 4. Quad transform and resize
    edges = np.array([[-0.5, -0.5], [-0.5, transform_size - 0.5]])
    edges = np.vstack([edges, [transform_size - 0.5, transform_size - 0.5]])
    to_big = estimate_similarity(quad[:3], edges)
    crop = cv2.warpAffine(
        work,
        to_big,
        (transform_size, transform_size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
    )
    matrix = _compose(to_big, to_work)
    if size < transform_size:
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
        matrix = _compose(_resize_matrix((transform_size, transform_size), (size, size)), matrix)
    return AlignedFace(image=crop, matrix=matrix, inverse=cv2.invertAffineTransform(matrix))


def _pad_blurred(image: np.ndarray, pad: np.ndarray, blur: float) -> np.ndarray:
    """FFHQ's padding: reflect by ``pad`` (left, top, right, bottom), blur it towards the
    outside and fade it to the image's median colour."""
    left, top, right, bottom = (int(p) for p in pad)
    padded = np.pad(np.float32(image), ((top, bottom), (left, right), (0, 0)), mode="reflect")
    height, width = padded.shape[:2]
    y, x = np.ogrid[:height, :width]
    x, y = np.float32(x), np.float32(y)
    mask = np.maximum(
        1.0 - np.minimum(x / left, (width - 1 - x) / right),
        1.0 - np.minimum(y / top, (height - 1 - y) / bottom),
    )[..., None]
    blurred = cv2.GaussianBlur(padded, (0, 0), blur, borderType=cv2.BORDER_REFLECT)
    padded += (blurred - padded) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    padded += (np.median(padded, axis=(0, 1)) - padded) * np.clip(mask, 0.0, 1.0)
    return np.clip(np.rint(padded), 0, 255).astype(np.uint8)


def paste_back(
    canvas: np.ndarray,
    crop: np.ndarray,
    aligned: AlignedFace,
    mask: np.ndarray | None = None,
    *,
    feather: float = DEFAULT_FEATHER,
) -> np.ndarray:
    """Blend ``crop`` into a copy of ``canvas`` where ``aligned`` came from.

    Args:
        canvas: the RGB ``uint8`` photo that ``aligned`` was cut from.
        crop: the (edited) crop; it may be larger or smaller than ``aligned.image``, e.g. the
            output of a face restorer, and is scaled to fit.
        aligned: the alignment that produced the crop.
        mask: ``(h, w)`` weights in crop pixels, floats in ``[0, 1]`` or ``uint8`` 0-255;
            the whole crop when omitted.
        feather: width of the soft edge as a fraction of the crop's shorter side; the mask is
            eroded by half of it and blurred over it, so the crop's border never shows.

    Returns:
        A new image; pixels where the warped mask is zero equal ``canvas`` exactly.
    """
    return paste_with_weight(canvas, crop, aligned, mask, feather=feather)[0]


def paste_with_weight(
    canvas: np.ndarray,
    crop: np.ndarray,
    aligned: AlignedFace,
    mask: np.ndarray | None = None,
    *,
    feather: float = DEFAULT_FEATHER,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`paste_back`, also returning the pasted weight in canvas pixels (``uint8``)."""
    check_rgb(canvas)
    check_rgb(crop)
    crop_h, crop_w = crop.shape[:2]
    weights = _paste_mask(mask, (crop_h, crop_w), feather)

    aligned_h, aligned_w = aligned.image.shape[:2]
    crop_to_aligned = _resize_matrix((crop_w, crop_h), (aligned_w, aligned_h))
    crop_to_canvas = _compose(aligned.inverse, crop_to_aligned)

    spread = transform_points(_corners(crop_w, crop_h), crop_to_canvas)
    height, width = canvas.shape[:2]
    x0, y0 = np.maximum(np.floor(spread.min(axis=0)).astype(int) - 1, 0)
    x1 = min(int(np.ceil(spread[:, 0].max())) + 2, width)
    y1 = min(int(np.ceil(spread[:, 1].max())) + 2, height)
    result = canvas.copy()
    weight = np.zeros((height, width), np.uint8)
    if x1 <= x0 or y1 <= y0:
        logger.debug("paste_back: the crop falls outside the canvas; nothing to paste")
        return result, weight

    to_region = _compose(_translation(-x0, -y0), crop_to_canvas)
    region_size = (x1 - x0, y1 - y0)
    face = cv2.warpAffine(
        crop, to_region, region_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    alpha = cv2.warpAffine(weights, to_region, region_size, flags=cv2.INTER_LINEAR)[..., None]
    region = result[y0:y1, x0:x1].astype(np.float32)
    blended = region + alpha * (face.astype(np.float32) - region)
    result[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    weight[y0:y1, x0:x1] = np.rint(alpha[..., 0] * 255.0).astype(np.uint8)
    return result, weight


def _aligned(
    image: np.ndarray, matrix: np.ndarray, size: int, border: Border, antialias: bool
) -> AlignedFace:
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    if border not in _BORDER_MODES:
        raise ValueError(f"border must be one of {sorted(_BORDER_MODES)}, got {border!r}")
    if antialias:
        crop = _warp_antialiased(image, matrix, size, _BORDER_MODES[border])
    else:
        crop = cv2.warpAffine(
            image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=_BORDER_MODES[border]
        )
    return AlignedFace(image=crop, matrix=matrix, inverse=cv2.invertAffineTransform(matrix))


def _warp_antialiased(
    image: np.ndarray, matrix: np.ndarray, size: int, border_mode: int
) -> np.ndarray:
    """Warp like ``cv2.warpAffine`` but average, rather than skip, pixels when downsampling.

    FFHQ's recipe: shrink the photo by ``floor(0.5 / scale)`` with area averaging when that is
    at least 2, then render at up to :data:`MAX_SUPERSAMPLING` x the size and area-average down.
    """
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    if scale >= 1.0:
        return cv2.warpAffine(
            image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=border_mode
        )
    to_output = matrix
    shrink = math.floor(0.5 / scale)
    if shrink > 1:
        # Only the part of the photo the crop sees (plus a margin) is worth shrinking; where
        # the crop leaves the photo the cut-out keeps the photo's own edge for the border.
        inverse = cv2.invertAffineTransform(matrix)
        seen = transform_points(_corners(size, size), inverse)
        margin = 2 * shrink + 2
        height, width = image.shape[:2]
        x0, y0 = np.clip(np.floor(seen.min(axis=0)).astype(int) - margin, 0, [width, height])
        x1, y1 = np.clip(np.ceil(seen.max(axis=0)).astype(int) + margin, 0, [width, height])
        if x1 - x0 >= shrink and y1 - y0 >= shrink:
            small_size = ((x1 - x0) // shrink, (y1 - y0) // shrink)
            image = cv2.resize(image[y0:y1, x0:x1], small_size, interpolation=cv2.INTER_AREA)
            small_to_image = _compose(
                _translation(x0, y0), _resize_matrix(small_size, (x1 - x0, y1 - y0))
            )
            to_output = _compose(matrix, small_to_image)
    residual = 1.0 / math.sqrt(abs(np.linalg.det(to_output[:, :2])))
    factor = min(max(math.ceil(residual - 1e-6), 1), MAX_SUPERSAMPLING)
    big = size * factor
    to_big = _compose(_resize_matrix((size, size), (big, big)), to_output)
    rendered = cv2.warpAffine(
        image, to_big, (big, big), flags=cv2.INTER_LINEAR, borderMode=border_mode
    )
    if factor == 1:
        return rendered
    return cv2.resize(rendered, (size, size), interpolation=cv2.INTER_AREA)


def _paste_mask(mask: np.ndarray | None, shape: tuple[int, int], feather: float) -> np.ndarray:
    if mask is None:
        weights = np.ones(shape, dtype=np.float32)
    else:
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise ValueError(f"mask must have the crop's shape {shape}, got {mask.shape}")
        scale = 1.0 / 255.0 if mask.dtype == np.uint8 else 1.0
        weights = np.clip(mask.astype(np.float32) * scale, 0.0, 1.0)
    if feather < 0:
        raise ValueError(f"feather must be >= 0, got {feather}")
    radius = round(feather * min(shape) / 2)
    if radius < 1:
        return weights
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), dtype=np.uint8)
    weights = cv2.erode(weights, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    # A kernel narrower than the eroded band keeps the crop's own edge at exactly zero.
    blur = 2 * radius - 1
    return cv2.GaussianBlur(weights, (blur, blur), 0)


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2 x 3 affine that applies ``inner`` first, then ``outer``."""
    linear = outer[:, :2] @ inner[:, :2]
    shift = outer[:, :2] @ inner[:, 2] + outer[:, 2]
    return np.column_stack([linear, shift])


def _corners(width: int, height: int) -> np.ndarray:
    """The outer corners of a ``width`` x ``height`` pixel grid, in pixel-centre coordinates."""
    return np.array([[0, 0], [width, 0], [0, height], [width, height]]) - 0.5


def _translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])


def _resize_matrix(src_size: tuple[int, int], dst_size: tuple[int, int]) -> np.ndarray:
    """Pixel-centre mapping that ``cv2.resize`` applies from ``src_size`` to ``dst_size`` (w, h)."""
    sx, sy = dst_size[0] / src_size[0], dst_size[1] / src_size[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])


def _check_kps(kps: np.ndarray) -> np.ndarray:
    kps = np.asarray(kps, dtype=np.float64)
    if kps.shape != (NUM_KEYPOINTS, 2) or not np.isfinite(kps).all():
        raise ValueError(f"expected finite ({NUM_KEYPOINTS}, 2) keypoints, got shape {kps.shape}")
    return kps
