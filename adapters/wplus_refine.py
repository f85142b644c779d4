"""Refine a W+ by a few steps of latent optimisation against the face it came from.

e4e's W+ is a fast first guess. :func:`refine_wplus` runs Adam on the latent alone (the
generator, and the recognizer when given, stay frozen) so the rendering, resized to the target
crop, comes closer to it. The loss per step is::

    MSE(render, target) + l1_weight * L1(render, target)
    + id_weight * (1 - cos(recognizer(render), recognizer(target)))     # when a recognizer is given
    + start_weight * mean((w - w_start) ** 2)

The last term keeps the latent near e4e's W+, where edits behave (the reason e4e and PTI stay
close to the encoder's output). No noise is drawn: the generator renders with its stored
noise, so the result depends only on the inputs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

#: ``on_progress(step, total, loss)``: ``step`` counts finished steps from 1.
ProgressFn = Callable[[int, int, float], None]


class FaceRecognizer(Protocol):
    """A torch recognizer for the identity term (e.g. :class:`~adapters.ir_se50.IRSE50Recognizer`):
    FFHQ crops ``[batch, 3, S, S]`` in ``[-1, 1]`` to unit embeddings, differentiably."""

    def embed_ffhq(self, crops: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class RefineSettings:
    """Optimiser and loss weights.

    Attributes:
        learning_rate: Adam's step size on the latent.
        l1_weight: weight of an L1 pixel term beside the MSE (0: MSE alone).
        id_weight: weight of the identity term (used only with a recognizer).
        start_weight: pull toward the starting W+; higher stays more editable, lower fits closer.
    """

    learning_rate: float = 0.01
    l1_weight: float = 0.0
    id_weight: float = 0.1
    start_weight: float = 0.1

    def __post_init__(self):
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        for name in ("l1_weight", "id_weight", "start_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Refinement:
    """A refined W+ and how it got there.

    Attributes:
        w_plus: the latent after the last finished step, detached, ``[1, n_latent, style_dim]``.
        losses: the total loss at each finished step, measured before that step's update.
        requested: the steps asked for; ``len(losses)`` were done (fewer when stopped).
        identity_loss: whether the identity term was part of the loss.
        stopped: the stop event ended the run early.
    """

    w_plus: torch.Tensor
    losses: tuple[float, ...]
    requested: int
    identity_loss: bool
    stopped: bool

    @property
    def steps(self) -> int:
        return len(self.losses)

    @property
    def first_loss(self) -> float | None:
        return self.losses[0] if self.losses else None

    @property
    def last_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


def refine_wplus(
    generator: nn.Module,
    w_plus: torch.Tensor,
    target: torch.Tensor,
    steps: int,
    *,
    recognizer: FaceRecognizer | None = None,
    settings: RefineSettings | None = None,
    on_progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
) -> Refinement:
    """Refine ``w_plus`` ``[1, n_latent, style_dim]`` toward ``target``, an FFHQ crop
    ``[1, 3, S, S]`` in ``[-1, 1]`` (S = 256 for e4e's crop), by ``steps`` Adam steps.

    ``generator`` renders W+ to ``[1, 3, size, size]`` (a
    :class:`~adapters.stylegan2.StyleGAN2Generator`); its weights get no gradients. ``stop`` is
    checked before every step; when it is set, the W+ reached so far is returned.
    """
    settings = settings or RefineSettings()
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if w_plus.ndim != 3 or w_plus.shape[0] != 1:
        raise ValueError(f"W+ must be [1, n_latent, style_dim], got {list(w_plus.shape)}")
    if target.ndim != 4 or target.shape[:2] != (1, 3) or target.shape[-1] != target.shape[-2]:
        raise ValueError(f"target must be a square crop [1, 3, S, S], got {list(target.shape)}")
    device = w_plus.device
    # Clones: inputs made under torch.inference_mode cannot take part in autograd.
    start = w_plus.detach().float().clone()
    target = target.detach().to(device=device, dtype=torch.float32).clone()
    latent = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([latent], lr=settings.learning_rate)
    frozen = [generator] + ([recognizer] if isinstance(recognizer, nn.Module) else [])
    losses: list[float] = []
    stopped = False
    with _frozen(*frozen), torch.enable_grad():
        target_identity = None
        if recognizer is not None:
            with torch.no_grad():
                target_identity = recognizer.embed_ffhq(target).float()
        for step in range(1, steps + 1):
            if stop is not None and stop.is_set():
                stopped = True
                break
            optimizer.zero_grad(set_to_none=True)
            rendered = resize_to(generator(latent).float(), target.shape[-1])
            loss = F.mse_loss(rendered, target)
            if settings.l1_weight:
                loss = loss + settings.l1_weight * F.l1_loss(rendered, target)
            if target_identity is not None:
                identity = recognizer.embed_ffhq(rendered).float()
                similarity = F.cosine_similarity(identity, target_identity, dim=1).mean()
                loss = loss + settings.id_weight * (1 - similarity)
            if settings.start_weight:
                loss = loss + settings.start_weight * (latent - start).pow(2).mean()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if on_progress is not None:
                on_progress(step, steps, losses[-1])
    return Refinement(
        w_plus=latent.detach().to(w_plus.dtype).clone(),
        losses=tuple(losses),
        requested=steps,
        identity_loss=recognizer is not None,
        stopped=stopped,
    )


def resize_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Square images to ``size`` px: area-averaged down (pSp's ``face_pool``), bilinear up."""
    if images.shape[-1] == size:
        return images
    if images.shape[-1] > size:
        return F.adaptive_avg_pool2d(images, size)
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


@contextmanager
def _frozen(*modules: nn.Module) -> Iterator[None]:
    """No gradients for the modules' parameters inside; their flags are restored after."""
    params = [p for module in modules for p in module.parameters()]
    flags = [p.requires_grad for p in params]
    for param in params:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param, flag in zip(params, flags, strict=True):
            param.requires_grad_(flag)
