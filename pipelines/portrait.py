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

from adapters import IdentityAdapterMixin, WPlusAdapterMixin
from pipelines.conditioning import ConditionImageInput, PortraitConditioningMixin, is_identitynet

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


class PortraitPipeline(
    PortraitConditioningMixin, WPlusAdapterMixin, IdentityAdapterMixin, StableDiffusionPipeline
):
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
    [`~adapters.IdentityAdapterMixin.unload_identity_adapter`], and the W+ adapter's
    [`~adapters.WPlusAdapterMixin.load_wplus_adapter`] /
    [`~adapters.WPlusAdapterMixin.set_wplus_scale`] /
    [`~adapters.WPlusAdapterMixin.unload_wplus_adapter`] (`wplus=` in a call).

    With `enable_model_cpu_offload`, the ControlNet is not part of `model_cpu_offload_seq`: it
    runs at every step beside the UNet, and in the chain each step would move it to and from the
    accelerator. Like diffusers' ControlNet pipelines, it gets its own hook instead (loaded on
    first use, offloaded at the end of the call); `identity_attn` and `wplus_attn` hold weights
    that run inside the UNet's attention processors, so they move with the UNet.

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
        wplus_projection ([`ModelMixin`], *optional*):
            The W+ adapter's projection from a W+ latent to W+ tokens; set by
            [`~adapters.WPlusAdapterMixin.load_wplus_adapter`].
        wplus_attn ([`ModelMixin`], *optional*):
            The W+ adapter's attention weights (and its scale and start fraction), used by the
            W+ term on the UNet's cross-attention layers; set by
            [`~adapters.WPlusAdapterMixin.load_wplus_adapter`].
        requires_safety_checker (`bool`, *optional*, defaults to `True`):
            Whether to warn when the pipeline runs without a safety checker.
    """

    model_cpu_offload_seq = (
        "text_encoder->image_encoder->identity_projection->wplus_projection->unet->vae"
    )
    _optional_components: ClassVar[list[str]] = [
        "safety_checker",
        "feature_extractor",
        "image_encoder",
        "controlnet",
        "identity_projection",
        "identity_attn",
        "wplus_projection",
        "wplus_attn",
    ]
    _exclude_from_cpu_offload: ClassVar[list[str]] = ["safety_checker"]
    _callback_tensor_inputs: ClassVar[list[str]] = [
        "latents",
        "prompt_embeds",
        "negative_prompt_embeds",
        "control_image",
    ]
    reference_arguments: ClassVar[dict[str, str]] = {
        **PortraitConditioningMixin.reference_arguments,
        "image": "diffusers' ControlNet pipelines' name for the condition; pass `control_image=`",
    }

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
        wplus_projection: ModelMixin | None = None,
        wplus_attn: ModelMixin | None = None,
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
        for net in getattr(controlnet, "nets", [controlnet]):
            if is_identitynet(net):
                raise ValueError(
                    "InstantID's IdentityNet is an SDXL net that reads the identity tokens; pass "
                    "it to `PortraitXLPipeline.from_pretrained(..., identitynet=...)`"
                )
            if (
                net is not None
                and net.config.cross_attention_dim != unet.config.cross_attention_dim
            ):
                raise ValueError(
                    f"this `controlnet` reads {net.config.cross_attention_dim}-d tokens but the "
                    f"UNet's are {unet.config.cross_attention_dim}-d; pass a ControlNet made for "
                    "this base model"
                )
        self.register_modules(
            controlnet=controlnet,
            identity_projection=identity_projection,
            identity_attn=identity_attn,
            wplus_projection=wplus_projection,
            wplus_attn=wplus_attn,
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
        *,
        identity_embeds: torch.Tensor | None = None,
        identity_scale: float | dict | None = None,
        identity_image: PipelineImageInput | None = None,
        identity_rows: Sequence[bool] | None = None,
        wplus: torch.Tensor | np.ndarray | None = None,
        wplus_scale: float | None = None,
        num_images_per_prompt: int = 1,
        control_images: list[torch.Tensor] | None = None,
        controlnet_conditioning_scale: float | list[float] | None = None,
        guess_mode: bool = False,
        control_guidance_start: float | list[float] | None = None,
        control_guidance_end: float | list[float] | None = None,
    ) -> None:
        """[`~diffusers.StableDiffusionPipeline.check_inputs`] plus the identity, W+ and control
        inputs.

        `control_images` are the batches from
        [`~pipelines.conditioning.PortraitConditioningMixin.control_image_tensors`].
        """
        super().check_inputs(
            prompt,
            height,
            width,
            callback_steps,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            ip_adapter_image=ip_adapter_image,
            ip_adapter_image_embeds=ip_adapter_image_embeds,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        self.check_conditioning_inputs(
            batch_size=self.prompt_batch_size(prompt, prompt_embeds),
            identity_embeds=identity_embeds,
            identity_scale=identity_scale,
            identity_image=identity_image,
            control_images=control_images,
            controlnet_conditioning_scale=controlnet_conditioning_scale,
            ip_adapter_image=ip_adapter_image,
            ip_adapter_image_embeds=ip_adapter_image_embeds,
            identity_rows=identity_rows,
            num_images_per_prompt=num_images_per_prompt,
        )
        self.check_wplus_inputs(
            wplus, wplus_scale, batch_size=self.prompt_batch_size(prompt, prompt_embeds)
        )
        self.check_condition_options(
            has_nets=control_images is not None,
            guess_mode=guess_mode,
            control_guidance_start=control_guidance_start,
            control_guidance_end=control_guidance_end,
        )

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
        wplus: torch.Tensor | np.ndarray | None = None,
        wplus_scale: float | None = None,
        control_image: ConditionImageInput | list[ConditionImageInput] | None = None,
        controlnet_conditioning_scale: float | list[float] | None = None,
        guess_mode: bool = False,
        control_guidance_start: float | list[float] | None = None,
        control_guidance_end: float | list[float] | None = None,
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
        **kwargs: Any,
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
                `[num_refs, 512]` ArcFace embeddings of one person (one row per reference
                photo; torch or numpy, unit-norm or insightface's raw `face.embedding`), turned
                into identity tokens by the loaded identity adapter. `None` generates without an
                identity.
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
            wplus (`torch.Tensor` or `np.ndarray`, *optional*):
                The person's W+ latent (e4e's inversion of the aligned face), `[18, 512]` for
                every prompt or `[batch, 18, 512]` with one per prompt, fed to the loaded W+
                adapter ([`~adapters.WPlusAdapterMixin.load_wplus_adapter`]) beside any
                `identity_embeds`; its term is off before the adapter's start fraction of the
                steps. `None` generates without W+.
            wplus_scale (`float`, *optional*):
                The W+ adapter's scale for this call only; `None` keeps the adapter's. `0`
                gives exactly the images of the pipeline without the W+ adapter.
            control_image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list, *optional*):
                The ControlNet condition, e.g. a face-mesh drawing: a PIL image, an RGB
                `[H, W, 3]` / `[B, H, W, 3]` array (uint8, or float in [0, 1]), a `[3, H, W]` /
                `[B, 3, H, W]` tensor in [0, 1], or a list of them (a batch). One image serves
                every prompt; a batch holds one per prompt. With a [`MultiControlNetModel`], a
                list with one such input per net. Another size is resized to the output size as
                diffusers does (Lanczos for PIL images, nearest for arrays and tensors).
            controlnet_conditioning_scale (`float` or `list[float]`, *optional*, defaults to 1.0):
                Factor on the ControlNet residuals; one per net for a [`MultiControlNetModel`].
                `0` gives exactly the images without the ControlNet. Needs `control_image`.
            guess_mode (`bool`, *optional*, defaults to `False`):
                As in diffusers' ControlNet pipelines: under classifier-free guidance the
                condition nets see only the conditional half and add nothing to the other.
            control_guidance_start (`float` or `list[float]`, *optional*, defaults to 0.0):
                Fraction of the steps at which each condition net starts; a list has one value
                per net.
            control_guidance_end (`float` or `list[float]`, *optional*, defaults to 1.0):
                Fraction of the steps at which each condition net stops; like the start.
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
                identity and W+ inputs are added under `"portrait"` (an
                `adapters.AttentionCallState`).
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
            kwargs:
                Names of other pipelines (e.g. `image`, the deprecated `callback`) raise a
                `TypeError` naming this pipeline's argument; see docs/coming-from-instantid.md.

        Examples:

        Returns:
            [`~diffusers.pipelines.stable_diffusion.StableDiffusionPipelineOutput`] or `tuple`:
                With `return_dict=True` the output holds the images and, per image, whether the
                safety checker flagged it (`None` without a safety checker); otherwise the tuple
                `(images, nsfw_content_detected)`.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        self.check_reference_arguments(kwargs)

        # 0. Output size (by default the condition's) and the condition images at that size
        height, width = self.default_height_width(height, width, [control_image])
        control_images = self.control_image_tensors(control_image, height=height, width=width)

        # 1. Check inputs. Raise error if not correct
        self.check_inputs(
            prompt,
            height,
            width,
            None,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            ip_adapter_image=ip_adapter_image,
            ip_adapter_image_embeds=ip_adapter_image_embeds,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            identity_embeds=identity_embeds,
            identity_scale=identity_scale,
            identity_image=identity_image,
            identity_rows=identity_rows,
            wplus=wplus,
            wplus_scale=wplus_scale,
            num_images_per_prompt=num_images_per_prompt,
            control_images=control_images,
            controlnet_conditioning_scale=controlnet_conditioning_scale,
            guess_mode=guess_mode,
            control_guidance_start=control_guidance_start,
            control_guidance_end=control_guidance_end,
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

        # 4. Encode the identity and the W+: their tokens reach the adapters' terms on the UNet
        identity_tokens = None
        if identity_embeds is not None:
            identity_tokens = self.encode_identity_tokens(
                identity_embeds,
                identity_image,
                device=device,
                num_images=batch_size * num_images_per_prompt,
                do_classifier_free_guidance=self.do_classifier_free_guidance,
            )
        wplus_tokens = None
        if wplus is not None:
            wplus_tokens = self.encode_wplus(
                wplus,
                batch_size=batch_size,
                num_images_per_prompt=num_images_per_prompt,
                do_classifier_free_guidance=self.do_classifier_free_guidance,
            )

        # 5. Prepare the control images, one condition net per ControlNet
        condition_nets = []
        if control_images is not None:
            condition_nets = self.condition_nets(
                [(self.controlnet, control_images, controlnet_conditioning_scale)],
                control_guidance_start=control_guidance_start,
                control_guidance_end=control_guidance_end,
                batch_size=batch_size,
                num_images_per_prompt=num_images_per_prompt,
                device=device,
                do_classifier_free_guidance=self.do_classifier_free_guidance,
            )
        control_image = self.condition_images(condition_nets, identity=False)

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

        # 9. Denoising loop, with the identity and W+ on the UNet's attention for this call
        num_warmup_steps = len(timesteps) - num_inference_steps * self.scheduler.order
        self._num_timesteps = len(timesteps)
        attention_kwargs = self.attention_call_kwargs(
            cross_attention_kwargs,
            identity_tokens=identity_tokens,
            identity_scale=identity_scale,
            identity_rows=identity_rows,
            extra_inputs=self.wplus_call_inputs(wplus_tokens, wplus_scale),
        )
        self._cross_attention_kwargs = attention_kwargs
        # Copied from diffusers.pipelines.controlnet.pipeline_controlnet.StableDiffusionControlNetPipeline.__call__  # noqa: E501
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue

                # expand the latents if we are doing classifier free guidance
                latent_model_input = (
                    torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                )
                latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)

                # Portrait: this step's attention inputs (W+ is off before its start fraction)
                self._cross_attention_kwargs = self.wplus_step_kwargs(
                    attention_kwargs, step=i, num_steps=len(timesteps)
                )

                # Portrait: the condition nets, optional and in one place
                down_block_res_samples, mid_block_res_sample = self.condition_residuals(
                    condition_nets,
                    latent_model_input,
                    latents,
                    t,
                    step=i,
                    num_steps=len(timesteps),
                    prompt_embeds=prompt_embeds,
                    identity_tokens=identity_tokens,
                    added_cond_kwargs=None,
                    guess_mode=guess_mode,
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

                # Portrait: guidance rescale, as in StableDiffusionPipeline
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
                    # Portrait: the ControlNet's condition is `control_image`, not `image`
                    control_image = callback_outputs.pop("control_image", control_image)
                    # Portrait: the nets read the condition the callback returned
                    condition_nets = self.with_condition_images(
                        condition_nets, control_image=control_image
                    )

                if i == len(timesteps) - 1 or (
                    (i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0
                ):
                    progress_bar.update()
        # End of copy

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
