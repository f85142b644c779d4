# Copyright 2026 The Portrait Studio authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""What both portrait pipelines add to diffusers: identity tokens and condition images.

:class:`PortraitConditioningMixin` is mixed into ``PortraitPipeline`` (SD1.5) and
``PortraitXLPipeline`` (SDXL) before their diffusers base class. It holds the project's own
logic of a call: the output size from the condition images, the checks of the identity and
condition inputs, the identity tokens and how they reach the UNet, and the preparation of the
condition batches. The pipelines keep diffusers' own steps (prompt encoding, the denoising loop,
decoding), marked ``# Copied from``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.image_processor import PipelineImageInput
from diffusers.models import ControlNetModel, MultiControlNetModel

from adapters import IdentityAttnProcessor

ConditionImage = PIL.Image.Image | np.ndarray | torch.Tensor
ConditionImageInput = ConditionImage | list[ConditionImage]


def _condition_batch(image: ConditionImage, name: str, channels: int) -> torch.Tensor:
    """One item of a condition input as ``[B, channels, H, W]`` float32 in ``[0, 1]``."""
    if isinstance(image, PIL.Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim not in (3, 4) or image.shape[-1] != channels:
            raise ValueError(
                f"`{name}` arrays must be channels-last [H, W, {channels}] or "
                f"[B, H, W, {channels}]; found shape {image.shape}"
            )
        tensor = torch.from_numpy(np.array(image)).movedim(-1, -3)
    elif isinstance(image, torch.Tensor):
        if image.ndim not in (3, 4) or image.shape[-3] != channels:
            raise ValueError(
                f"`{name}` tensors must be channels-first [{channels}, H, W] or "
                f"[B, {channels}, H, W]; found shape {tuple(image.shape)}"
            )
        tensor = image
    else:
        raise TypeError(
            f"`{name}` must be a PIL image, a numpy array, a torch tensor or a list of them; "
            f"found {type(image).__name__}"
        )
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255
    if not tensor.is_floating_point():
        raise TypeError(f"`{name}` must be uint8 (0-255) or float (0-1); found {tensor.dtype}")
    tensor = tensor.float()
    low, high = tensor.min().item(), tensor.max().item()
    if low < 0 or high > 1:
        raise ValueError(
            f"`{name}` float values must lie in [0, 1]; found [{low:.3g}, {high:.3g}] "
            "(uint8 images are scaled for you)"
        )
    return tensor


def condition_image_tensor(image: ConditionImageInput, *, name: str, channels: int) -> torch.Tensor:
    """Return a condition image, or a batch of them, as ``[B, channels, H, W]`` float32 in [0, 1].

    Takes PIL images (converted to RGB), channels-last arrays ``[H, W, C]`` / ``[B, H, W, C]``
    and channels-first tensors ``[C, H, W]`` / ``[B, C, H, W]``, each ``uint8`` (0-255) or float
    (0-1), or a list of those. Unlike diffusers' ``VaeImageProcessor``, ``uint8`` arrays are
    scaled to ``[0, 1]`` (the studio's face drawings are ``uint8``) and nothing is resized: a
    landmark drawing stretched to another aspect ratio would describe another face, so a wrong
    size, layout or value range raises an error naming ``name``, what was expected and what came.
    """
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if not items:
        raise ValueError(f"`{name}` is an empty list; pass at least one image")
    batch = [_condition_batch(item, name, channels) for item in items]
    sizes = sorted({tuple(item.shape[-2:]) for item in batch})
    if len(sizes) > 1:
        found = ", ".join(f"{h}x{w}" for h, w in sizes)
        raise ValueError(f"`{name}` images differ in size (H x W): {found}; pass one size")
    return torch.cat(batch)


def check_condition_image(
    image: torch.Tensor, *, name: str, height: int, width: int, batch_size: int
) -> None:
    """Raise if a condition batch from :func:`condition_image_tensor` does not fit the request."""
    found_height, found_width = image.shape[-2:]
    if (found_height, found_width) != (height, width):
        raise ValueError(
            f"`{name}` is {found_height}x{found_width} (H x W) but the output is "
            f"{height}x{width}; every condition image must have the output size (`height` and "
            "`width`, which default to the size of the first condition image)"
        )
    if image.shape[0] not in (1, batch_size):
        raise ValueError(
            f"`{name}` holds {image.shape[0]} images for {batch_size} prompts; pass one image "
            "for every prompt or one per prompt"
        )


def prepare_condition_image(
    image: torch.Tensor,
    *,
    batch_size: int,
    num_images_per_prompt: int,
    device: torch.device,
    dtype: torch.dtype,
    do_classifier_free_guidance: bool,
) -> torch.Tensor:
    """Repeat a checked condition batch for every image (and the negative half under CFG).

    Adapted from diffusers' ``StableDiffusionControlNetPipeline.prepare_image``, without its
    resizing (:func:`condition_image_tensor` already checked the size).
    """
    repeat_by = batch_size * num_images_per_prompt if image.shape[0] == 1 else num_images_per_prompt
    image = image.repeat_interleave(repeat_by, dim=0).to(device=device, dtype=dtype)
    return torch.cat([image] * 2) if do_classifier_free_guidance else image


class PortraitConditioningMixin:
    """Identity tokens and condition images for a diffusers text-to-image pipeline.

    The pipeline registers ``controlnet`` (or ``None``) and mixes in
    :class:`~adapters.IdentityAdapterMixin`; this mixin reads them, it owns no component.
    """

    # -- output size and condition images -------------------------------------------------

    def default_height_width(
        self, height: int | None, width: int | None, conditions: list[torch.Tensor]
    ) -> tuple[int, int]:
        """The output size: as given, else the first condition image's, else the UNet's."""
        if conditions:
            height = height or conditions[0].shape[-2]
            width = width or conditions[0].shape[-1]
        sample_size = self.unet.config.sample_size
        if isinstance(sample_size, int):
            sample_size = (sample_size, sample_size)
        height = height or sample_size[0] * self.vae_scale_factor
        width = width or sample_size[1] * self.vae_scale_factor
        return height, width

    def control_image_tensors(
        self, control_image: ConditionImageInput | list[ConditionImageInput] | None
    ) -> list[torch.Tensor] | None:
        """Return one ``[B, C, H, W]`` batch in ``[0, 1]`` per ControlNet, or ``None`` without one.

        With a ``MultiControlNetModel``, ``control_image`` is a list holding one condition input
        per net; with a single ``ControlNetModel`` it is one condition input (a list there is a
        batch). Layout, channels and value range are checked here (see
        :func:`condition_image_tensor`); size and batch by :meth:`check_conditioning_inputs`.
        """
        if control_image is None:
            return None
        controlnet: ControlNetModel | MultiControlNetModel | None = self.controlnet
        if controlnet is None:
            raise ValueError(
                "`control_image` was given but the pipeline has no `controlnet`; pass one to "
                "`from_pretrained(..., controlnet=ControlNetModel.from_pretrained(...))`"
            )
        if isinstance(controlnet, MultiControlNetModel):
            nets = controlnet.nets
            if not isinstance(control_image, (list, tuple)) or len(control_image) != len(nets):
                found = (
                    f"a list of {len(control_image)}"
                    if isinstance(control_image, (list, tuple))
                    else f"a {type(control_image).__name__}"
                )
                raise ValueError(
                    f"`control_image` must be a list with one image per ControlNet ({len(nets)} "
                    f"nets); found {found}"
                )
            images = list(control_image)
        else:
            nets, images = [controlnet], [control_image]
        return [
            condition_image_tensor(
                image,
                name="control_image" if len(nets) == 1 else f"control_image[{index}]",
                channels=net.config.conditioning_channels,
            )
            for index, (image, net) in enumerate(zip(images, nets, strict=True))
        ]

    def prepare_control_images(
        self,
        control_images: list[torch.Tensor],
        *,
        batch_size: int,
        num_images_per_prompt: int,
        device: torch.device,
        do_classifier_free_guidance: bool,
    ) -> torch.Tensor | list[torch.Tensor]:
        """The ControlNet's ``controlnet_cond``: one batch, or a list for a MultiControlNet."""
        prepared = [
            prepare_condition_image(
                image,
                batch_size=batch_size,
                num_images_per_prompt=num_images_per_prompt,
                device=device,
                dtype=self.controlnet.dtype,
                do_classifier_free_guidance=do_classifier_free_guidance,
            )
            for image in control_images
        ]
        return prepared if isinstance(self.controlnet, MultiControlNetModel) else prepared[0]

    # -- checks --------------------------------------------------------------------------------

    @staticmethod
    def prompt_batch_size(
        prompt: str | list[str] | None, prompt_embeds: torch.Tensor | None
    ) -> int:
        """The number of prompts of a call, as diffusers' pipelines count them."""
        if isinstance(prompt, list):
            return len(prompt)
        return 1 if prompt is not None else prompt_embeds.shape[0]

    def check_conditioning_inputs(
        self,
        *,
        batch_size: int,
        height: int,
        width: int,
        identity_embeds: torch.Tensor | None,
        identity_scale: float | dict | None,
        identity_image: PipelineImageInput | None,
        control_images: list[torch.Tensor] | None,
        controlnet_conditioning_scale: float | list[float],
    ) -> None:
        """Raise if the identity or control inputs do not fit the pipeline or the request.

        ``control_images`` are the batches from :meth:`control_image_tensors`.
        """
        self.check_identity_inputs(
            identity_embeds=identity_embeds,
            identity_scale=identity_scale,
            identity_image=identity_image,
        )
        if control_images is None:
            return
        for index, image in enumerate(control_images):
            check_condition_image(
                image,
                name="control_image" if len(control_images) == 1 else f"control_image[{index}]",
                height=height,
                width=width,
                batch_size=batch_size,
            )
        scale = controlnet_conditioning_scale
        if isinstance(self.controlnet, MultiControlNetModel):
            if isinstance(scale, (list, tuple)) and len(scale) != len(self.controlnet.nets):
                raise ValueError(
                    f"`controlnet_conditioning_scale` has {len(scale)} values for "
                    f"{len(self.controlnet.nets)} ControlNets; pass one per net or a single float"
                )
        elif not isinstance(scale, (int, float)):
            raise TypeError(
                "`controlnet_conditioning_scale` must be a float for a single ControlNet; found "
                f"{type(scale).__name__}"
            )

    def check_identity_inputs(
        self,
        *,
        identity_embeds: torch.Tensor | None,
        identity_scale: float | dict | None,
        identity_image: PipelineImageInput | None,
    ) -> None:
        """Raise if the identity inputs do not go together or the pipeline lacks what they need.

        The embeddings themselves (``[num_refs, 512]``, unit-norm) are checked by
        ``encode_identity``, which knows the loaded adapter.
        """
        if identity_embeds is None:
            for name, value in (
                ("identity_scale", identity_scale),
                ("identity_image", identity_image),
            ):
                if value is not None:
                    raise ValueError(
                        f"`{name}` was given without `identity_embeds`; pass the person's "
                        "embeddings, or leave both unset for generation without an identity"
                    )
            return
        if getattr(self, "identity_projection", None) is None:
            raise ValueError(
                "`identity_embeds` needs an identity adapter; load one first with "
                "`pipe.load_identity_adapter(path)`"
            )
        plus = self.identity_family.startswith("faceid-plusv2")
        if plus and identity_image is None:
            raise ValueError(
                f"the {self.identity_family} adapter needs `identity_image`: the aligned face "
                "crops of the reference photos, one per row of `identity_embeds`"
            )
        if not plus and identity_image is not None:
            raise ValueError(
                "`identity_image` is read by FaceID-PlusV2 adapters only; the loaded adapter is "
                f"{self.identity_family}"
            )
        if identity_image is not None and getattr(self, "image_encoder", None) is None:
            raise ValueError(
                "`identity_image` is encoded by the pipeline's `image_encoder`, which is not "
                'loaded; pass `image_encoder=CLIPVisionModelWithProjection.from_pretrained("h94/'
                'IP-Adapter", subfolder="models/image_encoder")` to `from_pretrained`'
            )

    # -- identity ------------------------------------------------------------------------------

    def encode_identity_tokens(
        self,
        identity_embeds: torch.Tensor,
        identity_image: PipelineImageInput | None,
        *,
        device: torch.device,
        num_images: int,
        do_classifier_free_guidance: bool,
    ) -> torch.Tensor:
        """The adapter's identity tokens, with the face crops' CLIP features when given (PlusV2).

        ``identity_image`` goes through diffusers' ``encode_image``: the feature extractor, then
        the image encoder's penultimate hidden states, and for the negative those of all-zero
        pixel values, as the FaceID-PlusV2 reference encodes its face crops.
        """
        clip_image_embeds = negative_clip_image_embeds = None
        if identity_image is not None:
            clip_image_embeds, negative_clip_image_embeds = self.encode_image(
                identity_image, device, 1, output_hidden_states=True
            )
        return self.encode_identity(
            identity_embeds,
            num_images=num_images,
            do_classifier_free_guidance=do_classifier_free_guidance,
            clip_image_embeds=clip_image_embeds,
            negative_clip_image_embeds=negative_clip_image_embeds,
        )

    @contextmanager
    def identity_attention(
        self,
        cross_attention_kwargs: dict[str, Any] | None,
        *,
        identity_tokens: torch.Tensor | None,
        identity_scale: float | dict | None,
    ) -> Iterator[dict[str, Any] | None]:
        """Yield the UNet's ``cross_attention_kwargs`` for one call, carrying the identity.

        The tokens go under ``"identity_tokens"``; ``identity_scale`` (as ``set_identity_scale``
        takes it) holds while the context is open, then each layer's scale is restored. This is
        the one place where the identity reaches the UNet's attention processors.
        """
        if identity_tokens is None:
            yield cross_attention_kwargs
            return
        kwargs = {**(cross_attention_kwargs or {}), "identity_tokens": identity_tokens}
        if identity_scale is None:
            yield kwargs
            return
        processors = [
            processor
            for processor in self.unet.attn_processors.values()
            if isinstance(processor, IdentityAttnProcessor)
        ]
        previous = [processor.scale for processor in processors]
        self.set_identity_scale(identity_scale)
        try:
            yield kwargs
        finally:
            for processor, value in zip(processors, previous, strict=True):
                processor.scale = value
