"""CLIP image-text scores for the attribute check, where CLIP weights are present.

The face parser checks attributes it has classes for; CLIP checks the others (the mesh parser's
glasses, hat, earrings, necklace) by comparing how well the portrait and the foundation image
match the prompt's words for the attribute. The weights are the model catalog's optional
``clip`` component (OpenAI CLIP ViT-L/14, the image tower paired with Stable Diffusion 1.x's text
encoder; the set's own, else the ``sd15`` set's) or a ``--weights clip=DIR`` override: a
Hugging Face ``CLIPModel`` folder (``config.json``, ``model.safetensors``). The tokenizer is
built from the BPE vocabulary in ``assets/clip``; images are prepared as CLIP's published
preprocessing does (shortest side to the model's size, bicubic, centre crop, CLIP's mean and
std). Nothing is downloaded here: without the folder there is no CLIP check.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from studio.errors import ModelUnavailableError
from studio.models.catalog import ModelSet
from studio.models.resolver import find_optional
from studio.settings import Settings

logger = logging.getLogger(__name__)

COMPONENT = "clip"
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
CAPTION = "a photo of a person with {words}"
"""The text an attribute is scored against, with the prompt's words for it."""


class ClipScorer:
    """Cosine similarities of images and texts under a ``CLIPModel``; calls are serialised."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        from transformers import CLIPModel

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
        self.size = self.model.config.vision_config.image_size
        self._lock = threading.Lock()

    def pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 images as CLIP's ``[n, 3, size, size]`` input."""
        batch = []
        for image in images:
            pil = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
            scale = self.size / min(pil.size)
            width, height = (max(self.size, int(side * scale)) for side in pil.size)
            pil = pil.resize((width, height), Image.Resampling.BICUBIC)
            left, top = (width - self.size) // 2, (height - self.size) // 2
            pil = pil.crop((left, top, left + self.size, top + self.size))
            array = np.asarray(pil, dtype=np.float32) / 255.0
            batch.append((array - np.array(MEAN, np.float32)) / np.array(STD, np.float32))
        return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)

    def scores(self, images: Sequence[np.ndarray], text: str) -> np.ndarray:
        """``[n]``: each image's cosine similarity to ``text``."""
        tokens = self.tokenizer([text], padding="max_length", truncation=True, return_tensors="pt")
        with self._lock, torch.no_grad():
            image = self.model.get_image_features(pixel_values=self.pixels(images).to(self.device))
            words = self.model.get_text_features(input_ids=tokens.input_ids.to(self.device))
            image = _embeds(image)
            words = _embeds(words)
            image = image / image.norm(dim=-1, keepdim=True)
            words = words / words.norm(dim=-1, keepdim=True)
            return (image @ words.T)[:, 0].float().cpu().numpy()


def _embeds(output) -> torch.Tensor:
    """The projected embeddings, whether transformers returns a tensor or a model output."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def clip_scorer_for(settings: Settings, model_set: ModelSet) -> ClipScorer | None:
    """The CLIP scorer when the ``clip`` folder is local (or given by ``--weights clip=DIR``),
    else ``None``. A given folder that is not a CLIP model is an error naming it."""
    path = find_optional(settings, model_set, COMPONENT)
    if path is None:
        logger.info("no CLIP folder: attributes the face parser cannot see are not checked")
        return None
    device = settings.torch_device() if settings.faces_device == "auto" else settings.faces_device
    return ClipScorer(path, device)
