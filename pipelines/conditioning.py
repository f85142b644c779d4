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

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.models import ControlNetModel, MultiControlNetModel

ConditionImage = PIL.Image.Image | np.ndarray | torch.Tensor
ConditionImageInput = ConditionImage | list[ConditionImage]


#: diffusers' ControlNet condition processor (``control_image_processor``), used for its resizing.
RESIZER = VaeImageProcessor(do_convert_rgb=True, do_normalize=False)


def _condition_batch(
    image: ConditionImage, name: str, channels: int, size: tuple[int, int] | None
) -> torch.Tensor:
    """One item of a condition input as ``[B, channels, H, W]`` float32 in ``[0, 1]``."""
    if isinstance(image, PIL.Image.Image):
        if size is not None and (image.height, image.width) != size:
            image = RESIZER.resize(image, *size)
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
        tensor = tensor.float() / 255
    elif not tensor.is_floating_point():
        raise TypeError(f"`{name}` must be uint8 (0-255) or float (0-1); found {tensor.dtype}")
    tensor = tensor.float()
    low, high = tensor.min().item(), tensor.max().item()
    if low < 0 or high > 1:
        raise ValueError(
            f"`{name}` float values must lie in [0, 1]; found [{low:.3g}, {high:.3g}] "
            "(uint8 images are scaled for you)"
        )
    if size is not None and tuple(tensor.shape[-2:]) != size:
        tensor = RESIZER.resize(tensor, *size)
    return tensor


def condition_image_size(image: ConditionImageInput | list[ConditionImageInput] | None):
    """``(height, width)`` of the first image of a condition input, or ``None`` if unreadable."""
    while isinstance(image, (list, tuple)) and image:
        image = image[0]
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    if isinstance(image, np.ndarray) and image.ndim in (3, 4):
        return tuple(image.shape[-3:-1])
    if isinstance(image, torch.Tensor) and image.ndim in (3, 4):
        return tuple(image.shape[-2:])
    return None


def condition_image_tensor(
    image: ConditionImageInput, *, name: str, channels: int, size: tuple[int, int]
) -> torch.Tensor:
    """Return a condition image, or a batch of them, as ``[B, channels, H, W]`` float32 in [0, 1].

    Takes PIL images (converted to RGB), channels-last arrays ``[H, W, C]`` / ``[B, H, W, C]``
    and channels-first tensors ``[C, H, W]`` / ``[B, C, H, W]``, each ``uint8`` (0-255) or float
    (0-1), or a list of those. ``uint8`` arrays are scaled to ``[0, 1]`` (the studio's face
    drawings are ``uint8``). An image of another ``size`` (height, width) is resized as diffusers'
    ControlNet pipelines resize it (``VaeImageProcessor.resize``: Lanczos for PIL images, nearest
    for arrays and tensors), its aspect ratio not kept; a wrong layout or value range raises an
    error naming ``name``, what was expected and what came.
    """
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if not items:
        raise ValueError(f"`{name}` is an empty list; pass at least one image")
    return torch.cat([_condition_batch(item, name, channels, size) for item in items])


def check_condition_batch(image: torch.Tensor, *, name: str, batch_size: int) -> None:
    """Raise unless a condition batch holds one image for every prompt or one per prompt."""
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

    Adapted from diffusers' ``StableDiffusionControlNetPipeline.prepare_image``; the resizing
    happened in :func:`condition_image_tensor`.
    """
    repeat_by = batch_size * num_images_per_prompt if image.shape[0] == 1 else num_images_per_prompt
    image = image.repeat_interleave(repeat_by, dim=0).to(device=device, dtype=dtype)
    return torch.cat([image] * 2) if do_classifier_free_guidance else image


@dataclass(frozen=True)
class ConditionNet:
    """One ControlNet of a call, with its prepared condition, scale and guidance window.

    ``reads_identity``: its cross-attention reads the identity tokens (InstantID's IdentityNet)
    instead of the prompt embeddings. ``row_mask``: ``[batch, 1, 1, 1]``, zero on the rows whose
    image is generated without the identity (``identity_rows``): there the net adds nothing.
    """

    net: ControlNetModel
    image: torch.Tensor
    scale: float
    start: float
    end: float
    reads_identity: bool = False
    row_mask: torch.Tensor | None = None

    def keep(self, step: int, num_steps: int) -> float:
        """1 inside the guidance window at ``step``, else 0 (diffusers' ``controlnet_keep``)."""
        return 1.0 - float(step / num_steps < self.start or (step + 1) / num_steps > self.end)


def is_identitynet(net: Any) -> bool:
    """Whether ``net`` is InstantID's IdentityNet, by where it was loaded from.

    Its config is a plain SDXL ControlNet's, so the name tells: a hub id or folder whose last two
    parts mention InstantID or IdentityNet (``InstantX/InstantID``, ``.../InstantID/
    ControlNetModel``, the studio's ``identitynet`` folder), except a pipeline's own
    ``controlnet`` subfolder.
    """
    if not isinstance(net, ControlNetModel):
        return False
    parts = str(net.config.get("_name_or_path") or "").replace("\\", "/").lower().split("/")
    if parts[-1] == "controlnet":
        return False
    return any(key in part for part in parts[-2:] for key in ("instantid", "identitynet"))


def per_net(value: float | list[float], num_nets: int, name: str) -> list[float]:
    """One value per net from a float or a list of one per net."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_nets:
            raise ValueError(
                f"`{name}` has {len(value)} values for {num_nets} condition nets; pass one per "
                "net or a single float"
            )
        return [float(item) for item in value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"`{name}` must be a float or a list of floats; found {type(value).__name__}"
        )
    return [float(value)] * num_nets


class PortraitConditioningMixin:
    """Identity tokens and condition images for a diffusers text-to-image pipeline.

    The pipeline registers ``controlnet`` (or ``None``) and mixes in
    :class:`~adapters.IdentityAdapterMixin`; this mixin reads them, it owns no component.
    ``reference_arguments`` maps the names other pipelines use for what this one calls
    differently to the message naming the replacement.
    """

    reference_arguments: ClassVar[dict[str, str]] = {
        "callback": "diffusers' deprecated step callback; pass `callback_on_step_end=`",
        "callback_steps": "diffusers' deprecated step callback; pass `callback_on_step_end=`",
    }

    # -- output size and condition images -------------------------------------------------

    def default_height_width(
        self, height: int | None, width: int | None, conditions: list[Any]
    ) -> tuple[int, int]:
        """The output size: as given, else the first condition image's, else the UNet's."""
        sizes = [condition_image_size(image) for image in conditions if image is not None]
        sizes = [size for size in sizes if size is not None]
        if sizes:
            height = height or sizes[0][0]
            width = width or sizes[0][1]
        sample_size = self.unet.config.sample_size
        if isinstance(sample_size, int):
            sample_size = (sample_size, sample_size)
        height = height or sample_size[0] * self.vae_scale_factor
        width = width or sample_size[1] * self.vae_scale_factor
        return height, width

    def control_image_tensors(
        self,
        control_image: ConditionImageInput | list[ConditionImageInput] | None,
        *,
        height: int,
        width: int,
    ) -> list[torch.Tensor] | None:
        """Return one ``[B, C, height, width]`` batch in ``[0, 1]`` per ControlNet, or ``None``.

        With a ``MultiControlNetModel``, ``control_image`` is a list holding one condition input
        per net; with a single ``ControlNetModel`` it is one condition input (a list there is a
        batch). See :func:`condition_image_tensor` for the formats and the resizing.
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
                size=(height, width),
            )
            for index, (image, net) in enumerate(zip(images, nets, strict=True))
        ]

    def condition_nets(
        self,
        conditions: list[tuple[ControlNetModel | MultiControlNetModel, list[torch.Tensor], Any]],
        *,
        control_guidance_start: float | list[float] | None,
        control_guidance_end: float | list[float] | None,
        batch_size: int,
        num_images_per_prompt: int,
        device: torch.device,
        do_classifier_free_guidance: bool,
        identity_rows: Sequence[bool] | None = None,
    ) -> list[ConditionNet]:
        """The nets of a call, in order, each with its prepared condition and window.

        ``conditions`` holds ``(net, condition batches, conditioning scale)`` for each net slot
        with a condition image (a ``MultiControlNetModel`` brings one batch per net); the
        IdentityNet's entry reads the identity tokens and, with ``identity_rows``, acts on the
        identity's images only. ``None`` is a scale of 1 and the window ``[0, 1]``, as in
        diffusers.
        """
        num_images = batch_size * num_images_per_prompt
        row_mask = self.identity_row_mask(
            identity_rows,
            batch_size=num_images * (2 if do_classifier_free_guidance else 1),
            device=device,
        )
        entries = []
        for slot, images, scale in conditions:
            scale = 1.0 if scale is None else scale
            nets = slot.nets if isinstance(slot, MultiControlNetModel) else [slot]
            scales = per_net(scale, len(nets), "controlnet_conditioning_scale")
            reads_identity = slot is getattr(self, "identitynet", None)
            entries += [
                (net, image, value, reads_identity)
                for net, image, value in zip(nets, images, scales, strict=True)
            ]
        starts = per_net(
            0.0 if control_guidance_start is None else control_guidance_start,
            len(entries),
            "control_guidance_start",
        )
        ends = per_net(
            1.0 if control_guidance_end is None else control_guidance_end,
            len(entries),
            "control_guidance_end",
        )
        for start, end in zip(starts, ends, strict=True):
            if not 0.0 <= start < end <= 1.0:
                raise ValueError(
                    "`control_guidance_start` must be below `control_guidance_end`, both in "
                    f"[0, 1]; found {start} and {end}"
                )
        return [
            ConditionNet(
                net=net,
                image=prepare_condition_image(
                    image,
                    batch_size=batch_size,
                    num_images_per_prompt=num_images_per_prompt,
                    device=device,
                    dtype=net.dtype,
                    do_classifier_free_guidance=do_classifier_free_guidance,
                ),
                scale=value,
                start=start,
                end=end,
                reads_identity=reads_identity,
                row_mask=row_mask if reads_identity else None,
            )
            for (net, image, value, reads_identity), start, end in zip(
                entries, starts, ends, strict=True
            )
        ]

    def condition_images(
        self, nets: list[ConditionNet], *, identity: bool
    ) -> torch.Tensor | list[torch.Tensor] | None:
        """The prepared conditions of the IdentityNet (``identity``) or of the ControlNet(s), as
        the step callback sees them: a batch, or a list for a ``MultiControlNetModel``."""
        images = [entry.image for entry in nets if entry.reads_identity == identity]
        if not images:
            return None
        multi = not identity and isinstance(self.controlnet, MultiControlNetModel)
        return images if multi else images[0]

    def with_condition_images(
        self,
        nets: list[ConditionNet],
        *,
        control_image: torch.Tensor | list[torch.Tensor] | None,
        keypoint_image: torch.Tensor | None = None,
    ) -> list[ConditionNet]:
        """``nets`` reading the conditions a step callback returned (as :meth:`condition_images`
        gave them)."""
        controls = iter(control_image if isinstance(control_image, list) else [control_image])
        return [
            replace(entry, image=keypoint_image if entry.reads_identity else next(controls))
            for entry in nets
        ]

    def condition_residuals(
        self,
        nets: list[ConditionNet],
        latent_model_input: torch.Tensor,
        latents: torch.Tensor,
        t: torch.Tensor,
        *,
        step: int,
        num_steps: int,
        prompt_embeds: torch.Tensor,
        identity_tokens: torch.Tensor | None,
        added_cond_kwargs: dict[str, torch.Tensor] | None,
        guess_mode: bool,
    ) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
        """The summed residuals of the condition nets at one step; ``(None, None)`` without nets.

        Each net runs as in diffusers' ControlNet pipelines, scaled inside its guidance window;
        the IdentityNet reads ``identity_tokens``, the others ``prompt_embeds``. In guess mode
        under classifier-free guidance the nets see only the conditional half and add nothing to
        the unconditional one.
        """
        down = mid = None
        for entry in nets:
            # diffusers: a net that pools its condition globally always runs in guess mode
            guess = guess_mode or bool(entry.net.config.global_pool_conditions)
            only_conditional = guess and self.do_classifier_free_guidance
            sample, image, extra = latent_model_input, entry.image, added_cond_kwargs
            hidden = identity_tokens if entry.reads_identity else prompt_embeds
            if only_conditional:
                sample = self.scheduler.scale_model_input(latents, t)
                hidden, image = hidden.chunk(2)[1], image.chunk(2)[1]
                if extra is not None:
                    extra = {key: value.chunk(2)[1] for key, value in extra.items()}
            net_down, net_mid = entry.net(
                sample,
                t,
                encoder_hidden_states=hidden,
                controlnet_cond=image,
                conditioning_scale=entry.scale * entry.keep(step, num_steps),
                guess_mode=guess,
                added_cond_kwargs=extra,
                return_dict=False,
            )
            if only_conditional:
                net_down = [torch.cat([torch.zeros_like(d), d]) for d in net_down]
                net_mid = torch.cat([torch.zeros_like(net_mid), net_mid])
            if entry.row_mask is not None:
                net_down = [d * entry.row_mask for d in net_down]
                net_mid = net_mid * entry.row_mask
            if down is None:
                down, mid = net_down, net_mid
            else:
                down = [first + second for first, second in zip(down, net_down, strict=True)]
                mid = mid + net_mid
        return down, mid

    # -- checks --------------------------------------------------------------------------------

    @staticmethod
    def check_condition_options(
        *,
        has_nets: bool,
        guess_mode: bool,
        control_guidance_start: float | list[float] | None,
        control_guidance_end: float | list[float] | None,
    ) -> None:
        """Refuse options of the condition nets in a call that runs none."""
        if has_nets:
            return
        for name, value in (
            ("guess_mode", guess_mode or None),
            ("control_guidance_start", control_guidance_start),
            ("control_guidance_end", control_guidance_end),
        ):
            if value is not None:
                raise ValueError(
                    f"`{name}` applies to the condition nets, and this call runs none; pass a "
                    "condition image (`control_image`, or `keypoint_image` for the IdentityNet)"
                )

    def check_reference_arguments(self, kwargs: dict[str, Any]) -> None:
        """Refuse keyword arguments of other pipelines, naming this one's replacement."""
        for name in kwargs:
            reason = self.reference_arguments.get(name)
            if reason is None:
                raise TypeError(
                    f"{type(self).__name__}.__call__() got an unexpected keyword argument {name!r}"
                )
            raise TypeError(f"{type(self).__name__} does not take `{name}`: {reason}")

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
        identity_embeds: torch.Tensor | None,
        identity_scale: float | dict | None,
        identity_image: PipelineImageInput | None,
        control_images: list[torch.Tensor] | None,
        controlnet_conditioning_scale: float | list[float] | None,
        ip_adapter_image: PipelineImageInput | None,
        ip_adapter_image_embeds: list[torch.Tensor] | None,
        identity_rows: Sequence[bool] | None = None,
        num_images_per_prompt: int = 1,
    ) -> None:
        """Raise if the identity, IP-Adapter or control inputs do not fit the pipeline or call.

        ``control_images`` are the batches from :meth:`control_image_tensors`.
        """
        self.check_identity_inputs(
            identity_embeds=identity_embeds,
            identity_scale=identity_scale,
            identity_image=identity_image,
        )
        if identity_rows is not None:
            if identity_embeds is None:
                raise ValueError(
                    "`identity_rows` was given without `identity_embeds`; pass the person's "
                    "embeddings too"
                )
            self.check_identity_rows(identity_rows, num_images=batch_size * num_images_per_prompt)
        ip_adapter_input = ip_adapter_image is not None or ip_adapter_image_embeds is not None
        if ip_adapter_input and getattr(self.unet, "encoder_hid_proj", None) is None:
            raise ValueError(
                "`ip_adapter_image` / `ip_adapter_image_embeds` feed diffusers' IP-Adapter, which "
                "is not loaded"
                + (
                    f"; the loaded {self.identity_family} identity adapter takes the face "
                    "embeddings as `identity_embeds=` ([num_refs, 512], e.g. insightface's "
                    "`face.normed_embedding`)"
                    if self.identity_family is not None
                    else "; load one with `pipe.load_ip_adapter(...)`"
                )
            )
        if control_images is None:
            if controlnet_conditioning_scale is not None:
                raise ValueError(
                    "`controlnet_conditioning_scale` scales the `controlnet` on `control_image`, "
                    "which this call does not have"
                    + (
                        "; the IdentityNet's scale is `identitynet_conditioning_scale`"
                        if getattr(self, "identitynet", None) is not None
                        else "; pass `control_image=` too"
                    )
                )
            return
        for index, image in enumerate(control_images):
            check_condition_batch(
                image,
                name="control_image" if len(control_images) == 1 else f"control_image[{index}]",
                batch_size=batch_size,
            )
        if controlnet_conditioning_scale is not None:
            num_nets = len(getattr(self.controlnet, "nets", [self.controlnet]))
            if not isinstance(self.controlnet, MultiControlNetModel) and isinstance(
                controlnet_conditioning_scale, (list, tuple)
            ):
                raise TypeError(
                    "`controlnet_conditioning_scale` must be a float for a single ControlNet; "
                    f"found {type(controlnet_conditioning_scale).__name__}"
                )
            per_net(controlnet_conditioning_scale, num_nets, "controlnet_conditioning_scale")

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
        plus = self.identity_architecture.takes_clip_features
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
