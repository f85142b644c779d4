# Copyright 2026 The Portrait Studio authors and The HuggingFace Team. All rights reserved.
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
"""Stable Diffusion 1.5 portraits: identity adapter tokens plus an optional face-mesh ControlNet."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import PipelineImageInput
from diffusers.models import (
    AutoencoderKL,
    ControlNetModel,
    ModelMixin,
    MultiControlNetModel,
    UNet2DConditionModel,
)
from diffusers.pipelines.stable_diffusion import (
    StableDiffusionPipelineOutput,
    StableDiffusionSafetyChecker,
)
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    rescale_noise_cfg,
    retrieve_timesteps,
)
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import logging, replace_example_docstring
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from adapters import IdentityAdapterMixin

logger = logging.get_logger(__name__)

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers import ControlNetModel
        >>> from huggingface_hub import hf_hub_download

        >>> from pipelines import PortraitPipeline

        >>> controlnet = ControlNetModel.from_pretrained(
        ...     "CrucibleAI/ControlNetMediaPipeFace",
        ...     subfolder="diffusion_sd15",
        ...     dtype=torch.float16,
        ... )
        >>> pipe = PortraitPipeline.from_pretrained(
        ...     "stable-diffusion-v1-5/stable-diffusion-v1-5",
        ...     controlnet=controlnet,
        ...     dtype=torch.float16,
        ... ).to("cuda")
        >>> pipe.load_identity_adapter(
        ...     hf_hub_download("h94/IP-Adapter-FaceID", "ip-adapter-faceid_sd15.bin"), scale=0.8
        ... )

        >>> # identity_embeds: [num_refs, 512] unit-norm ArcFace embeddings of the person, e.g.
        >>> # studio.identity.profile_identity_embeds(profile, "arcface");
        >>> # mesh: an RGB uint8 [512, 512, 3] face-mesh drawing (the studio's draw_face_mesh)
        >>> image = pipe(
        ...     "a studio portrait photo of a person, soft light",
        ...     identity_embeds=identity_embeds,
        ...     control_image=mesh,
        ...     controlnet_conditioning_scale=0.6,
        ...     num_inference_steps=30,
        ... ).images[0]
        ```
"""

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


def control_image_tensors(
    controlnet: ControlNetModel | MultiControlNetModel | None,
    control_image: ConditionImageInput | list[ConditionImageInput] | None,
) -> list[torch.Tensor] | None:
    """Return one ``[B, C, H, W]`` batch in ``[0, 1]`` per ControlNet, or ``None`` without one.

    With a ``MultiControlNetModel``, ``control_image`` is a list holding one condition input per
    net; with a single ``ControlNetModel`` it is one condition input (a list there is a batch).
    Layout, channels and value range are checked here (see :func:`condition_image_tensor`);
    size and batch by :func:`check_condition_image`.
    """
    if control_image is None:
        return None
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


def check_controlnet_conditioning_scale(
    controlnet: ControlNetModel | MultiControlNetModel, scale: float | list[float]
) -> None:
    """Raise unless ``scale`` is a float, or for a ``MultiControlNetModel`` one float per net."""
    if isinstance(controlnet, MultiControlNetModel):
        if isinstance(scale, (list, tuple)) and len(scale) != len(controlnet.nets):
            raise ValueError(
                f"`controlnet_conditioning_scale` has {len(scale)} values for "
                f"{len(controlnet.nets)} ControlNets; pass one per net or a single float"
            )
    elif not isinstance(scale, (int, float)):
        raise TypeError(
            "`controlnet_conditioning_scale` must be a float for a single ControlNet; found "
            f"{type(scale).__name__}"
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


def check_identity_inputs(
    pipeline: IdentityAdapterMixin,
    identity_embeds: torch.Tensor | None,
    identity_scale: float | dict | None,
    identity_image: PipelineImageInput | None,
) -> None:
    """Raise if the identity inputs do not go together or the pipeline lacks what they need.

    The embeddings themselves (``[num_refs, 512]``, unit-norm) are checked by
    ``encode_identity``, which knows the loaded adapter.
    """
    if identity_embeds is None:
        for name, value in (("identity_scale", identity_scale), ("identity_image", identity_image)):
            if value is not None:
                raise ValueError(
                    f"`{name}` was given without `identity_embeds`; pass the person's "
                    "embeddings, or leave both unset for generation without an identity"
                )
        return
    if getattr(pipeline, "identity_projection", None) is None:
        raise ValueError(
            "`identity_embeds` needs an identity adapter; load one first with "
            "`pipe.load_identity_adapter(path)`"
        )
    plus = pipeline.identity_family.startswith("faceid-plusv2")
    if plus and identity_image is None:
        raise ValueError(
            f"the {pipeline.identity_family} adapter needs `identity_image`: the aligned face "
            "crops of the reference photos, one per row of `identity_embeds`"
        )
    if not plus and identity_image is not None:
        raise ValueError(
            "`identity_image` is read by FaceID-PlusV2 adapters only; the loaded adapter is "
            f"{pipeline.identity_family}"
        )
    if identity_image is not None and getattr(pipeline, "image_encoder", None) is None:
        raise ValueError(
            "`identity_image` is encoded by the pipeline's `image_encoder`, which is not loaded; "
            'pass `image_encoder=CLIPVisionModelWithProjection.from_pretrained("h94/IP-Adapter", '
            'subfolder="models/image_encoder")` to `from_pretrained`'
        )


def encode_identity_tokens(
    pipeline: IdentityAdapterMixin,
    identity_embeds: torch.Tensor,
    identity_image: PipelineImageInput | None,
    *,
    device: torch.device,
    num_images: int,
    do_classifier_free_guidance: bool,
) -> torch.Tensor:
    """The adapter's identity tokens, with the face crops' CLIP features when given (PlusV2).

    ``identity_image`` goes through diffusers' ``encode_image``: the feature extractor, then the
    image encoder's penultimate hidden states, and for the negative those of all-zero pixel
    values, as the FaceID-PlusV2 reference encodes its face crops.
    """
    clip_image_embeds = negative_clip_image_embeds = None
    if identity_image is not None:
        clip_image_embeds, negative_clip_image_embeds = pipeline.encode_image(
            identity_image, device, 1, output_hidden_states=True
        )
    return pipeline.encode_identity(
        identity_embeds,
        num_images=num_images,
        do_classifier_free_guidance=do_classifier_free_guidance,
        clip_image_embeds=clip_image_embeds,
        negative_clip_image_embeds=negative_clip_image_embeds,
    )


class PortraitPipeline(IdentityAdapterMixin, StableDiffusionPipeline):
    r"""
    Pipeline for identity-preserving portraits with Stable Diffusion 1.5.

    A [`~diffusers.StableDiffusionPipeline`] whose denoising loop also feeds the identity
    adapter's tokens to the UNet (through `cross_attention_kwargs["portrait"]`) and, when a
    `control_image` is given, adds the residuals of one or more ControlNets (e.g. the MediaPipe
    face-mesh ControlNet). Without `identity_embeds` and `control_image` it generates exactly
    what [`~diffusers.StableDiffusionPipeline`] generates.

    The pipeline also inherits the loading methods of [`~diffusers.StableDiffusionPipeline`]
    (textual inversion, LoRA, single file, IP-Adapter) and
    [`~adapters.IdentityAdapterMixin.load_identity_adapter`] /
    [`~adapters.IdentityAdapterMixin.set_identity_scale`] /
    [`~adapters.IdentityAdapterMixin.unload_identity_adapter`].

    With `enable_model_cpu_offload`, the ControlNet is not part of `model_cpu_offload_seq`: it
    runs at every step beside the UNet, and in the chain each step would move it to and from the
    accelerator. Like diffusers' ControlNet pipelines, it gets its own hook instead (loaded on
    first use, offloaded at the end of the call); `identity_attn` holds weights that run inside
    the UNet's attention processors, so they move with the UNet.

    Args:
        vae ([`AutoencoderKL`]):
            Variational Auto-Encoder (VAE) model to encode and decode images to and from latent
            representations.
        text_encoder ([`~transformers.CLIPTextModel`]):
            Frozen text-encoder.
        tokenizer ([`~transformers.CLIPTokenizer`]):
            A `CLIPTokenizer` to tokenize text.
        unet ([`UNet2DConditionModel`]):
            A `UNet2DConditionModel` to denoise the encoded image latents.
        scheduler ([`SchedulerMixin`]):
            A scheduler to be used in combination with `unet` to denoise the encoded image latents.
        safety_checker ([`StableDiffusionSafetyChecker`], *optional*):
            Classification module that estimates whether generated images could be considered
            offensive or harmful.
        feature_extractor ([`~transformers.CLIPImageProcessor`], *optional*):
            Prepares images for the `safety_checker` and the `image_encoder`.
        image_encoder ([`~transformers.CLIPVisionModelWithProjection`], *optional*):
            Image encoder for IP-Adapters and for the face crops of FaceID-PlusV2
            (`identity_image`).
        controlnet ([`ControlNetModel`] or [`MultiControlNetModel`], *optional*):
            ControlNet(s) conditioned on `control_image`. A list or tuple becomes a
            [`MultiControlNetModel`], whose residuals are summed.
        identity_projection ([`ModelMixin`], *optional*):
            The identity adapter's projection from face embeddings to identity tokens; set by
            [`~adapters.IdentityAdapterMixin.load_identity_adapter`].
        identity_attn ([`ModelMixin`], *optional*):
            The identity adapter's attention weights, used by the processors it installs on the
            UNet; set by [`~adapters.IdentityAdapterMixin.load_identity_adapter`].
        requires_safety_checker (`bool`, *optional*, defaults to `True`):
            Whether to warn when the pipeline runs without a safety checker.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->identity_projection->unet->vae"
    _optional_components: ClassVar[list[str]] = [
        "safety_checker",
        "feature_extractor",
        "image_encoder",
        "controlnet",
        "identity_projection",
        "identity_attn",
    ]
    _exclude_from_cpu_offload: ClassVar[list[str]] = ["safety_checker"]
    _callback_tensor_inputs: ClassVar[list[str]] = [
        "latents",
        "prompt_embeds",
        "negative_prompt_embeds",
        "control_image",
    ]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        safety_checker: StableDiffusionSafetyChecker | None = None,
        feature_extractor: CLIPImageProcessor | None = None,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        controlnet: ControlNetModel | list[ControlNetModel] | MultiControlNetModel | None = None,
        identity_projection: ModelMixin | None = None,
        identity_attn: ModelMixin | None = None,
        requires_safety_checker: bool = True,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
            requires_safety_checker=requires_safety_checker,
        )
        if isinstance(controlnet, (list, tuple)):
            controlnet = MultiControlNetModel(controlnet)
        self.register_modules(
            controlnet=controlnet,
            identity_projection=identity_projection,
            identity_attn=identity_attn,
        )

    def check_inputs(
        self,
        prompt: str | list[str] | None,
        height: int,
        width: int,
        callback_steps: int | None,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: PipelineImageInput | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] | None = None,
        identity_embeds: torch.Tensor | None = None,
        identity_scale: float | dict | None = None,
        identity_image: PipelineImageInput | None = None,
        control_images: list[torch.Tensor] | None = None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        identity_rows: Sequence[bool] | None = None,
        num_images_per_prompt: int = 1,
    ) -> None:
        """[`~diffusers.StableDiffusionPipeline.check_inputs`] plus the identity and control inputs.

        `control_images` are the batches from [`~pipelines.portrait.control_image_tensors`].
        """
        super().check_inputs(
            prompt,
            height,
            width,
            callback_steps,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            ip_adapter_image,
            ip_adapter_image_embeds,
            callback_on_step_end_tensor_inputs,
        )
        check_identity_inputs(self, identity_embeds, identity_scale, identity_image)
        batch_size = len(prompt) if isinstance(prompt, list) else 1
        if prompt is None:
            batch_size = prompt_embeds.shape[0]
        if identity_rows is not None and identity_embeds is None:
            raise ValueError("`identity_rows` was given without `identity_embeds`")
        self.check_identity_rows(identity_rows, num_images=batch_size * num_images_per_prompt)
        if control_images is None:
            return
        for index, image in enumerate(control_images):
            name = "control_image" if len(control_images) == 1 else f"control_image[{index}]"
            check_condition_image(
                image, name=name, height=height, width=width, batch_size=batch_size
            )
        check_controlnet_conditioning_scale(self.controlnet, controlnet_conditioning_scale)

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        identity_embeds: torch.Tensor | None = None,
        identity_scale: float | dict | None = None,
        identity_image: PipelineImageInput | None = None,
        identity_rows: Sequence[bool] | None = None,
        control_image: ConditionImageInput | list[ConditionImageInput] | None = None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        ip_adapter_image: PipelineImageInput | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[[Any, int, int, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> StableDiffusionPipelineOutput | tuple:
        r"""
        The call function to the pipeline for generation.

        Args:
            prompt (`str` or `list[str]`, *optional*):
                The prompt or prompts to guide image generation. If not defined, you need to pass
                `prompt_embeds`.
            height (`int`, *optional*):
                The height in pixels of the generated image. Defaults to the height of
                `control_image` when one is given, else to
                `self.unet.config.sample_size * self.vae_scale_factor`.
            width (`int`, *optional*):
                The width in pixels of the generated image; defaults like `height`.
            num_inference_steps (`int`, *optional*, defaults to 50):
                The number of denoising steps.
            timesteps (`list[int]`, *optional*):
                Custom timesteps for schedulers whose `set_timesteps` takes `timesteps`.
            sigmas (`list[float]`, *optional*):
                Custom sigmas for schedulers whose `set_timesteps` takes `sigmas`.
            guidance_scale (`float`, *optional*, defaults to 7.5):
                Classifier-free guidance scale; guidance is enabled when `guidance_scale > 1`.
            negative_prompt (`str` or `list[str]`, *optional*):
                The prompt or prompts to guide what to not include in image generation.
            num_images_per_prompt (`int`, *optional*, defaults to 1):
                The number of images to generate per prompt.
            eta (`float`, *optional*, defaults to 0.0):
                Parameter eta (η) of the DDIM scheduler; ignored by other schedulers.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                Generator(s) to make generation deterministic.
            latents (`torch.Tensor`, *optional*):
                Pre-generated noisy latents; sampled with `generator` if not given.
            prompt_embeds (`torch.Tensor`, *optional*):
                Pre-generated text embeddings.
            negative_prompt_embeds (`torch.Tensor`, *optional*):
                Pre-generated negative text embeddings.
            identity_embeds (`torch.Tensor`, *optional*):
                `[num_refs, 512]` unit-norm face embeddings of one person (one row per reference
                photo), turned into identity tokens by the loaded identity adapter. `None`
                generates without an identity.
            identity_scale (`float` or `dict`, *optional*):
                The identity adapter's scale for this call only, as
                [`~adapters.IdentityAdapterMixin.set_identity_scale`] takes it; `None` keeps the
                adapter's scale. `0` gives exactly the images of the pipeline without the adapter.
            identity_image (`PipelineImageInput`, *optional*):
                FaceID-PlusV2 only: the aligned face crops of the reference photos, one per row
                of `identity_embeds`, encoded by `image_encoder`.
            identity_rows (`list[bool]`, *optional*):
                One bool per generated image (prompts x `num_images_per_prompt`): which images
                get the identity (tokens, scale and FaceID LoRA), in one batch; each image equals
                a run of it alone, with or without `identity_embeds`. `None`: every image.
            control_image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list, *optional*):
                The ControlNet condition, e.g. a face-mesh drawing: a PIL image, an RGB
                `[H, W, 3]` / `[B, H, W, 3]` array (uint8, or float in [0, 1]), a `[3, H, W]` /
                `[B, 3, H, W]` tensor in [0, 1], or a list of them (a batch). One image serves
                every prompt; a batch holds one per prompt. With a [`MultiControlNetModel`], a
                list with one such input per net. It is not resized: it must have the output size.
            controlnet_conditioning_scale (`float` or `list[float]`, *optional*, defaults to 1.0):
                Factor on the ControlNet residuals; one per net for a [`MultiControlNetModel`].
                `0` gives exactly the images without the ControlNet.
            ip_adapter_image (`PipelineImageInput`, *optional*):
                Optional image input to work with IP-Adapters.
            ip_adapter_image_embeds (`list[torch.Tensor]`, *optional*):
                Pre-generated image embeddings for IP-Adapters.
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`, `"np"`, `"pt"` or `"latent"`.
            return_dict (`bool`, *optional*, defaults to `True`):
                Whether to return a [`StableDiffusionPipelineOutput`] instead of a tuple.
            cross_attention_kwargs (`dict`, *optional*):
                Passed to the UNet's attention processors (e.g. `{"scale": 0.5}` for LoRA); the
                identity inputs are added under `"portrait"` (an `adapters.AttentionCallState`).
            guidance_rescale (`float`, *optional*, defaults to 0.0):
                Guidance rescale factor from [Common Diffusion Noise Schedules and Sample Steps
                are Flawed](https://huggingface.co/papers/2305.08891).
            clip_skip (`int`, *optional*):
                Number of layers to skip from CLIP when computing the prompt embeddings.
            callback_on_step_end (`Callable` or `PipelineCallback`, *optional*):
                Called at the end of each denoising step as
                `callback_on_step_end(self, step, timestep, callback_kwargs)`; the tensors it
                returns (by name) replace the pipeline's.
            callback_on_step_end_tensor_inputs (`Sequence[str]`, defaults to `("latents",)`):
                The tensors passed in `callback_kwargs`; any of `self._callback_tensor_inputs`.

        Examples:

        Returns:
            [`~diffusers.pipelines.stable_diffusion.StableDiffusionPipelineOutput`] or `tuple`:
                With `return_dict=True` the output holds the images and, per image, whether the
                safety checker flagged it (`None` without a safety checker); otherwise the tuple
                `(images, nsfw_content_detected)`.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 0. Condition images; they fix the output size when height and width are not given
        control_images = control_image_tensors(self.controlnet, control_image)
        if control_images is not None:
            height = height or control_images[0].shape[-2]
            width = width or control_images[0].shape[-1]
        elif not height or not width:
            sample_size = self.unet.config.sample_size
            if not self._is_unet_config_sample_size_int:
                sample_size = sample_size[0]
            height = height or sample_size * self.vae_scale_factor
            width = width or sample_size * self.vae_scale_factor

        # 1. Check inputs. Raise error if not correct
        self.check_inputs(
            prompt,
            height,
            width,
            None,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            ip_adapter_image,
            ip_adapter_image_embeds,
            callback_on_step_end_tensor_inputs,
            identity_embeds,
            identity_scale,
            identity_image,
            control_images,
            controlnet_conditioning_scale,
            identity_rows=identity_rows,
            num_images_per_prompt=num_images_per_prompt,
        )

        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False

        # 2. Define call parameters
        if isinstance(prompt, str):
            batch_size = 1
        elif isinstance(prompt, list):
            batch_size = len(prompt)
        else:
            batch_size = prompt_embeds.shape[0]

        device = self._execution_device

        # 3. Encode input prompt
        lora_scale = (
            self.cross_attention_kwargs.get("scale", None)
            if self.cross_attention_kwargs is not None
            else None
        )
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt,
            device,
            num_images_per_prompt,
            self.do_classifier_free_guidance,
            negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            lora_scale=lora_scale,
            clip_skip=self.clip_skip,
        )
        # For classifier free guidance, we need to do two forward passes.
        # Here we concatenate the unconditional and text embeddings into a single batch
        # to avoid doing two forward passes
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])

        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            image_embeds = self.prepare_ip_adapter_image_embeds(
                ip_adapter_image,
                ip_adapter_image_embeds,
                device,
                batch_size * num_images_per_prompt,
                self.do_classifier_free_guidance,
            )

        # 4. Encode the identity: its tokens reach the adapter's processors on the UNet
        if identity_embeds is not None:
            identity_tokens = encode_identity_tokens(
                self,
                identity_embeds,
                identity_image,
                device=device,
                num_images=batch_size * num_images_per_prompt,
                do_classifier_free_guidance=self.do_classifier_free_guidance,
            )
            self._cross_attention_kwargs = self.attention_call_kwargs(
                cross_attention_kwargs,
                identity_tokens=identity_tokens,
                identity_scale=identity_scale,
                identity_rows=identity_rows,
            )

        # 5. Prepare the control images
        if control_images is not None:
            control_images = [
                prepare_condition_image(
                    image,
                    batch_size=batch_size,
                    num_images_per_prompt=num_images_per_prompt,
                    device=device,
                    dtype=self.controlnet.dtype,
                    do_classifier_free_guidance=self.do_classifier_free_guidance,
                )
                for image in control_images
            ]
            if isinstance(self.controlnet, MultiControlNetModel):
                control_image = control_images
                if not isinstance(controlnet_conditioning_scale, (list, tuple)):
                    controlnet_conditioning_scale = [controlnet_conditioning_scale] * len(
                        control_images
                    )
            else:
                control_image = control_images[0]

        # 6. Prepare timesteps
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device, timesteps, sigmas
        )

        # 7. Prepare latent variables
        num_channels_latents = self.unet.config.in_channels
        latents = self.prepare_latents(
            batch_size * num_images_per_prompt,
            num_channels_latents,
            height,
            width,
            prompt_embeds.dtype,
            device,
            generator,
            latents,
        )

        # 8. Prepare extra step kwargs, IP-Adapter image embeds and the guidance scale embedding
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        added_cond_kwargs = (
            {"image_embeds": image_embeds}
            if ip_adapter_image is not None or ip_adapter_image_embeds is not None
            else None
        )
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            guidance_scale_tensor = torch.tensor(self.guidance_scale - 1).repeat(
                batch_size * num_images_per_prompt
            )
            timestep_cond = self.get_guidance_scale_embedding(
                guidance_scale_tensor, embedding_dim=self.unet.config.time_cond_proj_dim
            ).to(device=device, dtype=latents.dtype)

        # 9. Denoising loop
        # Copied from diffusers.pipelines.controlnet.pipeline_controlnet.StableDiffusionControlNetPipeline.__call__  # noqa: E501
        # with changes: the ControlNet is optional (it runs only with a `control_image`),
        # guidance rescale as in StableDiffusionPipeline, no guess mode or control guidance
        # window, no deprecated `callback`.
        num_warmup_steps = len(timesteps) - num_inference_steps * self.scheduler.order
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue

                # expand the latents if we are doing classifier free guidance
                latent_model_input = (
                    torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                )
                latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)

                # controlnet(s) inference
                down_block_res_samples, mid_block_res_sample = None, None
                if control_images is not None:
                    down_block_res_samples, mid_block_res_sample = self.controlnet(
                        latent_model_input,
                        t,
                        encoder_hidden_states=prompt_embeds,
                        controlnet_cond=control_image,
                        conditioning_scale=controlnet_conditioning_scale,
                        return_dict=False,
                    )

                # predict the noise residual
                noise_pred = self.unet(
                    latent_model_input,
                    t,
                    encoder_hidden_states=prompt_embeds,
                    timestep_cond=timestep_cond,
                    cross_attention_kwargs=self.cross_attention_kwargs,
                    down_block_additional_residuals=down_block_res_samples,
                    mid_block_additional_residual=mid_block_res_sample,
                    added_cond_kwargs=added_cond_kwargs,
                    return_dict=False,
                )[0]

                # perform guidance
                if self.do_classifier_free_guidance:
                    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + self.guidance_scale * (
                        noise_pred_text - noise_pred_uncond
                    )

                if self.do_classifier_free_guidance and self.guidance_rescale > 0.0:
                    # Based on 3.4. in https://huggingface.co/papers/2305.08891
                    noise_pred = rescale_noise_cfg(
                        noise_pred, noise_pred_text, guidance_rescale=self.guidance_rescale
                    )

                # compute the previous noisy sample x_t -> x_t-1
                latents = self.scheduler.step(
                    noise_pred, t, latents, **extra_step_kwargs, return_dict=False
                )[0]

                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for k in callback_on_step_end_tensor_inputs:
                        callback_kwargs[k] = locals()[k]
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)

                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = callback_outputs.pop(
                        "negative_prompt_embeds", negative_prompt_embeds
                    )
                    control_image = callback_outputs.pop("control_image", control_image)

                if i == len(timesteps) - 1 or (
                    (i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0
                ):
                    progress_bar.update()

        # 10. Decode and run the safety checker
        if output_type != "latent":
            image = self.vae.decode(
                latents / self.vae.config.scaling_factor, return_dict=False, generator=generator
            )[0]
            image, has_nsfw_concept = self.run_safety_checker(image, device, prompt_embeds.dtype)
        else:
            image = latents
            has_nsfw_concept = None

        if has_nsfw_concept is None:
            do_denormalize = [True] * image.shape[0]
        else:
            do_denormalize = [not has_nsfw for has_nsfw in has_nsfw_concept]
        image = self.image_processor.postprocess(
            image, output_type=output_type, do_denormalize=do_denormalize
        )

        # Offload all models
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image, has_nsfw_concept)

        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=has_nsfw_concept)
