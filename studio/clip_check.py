"""CLIP image-text scores for the attribute check, where CLIP weights are present.

The face parser checks attributes it has classes for; CLIP checks the others (the mesh parser's
glasses, hat, earrings, necklace) by comparing how well the portrait and the foundation image
match the prompt's words for the attribute. The weights are the model catalog's optional
``clip`` component (OpenAI CLIP ViT-L/14, the image tower paired with Stable Diffusion 1.x's text
encoder; the set's own, else the ``sd15`` set's) or a ``--weights clip=DIR`` override: a
Hugging Face ``CLIPModel`` folder (``config.json``, ``model.safetensors``). The tokenizer is
built from the BPE vocabulary in ``assets/clip``; images are prepared by transformers'
``CLIPImageProcessor`` (CLIP's published preprocessing at the model's image size). Nothing is
downloaded here: without the folder there is no CLIP check.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from studio.errors import ModelUnavailableError
from studio.models.catalog import ModelSet
from studio.models.resolver import find_optional
from studio.settings import Settings

logger = logging.getLogger(__name__)

COMPONENT = "clip"
CAPTION = "a photo of a person with {words}"
"""The text an attribute is scored against, with the prompt's words for it."""


class ClipScorer:
    """Cosine similarities of images and texts under a ``CLIPModel``; calls are serialised."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        from transformers import CLIPImageProcessor, CLIPModel

        from studio.models.clip_vocab import build_clip_tokenizer

        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise ModelUnavailableError(
                f"--weights {COMPONENT}={self.path}: not a CLIP model folder (no config.json); "
                "give a Hugging Face CLIPModel folder such as openai/clip-vit-large-patch14"
            )
        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(str(self.path), use_safetensors=True)
        self.model.to(self.device).eval()
        with tempfile.TemporaryDirectory() as folder:
            self.tokenizer = build_clip_tokenizer(Path(folder))
        size = self.model.config.vision_config.image_size
        self.processor = CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        )
        self._lock = threading.Lock()

    def scores(self, images: Sequence[np.ndarray], text: str) -> np.ndarray:
        """``[n]``: each RGB image's cosine similarity to ``text``."""
        pixels = self.processor(images=list(images), return_tensors="pt").pixel_values
        tokens = self.tokenizer([text], padding="max_length", truncation=True, return_tensors="pt")
        with self._lock, torch.no_grad():
            out = self.model(
                input_ids=tokens.input_ids.to(self.device), pixel_values=pixels.to(self.device)
            )
            cosines = out.logits_per_image[:, 0] / self.model.logit_scale.exp()
        return cosines.float().cpu().numpy()


def clip_scorer_for(settings: Settings, model_set: ModelSet) -> ClipScorer | None:
    """The CLIP scorer when the ``clip`` folder is local (or given by ``--weights clip=DIR``),
    else ``None``. A given folder that is not a CLIP model is an error naming it."""
    path = find_optional(settings, model_set, COMPONENT)
    if path is None:
        logger.info("no CLIP folder: attributes the face parser cannot see are not checked")
        return None
    device = settings.torch_device() if settings.faces_device == "auto" else settings.faces_device
    return ClipScorer(path, device)
