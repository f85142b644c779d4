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
"""Stable Diffusion XL portraits: identity adapter tokens, InstantID IdentityNet, ControlNet."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import PipelineImageInput
from diffusers.models import (
    AutoencoderKL,
    ControlNetModel,
    ModelMixin,
    MultiControlNetModel,
    UNet2DConditionModel,
)
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    rescale_noise_cfg,
    retrieve_timesteps,
)
from diffusers.pipelines.stable_diffusion_xl import StableDiffusionXLPipelineOutput
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import logging, replace_example_docstring
from diffusers.utils.torch_utils import get_module_execution_device
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from adapters import IdentityAdapterMixin
from adapters.formats import InstantID
from pipelines.conditioning import (
    ConditionImageInput,
    PortraitConditioningMixin,
    check_condition_batch,
    condition_image_tensor,
    is_identitynet,
)

logger = logging.get_logger(__name__)

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers import ControlNetModel
        >>> from huggingface_hub import hf_hub_download

        >>> from pipelines import PortraitXLPipeline

        >>> identitynet = ControlNetModel.from_pretrained(
        ...     "InstantX/InstantID", subfolder="ControlNetModel", dtype=torch.float16
        ... )
        >>> pipe = PortraitXLPipeline.from_pretrained(
        ...     "stabilityai/stable-diffusion-xl-base-1.0",
        ...     identitynet=identitynet,
        ...     dtype=torch.float16,
        ... ).to("cuda")
        >>> pipe.load_identity_adapter(hf_hub_download("InstantX/InstantID", "ip-adapter.bin"))

        >>> # identity_embeds: [num_refs, 512] unit-norm ArcFace (antelopev2) embeddings;
        >>> # keypoints: an RGB uint8 [1024, 1024, 3] drawing of the five face keypoints (the
        >>> # studio's draw_keypoints)
        >>> image = pipe(
        ...     "a studio portrait photo of a person, soft light",
        ...     identity_embeds=identity_embeds,
        ...     identity_scale=0.8,
        ...     keypoint_image=keypoints,
        ...     identitynet_conditioning_scale=0.8,
        ...     num_inference_steps=30,
        ... ).images[0]
        ```
"""


def split_identitynet(
    identitynet: ControlNetModel | None,
    controlnet: ControlNetModel | list[ControlNetModel] | MultiControlNetModel | None,
) -> tuple[ControlNetModel | None, ControlNetModel | MultiControlNetModel | None]:
    """Take InstantID's IdentityNet out of ``controlnet``, where the reference pipeline has it.

    Without an ``identitynet``, a net of ``controlnet`` recognised as the IdentityNet (see
    [`~pipelines.conditioning.is_identitynet`]) becomes the ``identitynet``, so that it reads the
    identity tokens; the other nets stay ControlNets on the prompt.
    """
    if isinstance(controlnet, MultiControlNetModel):
        nets = list(controlnet.nets)
    elif isinstance(controlnet, (list, tuple)):
        nets = list(controlnet)
    else:
        nets = [] if controlnet is None else [controlnet]
    found = [net for net in nets if is_identitynet(net)] if identitynet is None else []
    if len(found) > 1:
        raise ValueError(
            f"`controlnet` holds {len(found)} IdentityNets; pass one as `identitynet=`"
        )
    if found:
        logger.info("the IdentityNet given as `controlnet` is used as the `identitynet`")
        identitynet = found[0]
        nets = [net for net in nets if net is not identitynet]
    if not found and not isinstance(controlnet, (list, tuple)):
        return identitynet, controlnet
    if not nets:
        return identitynet, None
    return identitynet, nets[0] if len(nets) == 1 else MultiControlNetModel(nets)


class PortraitXLPipeline(
    PortraitConditioningMixin, IdentityAdapterMixin, StableDiffusionXLPipeline
):
    r"""
    Pipeline for identity-preserving portraits with Stable Diffusion XL, InstantID style.

    A [`~diffusers.StableDiffusionXLPipeline`] whose denoising loop also:

    - feeds the identity adapter's tokens to the UNet (through
      `cross_attention_kwargs["portrait"]`);
    - with a `keypoint_image`, runs the `identitynet` (InstantID's IdentityNet: a ControlNet whose
      cross-attention reads the identity tokens instead of the prompt) on the keypoint drawing;
    - with a `control_image`, runs the `controlnet` (one net or a [`MultiControlNetModel`]) on
      the prompt as usual.

    The residuals of both nets are summed, each scaled by its own conditioning scale. Without
    `identity_embeds`, `keypoint_image` and `control_image` it generates exactly what
    [`~diffusers.StableDiffusionXLPipeline`] generates.

    The pipeline also inherits the loading methods of [`~diffusers.StableDiffusionXLPipeline`]
    (textual inversion, LoRA, single file, IP-Adapter) and the identity adapter's
    [`~adapters.IdentityAdapterMixin.load_identity_adapter`] /
    [`~adapters.IdentityAdapterMixin.set_identity_scale`] /
    [`~adapters.IdentityAdapterMixin.unload_identity_adapter`].

    With `enable_model_cpu_offload`, `identitynet` and `controlnet` are not part of
    `model_cpu_offload_seq`: they run at every step beside the UNet, and in the chain each step
    would move them to and from the accelerator. Like diffusers' ControlNet pipelines, they get
    their own hooks instead (loaded on first use, offloaded at the end of the call);
    `identity_attn` holds weights that run inside the UNet's attention processors, so they move
    with the UNet.

    Args:
        vae ([`AutoencoderKL`]):
            Variational Auto-Encoder (VAE) Model to encode and decode images to and from latent
            representations.
        text_encoder ([`~transformers.CLIPTextModel`]):
            Frozen text-encoder (CLIP ViT-L/14).
        text_encoder_2 ([`~transformers.CLIPTextModelWithProjection`]):
            Second frozen text-encoder (OpenCLIP ViT-bigG/14).
        tokenizer ([`~transformers.CLIPTokenizer`]):
            Tokenizer of `text_encoder`.
        tokenizer_2 ([`~transformers.CLIPTokenizer`]):
            Tokenizer of `text_encoder_2`.
        unet ([`UNet2DConditionModel`]):
            Conditional U-Net architecture to denoise the encoded image latents.
        scheduler ([`SchedulerMixin`]):
            A scheduler to be used in combination with `unet` to denoise the encoded image latents.
        image_encoder ([`~transformers.CLIPVisionModelWithProjection`], *optional*):
            Image encoder for IP-Adapters and for the face crops of FaceID-PlusV2
            (`identity_image`).
        feature_extractor ([`~transformers.CLIPImageProcessor`], *optional*):
            Prepares images for the `image_encoder`.
        identitynet ([`ControlNetModel`], *optional*):
            InstantID's IdentityNet, conditioned on `keypoint_image` and on the identity tokens.
            Given as `controlnet=` (as InstantID's reference pipeline takes it), a net loaded
            from a hub id or folder naming InstantID or IdentityNet is taken as the IdentityNet.
        controlnet ([`ControlNetModel`] or [`MultiControlNetModel`], *optional*):
            ControlNet(s) conditioned on `control_image` and the prompt. A list or tuple becomes
            a [`MultiControlNetModel`], whose residuals are summed.
        identity_projection ([`ModelMixin`], *optional*):
            The identity adapter's projection from face embeddings to identity tokens; set by
            [`~adapters.IdentityAdapterMixin.load_identity_adapter`].
        identity_attn ([`ModelMixin`], *optional*):
            The identity adapter's attention weights, used by the processors it installs on the
            UNet; set by [`~adapters.IdentityAdapterMixin.load_identity_adapter`].
        force_zeros_for_empty_prompt (`bool`, *optional*, defaults to `True`):
            Whether the negative prompt embeddings are zeros when the negative prompt is empty.
        add_watermarker (`bool`, *optional*):
            Whether to watermark the images with the `invisible_watermark` library; defaults to
            whether it is installed.
    """

    model_cpu_offload_seq = (
        "text_encoder->text_encoder_2->image_encoder->identity_projection->unet->vae"
    )
    _optional_components: ClassVar[list[str]] = [
        "tokenizer",
        "tokenizer_2",
        "text_encoder",
        "text_encoder_2",
        "image_encoder",
        "feature_extractor",
        "identitynet",
        "controlnet",
        "identity_projection",
        "identity_attn",
    ]
    _callback_tensor_inputs: ClassVar[list[str]] = [
        "latents",
        "prompt_embeds",
        "add_text_embeds",
        "add_time_ids",
        "keypoint_image",
        "control_image",
    ]
    reference_arguments: ClassVar[dict[str, str]] = {
        **PortraitConditioningMixin.reference_arguments,
        "image": "InstantID's name for the IdentityNet's keypoint drawing; pass "
        "`keypoint_image=` (and `control_image=` for another ControlNet)",
        "image_embeds": "InstantID's name for the face embedding; pass `identity_embeds=` "
        "(insightface's `face.embedding` or `face.normed_embedding`, numpy or torch)",
        "ip_adapter_scale": "pass `identity_scale=` for this call, or keep a scale with "
        "`pipe.set_identity_scale(...)`",
        "wplus": "the W+ adapter is trained for Stable Diffusion 1.5; generate with "
        "`PortraitPipeline` and `pipe.load_wplus_adapter(...)`",
        "visual_prompt": "PortraitXLPipeline starts from noise and has no image-to-image start; "
        "generate without it",
        "visual_prompt_strength": "PortraitXLPipeline starts from noise and has no "
        "image-to-image start; generate without it",
    }

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        feature_extractor: CLIPImageProcessor | None = None,
        identitynet: ControlNetModel | None = None,
        controlnet: ControlNetModel | list[ControlNetModel] | MultiControlNetModel | None = None,
        identity_projection: ModelMixin | None = None,
        identity_attn: ModelMixin | None = None,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: bool | None = None,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=add_watermarker,
        )
        identitynet, controlnet = split_identitynet(identitynet, controlnet)
        self.register_modules(
            identitynet=identitynet,
            controlnet=controlnet,
            identity_projection=identity_projection,
            identity_attn=identity_attn,
        )

    # -- the reference InstantID pipeline's methods ------------------------------------------

    def load_ip_adapter_instantid(
        self,
        model_ckpt: str | os.PathLike,
        image_emb_dim: int = 512,
        num_tokens: int = 16,
        scale: float = 0.5,
    ) -> None:
        """The reference pipeline's loader: [`~adapters.IdentityAdapterMixin.load_identity_adapter`]
        with the reference's default scale 0.5 (ours defaults to 1.0)."""
        self.load_identity_adapter(model_ckpt, scale=scale)
        config = self.identity_projection.config
        found = (self.identity_family, config.id_embed_dim, config.num_tokens)
        if found != ("instantid", image_emb_dim, num_tokens):
            self.unload_identity_adapter()
            raise ValueError(
                f"{model_ckpt} is a {found[0]} adapter for {found[1]}-d embeddings and "
                f"{found[2]} tokens, not InstantID's for {image_emb_dim}-d and {num_tokens}; "
                "load other adapters with `load_identity_adapter(path)`"
            )

    def set_image_proj_model(self, *args: Any, **kwargs: Any) -> None:
        """Refused: the reference's half of loading; ours loads the whole adapter at once."""
        raise TypeError(
            "set_image_proj_model is half of the reference's loader; load the whole adapter "
            "with `pipe.load_identity_adapter(path)` (or `load_ip_adapter_instantid(path)`)"
        )

    def set_ip_adapter(self, *args: Any, **kwargs: Any) -> None:
        """Refused: the reference's half of loading; ours loads the whole adapter at once."""
        raise TypeError(
            "set_ip_adapter is half of the reference's loader; load the whole adapter with "
            "`pipe.load_identity_adapter(path)` (or `load_ip_adapter_instantid(path)`)"
        )

    def cuda(self, *args: Any, **kwargs: Any) -> None:
        """Refused: the reference's ``cuda(dtype, use_xformers)``; diffusers' calls do it."""
        raise TypeError(
            'PortraitXLPipeline has no cuda(); use `pipe.to("cuda", torch.float16)` (the '
            "identity adapter moves with the UNet); xformers would replace the identity "
            "attention processors, PyTorch's scaled-dot-product attention is used instead"
        )

    def keypoint_image_tensor(
        self, keypoint_image: ConditionImageInput | None, *, height: int, width: int
    ) -> torch.Tensor | None:
        """Return the IdentityNet's ``[B, C, height, width]`` condition in ``[0, 1]``, or `None`.

        See [`~pipelines.conditioning.condition_image_tensor`] for the formats and the resizing.
        """
        if keypoint_image is None:
            return None
        if self.identitynet is None:
            raise ValueError(
                "`keypoint_image` was given but the pipeline has no `identitynet`; pass "
                "InstantID's IdentityNet: `from_pretrained(..., identitynet=ControlNetModel"
                '.from_pretrained("InstantX/InstantID", subfolder="ControlNetModel"))`'
            )
        return condition_image_tensor(
            keypoint_image,
            name="keypoint_image",
            channels=self.identitynet.config.conditioning_channels,
            size=(height, width),
        )

    def check_inputs(
        self,
        prompt: str | list[str] | None,
        prompt_2: str | list[str] | None,
        height: int,
        width: int,
        callback_steps: int | None,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: PipelineImageInput | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] | None = None,
        *,
        identity_embeds: torch.Tensor | None = None,
        identity_scale: float | dict | None = None,
        identity_image: PipelineImageInput | None = None,
        identity_rows: Sequence[bool] | None = None,
        num_images_per_prompt: int = 1,
        keypoint_images: torch.Tensor | None = None,
        control_images: list[torch.Tensor] | None = None,
        identitynet_conditioning_scale: float | None = None,
        controlnet_conditioning_scale: float | list[float] | None = None,
        guess_mode: bool = False,
        control_guidance_start: float | list[float] | None = None,
        control_guidance_end: float | list[float] | None = None,
    ) -> None:
        """[`~diffusers.StableDiffusionXLPipeline.check_inputs`] plus identity and conditions.

        `keypoint_images` and `control_images` are the batches from
        [`~PortraitXLPipeline.keypoint_image_tensor`] and
        [`~pipelines.conditioning.PortraitConditioningMixin.control_image_tensors`].
        """
        super().check_inputs(
            prompt,
            prompt_2,
            height,
            width,
            callback_steps,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            ip_adapter_image=ip_adapter_image,
            ip_adapter_image_embeds=ip_adapter_image_embeds,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        batch_size = self.prompt_batch_size(prompt, prompt_embeds)
        self.check_conditioning_inputs(
            batch_size=batch_size,
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
        self.check_condition_options(
            has_nets=keypoint_images is not None or control_images is not None,
            guess_mode=guess_mode,
            control_guidance_start=control_guidance_start,
            control_guidance_end=control_guidance_end,
        )
        architecture = self.identity_architecture
        if (
            isinstance(architecture, InstantID)
            and identity_embeds is not None
            and getattr(self, "identitynet", None) is None
            and control_images is not None
        ):
            logger.warning(
                "the InstantID adapter runs without an IdentityNet while `controlnet` reads the "
                "prompt; if that ControlNet is InstantID's IdentityNet (its folder name does not "
                "say so), pass it as `identitynet=` and its image as `keypoint_image=`"
            )
        if keypoint_images is None:
            if identitynet_conditioning_scale is not None:
                raise ValueError(
                    "`identitynet_conditioning_scale` scales the IdentityNet on `keypoint_image`, "
                    "which this call does not have; pass `keypoint_image=` too"
                )
            return
        if identity_embeds is None:
            raise ValueError(
                "`keypoint_image` conditions the IdentityNet on the identity tokens; pass "
                "`identity_embeds` too"
            )
        identitynet_width = self.identitynet.config.cross_attention_dim
        if identitynet_width != self.unet.config.cross_attention_dim:
            raise ValueError(
                f"the identitynet's cross-attention takes {identitynet_width}-d tokens but "
                f"the identity tokens are {self.unet.config.cross_attention_dim}-d (the UNet's "
                "width); load the IdentityNet made for this base model"
            )
        check_condition_batch(keypoint_images, name="keypoint_image", batch_size=batch_size)
        scale = identitynet_conditioning_scale
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
            raise TypeError(
                f"`identitynet_conditioning_scale` must be a float; found {type(scale).__name__}"
            )

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 5.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        identity_embeds: torch.Tensor | None = None,
        identity_scale: float | dict | None = None,
        identity_image: PipelineImageInput | None = None,
        identity_rows: Sequence[bool] | None = None,
        keypoint_image: ConditionImageInput | None = None,
        identitynet_conditioning_scale: float | None = None,
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
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: tuple[int, int] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[[Any, int, int, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        **kwargs: Any,
    ) -> StableDiffusionXLPipelineOutput | tuple:
        r"""
        Function invoked when calling the pipeline for generation.

        Args:
            prompt (`str` or `list[str]`, *optional*):
                The prompt or prompts to guide the image generation. If not defined, one has to
                pass `prompt_embeds`.
            prompt_2 (`str` or `list[str]`, *optional*):
                The prompt or prompts for `tokenizer_2` and `text_encoder_2`; `prompt` if unset.
            height (`int`, *optional*):
                The height in pixels of the generated image. Defaults to the height of
                `keypoint_image` or `control_image` when one is given, else to
                `self.unet.config.sample_size * self.vae_scale_factor`.
            width (`int`, *optional*):
                The width in pixels of the generated image; defaults like `height`.
            num_inference_steps (`int`, *optional*, defaults to 50):
                The number of denoising steps.
            timesteps (`list[int]`, *optional*):
                Custom timesteps for schedulers whose `set_timesteps` takes `timesteps`.
            sigmas (`list[float]`, *optional*):
                Custom sigmas for schedulers whose `set_timesteps` takes `sigmas`.
            denoising_end (`float`, *optional*):
                Fraction (0 to 1) of the denoising after which to stop, leaving noise for a
                refiner ("Mixture of Denoisers").
            guidance_scale (`float`, *optional*, defaults to 5.0):
                Classifier-free guidance scale; guidance is enabled when `guidance_scale > 1`.
            negative_prompt (`str` or `list[str]`, *optional*):
                The prompt or prompts not to guide the image generation.
            negative_prompt_2 (`str` or `list[str]`, *optional*):
                The negative prompt(s) for `text_encoder_2`; `negative_prompt` if unset.
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
            pooled_prompt_embeds (`torch.Tensor`, *optional*):
                Pre-generated pooled text embeddings.
            negative_pooled_prompt_embeds (`torch.Tensor`, *optional*):
                Pre-generated negative pooled text embeddings.
            identity_embeds (`torch.Tensor`, *optional*):
                `[num_refs, 512]` ArcFace embeddings of one person (one row per reference
                photo; torch or numpy, unit-norm or insightface's raw `face.embedding`, which
                InstantID takes as is), turned into identity tokens by the loaded adapter; the
                tokens reach the UNet and, with a `keypoint_image`, the IdentityNet. `None`
                generates without an identity.
            identity_scale (`float` or `dict`, *optional*):
                The identity adapter's scale for this call only, as
                [`~adapters.IdentityAdapterMixin.set_identity_scale`] takes it; `None` keeps the
                adapter's scale. `0` gives exactly the images of the pipeline without the adapter
                (the IdentityNet has its own `identitynet_conditioning_scale`).
            identity_image (`PipelineImageInput`, *optional*):
                FaceID-PlusV2 only: the aligned face crops of the reference photos, one per row
                of `identity_embeds`, encoded by `image_encoder`.
            identity_rows (`list[bool]`, *optional*):
                One bool per generated image (prompts x `num_images_per_prompt`): which images
                get the identity (tokens, scale, FaceID LoRA and the IdentityNet, whose residuals
                are zero on the other images), in one batch; each image equals a run of it
                alone, with or without `identity_embeds` and `keypoint_image`. `None`: every
                image.
            keypoint_image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list, *optional*):
                The IdentityNet's condition: the face keypoints drawn at the output size, as a
                PIL image, an RGB `[H, W, 3]` / `[B, H, W, 3]` array (uint8, or float in [0, 1]),
                a `[3, H, W]` / `[B, 3, H, W]` tensor in [0, 1], or a list of them (a batch). One
                image serves every prompt; a batch holds one per prompt. Another size is resized
                to the output size as diffusers does (Lanczos for PIL images, nearest for arrays
                and tensors). Needs `identity_embeds`. InstantID's `image=`.
            identitynet_conditioning_scale (`float`, *optional*, defaults to 1.0):
                Factor on the IdentityNet residuals (InstantID's `controlnet_conditioning_scale`).
                Needs `keypoint_image`.
            control_image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list, *optional*):
                The `controlnet`'s condition, in the formats of `keypoint_image`; with a
                [`MultiControlNetModel`], a list with one such input per net.
            controlnet_conditioning_scale (`float` or `list[float]`, *optional*, defaults to 1.0):
                Factor on the `controlnet` residuals; one per net for a [`MultiControlNetModel`].
                Needs `control_image`.
            guess_mode (`bool`, *optional*, defaults to `False`):
                As in diffusers' ControlNet pipelines: under classifier-free guidance the
                condition nets see only the conditional half and add nothing to the other.
            control_guidance_start (`float` or `list[float]`, *optional*, defaults to 0.0):
                Fraction of the steps at which each condition net starts; a list has one value
                per net, the IdentityNet first, then the ControlNets.
            control_guidance_end (`float` or `list[float]`, *optional*, defaults to 1.0):
                Fraction of the steps at which each condition net stops; like the start.
            ip_adapter_image (`PipelineImageInput`, *optional*):
                Optional image input to work with IP-Adapters.
            ip_adapter_image_embeds (`list[torch.Tensor]`, *optional*):
                Pre-generated image embeddings for IP-Adapters.
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`, `"np"`, `"pt"` or `"latent"`.
            return_dict (`bool`, *optional*, defaults to `True`):
                Whether to return a [`StableDiffusionXLPipelineOutput`] instead of a tuple.
            cross_attention_kwargs (`dict`, *optional*):
                Passed to the UNet's attention processors (e.g. `{"scale": 0.5}` for LoRA); the
                identity inputs are added under `"portrait"` (an `adapters.AttentionCallState`).
            guidance_rescale (`float`, *optional*, defaults to 0.0):
                Guidance rescale factor from [Common Diffusion Noise Schedules and Sample Steps
                are Flawed](https://huggingface.co/papers/2305.08891).
            original_size (`tuple[int]`, *optional*):
                SDXL micro-conditioning; defaults to `(height, width)`.
            crops_coords_top_left (`tuple[int]`, *optional*, defaults to `(0, 0)`):
                SDXL micro-conditioning on the crop's top-left corner.
            target_size (`tuple[int]`, *optional*):
                SDXL micro-conditioning; defaults to `(height, width)`.
            negative_original_size (`tuple[int]`, *optional*):
                Negative micro-conditioning on the original size.
            negative_crops_coords_top_left (`tuple[int]`, *optional*, defaults to `(0, 0)`):
                Negative micro-conditioning on the crop coordinates.
            negative_target_size (`tuple[int]`, *optional*):
                Negative micro-conditioning on the target size.
            clip_skip (`int`, *optional*):
                Number of layers to skip from CLIP when computing the prompt embeddings.
            callback_on_step_end (`Callable` or `PipelineCallback`, *optional*):
                Called at the end of each denoising step as
                `callback_on_step_end(self, step, timestep, callback_kwargs)`; the tensors it
                returns (by name) replace the pipeline's.
            callback_on_step_end_tensor_inputs (`Sequence[str]`, defaults to `("latents",)`):
                The tensors passed in `callback_kwargs`; any of `self._callback_tensor_inputs`.
            kwargs:
                Names of other pipelines (e.g. InstantID's `image_embeds` and `ip_adapter_scale`,
                the deprecated `callback`) raise a `TypeError` naming this pipeline's argument;
                see docs/coming-from-instantid.md.

        Examples:

        Returns:
            [`StableDiffusionXLPipelineOutput`] or `tuple`: the output with the images if
            `return_dict` is `True`, otherwise the tuple `(images,)`.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        self.check_reference_arguments(kwargs)

        # 0. Output size (by default the first condition's) and the conditions at that size
        height, width = self.default_height_width(height, width, [keypoint_image, control_image])
        keypoint_images = self.keypoint_image_tensor(keypoint_image, height=height, width=width)
        control_images = self.control_image_tensors(control_image, height=height, width=width)

        original_size = original_size or (height, width)
        target_size = target_size or (height, width)

        # 1. Check inputs. Raise error if not correct
        self.check_inputs(
            prompt,
            prompt_2,
            height,
            width,
            None,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            ip_adapter_image=ip_adapter_image,
            ip_adapter_image_embeds=ip_adapter_image_embeds,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            identity_embeds=identity_embeds,
            identity_scale=identity_scale,
            identity_image=identity_image,
            identity_rows=identity_rows,
            num_images_per_prompt=num_images_per_prompt,
            keypoint_images=keypoint_images,
            control_images=control_images,
            identitynet_conditioning_scale=identitynet_conditioning_scale,
            controlnet_conditioning_scale=controlnet_conditioning_scale,
            guess_mode=guess_mode,
            control_guidance_start=control_guidance_start,
            control_guidance_end=control_guidance_end,
        )

        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._denoising_end = denoising_end
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
        (
            prompt_embeds,
            negative_prompt_embeds,
            pooled_prompt_embeds,
            negative_pooled_prompt_embeds,
        ) = self.encode_prompt(
            prompt=prompt,
            prompt_2=prompt_2,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            lora_scale=lora_scale,
            clip_skip=self.clip_skip,
        )

        # 4. Encode the identity: its tokens reach the adapter's processors and the IdentityNet
        identity_tokens = None
        if identity_embeds is not None:
            identity_tokens = self.encode_identity_tokens(
                identity_embeds,
                identity_image,
                device=device,
                num_images=batch_size * num_images_per_prompt,
                do_classifier_free_guidance=self.do_classifier_free_guidance,
            )

        # 5. Prepare the keypoint and control images: the IdentityNet first, then the ControlNets
        conditions = []
        if keypoint_images is not None:
            conditions.append((self.identitynet, [keypoint_images], identitynet_conditioning_scale))
        if control_images is not None:
            conditions.append((self.controlnet, control_images, controlnet_conditioning_scale))
        condition_nets = self.condition_nets(
            conditions,
            control_guidance_start=control_guidance_start,
            control_guidance_end=control_guidance_end,
            batch_size=batch_size,
            num_images_per_prompt=num_images_per_prompt,
            device=device,
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            identity_rows=identity_rows,
        )
        keypoint_image = self.condition_images(condition_nets, identity=True)
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

        # 8. Prepare extra step kwargs. TODO: Logic should ideally just be moved out of the pipeline
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 9. Prepare added time ids & embeddings
        add_text_embeds = pooled_prompt_embeds
        if self.text_encoder_2 is None:
            text_encoder_projection_dim = int(pooled_prompt_embeds.shape[-1])
        else:
            text_encoder_projection_dim = self.text_encoder_2.config.projection_dim

        add_time_ids = self._get_add_time_ids(
            original_size,
            crops_coords_top_left,
            target_size,
            dtype=prompt_embeds.dtype,
            text_encoder_projection_dim=text_encoder_projection_dim,
        )
        if negative_original_size is not None and negative_target_size is not None:
            negative_add_time_ids = self._get_add_time_ids(
                negative_original_size,
                negative_crops_coords_top_left,
                negative_target_size,
                dtype=prompt_embeds.dtype,
                text_encoder_projection_dim=text_encoder_projection_dim,
            )
        else:
            negative_add_time_ids = add_time_ids

        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds], dim=0)
            add_text_embeds = torch.cat([negative_pooled_prompt_embeds, add_text_embeds], dim=0)
            add_time_ids = torch.cat([negative_add_time_ids, add_time_ids], dim=0)

        prompt_embeds = prompt_embeds.to(device)
        add_text_embeds = add_text_embeds.to(device)
        add_time_ids = add_time_ids.to(device).repeat(batch_size * num_images_per_prompt, 1)

        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            image_embeds = self.prepare_ip_adapter_image_embeds(
                ip_adapter_image,
                ip_adapter_image_embeds,
                device,
                batch_size * num_images_per_prompt,
                self.do_classifier_free_guidance,
            )

        # 10. Apply denoising_end
        num_warmup_steps = max(len(timesteps) - num_inference_steps * self.scheduler.order, 0)
        if self.denoising_end is not None and 0 < self.denoising_end < 1:
            discrete_timestep_cutoff = round(
                self.scheduler.config.num_train_timesteps
                - (self.denoising_end * self.scheduler.config.num_train_timesteps)
            )
            num_inference_steps = len([ts for ts in timesteps if ts >= discrete_timestep_cutoff])
            timesteps = timesteps[:num_inference_steps]

        # 11. Optionally get Guidance Scale Embedding
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            guidance_scale_tensor = torch.tensor(self.guidance_scale - 1).repeat(
                batch_size * num_images_per_prompt
            )
            timestep_cond = self.get_guidance_scale_embedding(
                guidance_scale_tensor, embedding_dim=self.unet.config.time_cond_proj_dim
            ).to(device=device, dtype=latents.dtype)

        # 12. Denoising loop, with the identity on the UNet's attention for this call
        self._num_timesteps = len(timesteps)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)
        self._cross_attention_kwargs = self.attention_call_kwargs(
            cross_attention_kwargs,
            identity_tokens=identity_tokens,
            identity_scale=identity_scale,
            identity_rows=identity_rows,
        )
        # Copied from diffusers.pipelines.controlnet.pipeline_controlnet_sd_xl.StableDiffusionXLControlNetPipeline.__call__  # noqa: E501
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue

                # expand the latents if we are doing classifier free guidance
                latent_model_input = (
                    torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                )
                latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)

                added_cond_kwargs = {"text_embeds": add_text_embeds, "time_ids": add_time_ids}

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
                    added_cond_kwargs=added_cond_kwargs,
                    guess_mode=guess_mode,
                )

                if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
                    added_cond_kwargs["image_embeds"] = image_embeds

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
                    noise_pred = noise_pred_uncond + guidance_scale * (
                        noise_pred_text - noise_pred_uncond
                    )

                # Portrait: guidance rescale, as in StableDiffusionXLPipeline
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
                    add_text_embeds = callback_outputs.pop("add_text_embeds", add_text_embeds)
                    add_time_ids = callback_outputs.pop("add_time_ids", add_time_ids)
                    # Portrait: the IdentityNet's condition
                    keypoint_image = callback_outputs.pop("keypoint_image", keypoint_image)
                    # Portrait: the ControlNet's condition is `control_image`, not `image`
                    control_image = callback_outputs.pop("control_image", control_image)
                    # Portrait: the nets read the conditions the callback returned
                    condition_nets = self.with_condition_images(
                        condition_nets,
                        control_image=control_image,
                        keypoint_image=keypoint_image,
                    )

                if i == len(timesteps) - 1 or (
                    (i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0
                ):
                    progress_bar.update()
        # End of copy

        # 13. Decode
        # Copied from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl.StableDiffusionXLPipeline.__call__  # noqa: E501
        if not output_type == "latent":  # noqa: SIM201
            # make sure the VAE is in float32 mode, as it overflows in float16
            needs_upcasting = self.vae.dtype == torch.float16 and self.vae.config.force_upcast

            if needs_upcasting:
                # Portrait: instead of the deprecated `upcast_vae()`
                self.vae.to(dtype=torch.float32)
                latents = latents.to(next(iter(self.vae.post_quant_conv.parameters())).dtype)
            elif latents.dtype != self.vae.dtype:  # noqa: SIM102
                if torch.backends.mps.is_available():
                    # some platforms (eg. apple mps) misbehave due to a pytorch bug: https://github.com/pytorch/pytorch/pull/99272
                    self.vae = self.vae.to(latents.dtype)

            # unscale/denormalize the latents
            # denormalize with the mean and std if available and not None
            has_latents_mean = (
                hasattr(self.vae.config, "latents_mean")
                and self.vae.config.latents_mean is not None
            )
            has_latents_std = (
                hasattr(self.vae.config, "latents_std") and self.vae.config.latents_std is not None
            )
            if has_latents_mean and has_latents_std:
                latents_mean = (
                    torch.tensor(self.vae.config.latents_mean)
                    .view(1, 4, 1, 1)
                    .to(latents.device, latents.dtype)
                )
                latents_std = (
                    torch.tensor(self.vae.config.latents_std)
                    .view(1, 4, 1, 1)
                    .to(latents.device, latents.dtype)
                )
                latents = latents * latents_std / self.vae.config.scaling_factor + latents_mean
            else:
                latents = latents / self.vae.config.scaling_factor

            latents = latents.to(get_module_execution_device(self.vae))
            image = self.vae.decode(latents, return_dict=False)[0]

            # cast back to fp16 if needed
            if needs_upcasting:
                self.vae.to(dtype=torch.float16)
        else:
            image = latents

        if not output_type == "latent":  # noqa: SIM201
            # apply watermark if available
            if self.watermark is not None:
                image = self.watermark.apply_watermark(image)

            image = self.image_processor.postprocess(image, output_type=output_type)
        # End of copy

        # Offload all models
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image,)

        return StableDiffusionXLPipelineOutput(images=image)
