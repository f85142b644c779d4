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
"""Stable Diffusion 1.5 inpainting with the identity adapter and the face-mesh ControlNet."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
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
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint import (
    retrieve_latents,
)
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import logging, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from pipelines.conditioning import ConditionImageInput
from pipelines.portrait import PortraitPipeline

logger = logging.get_logger(__name__)

ADAPTER_COMPONENTS = ("identity_projection", "identity_attn", "wplus_projection", "wplus_attn")

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> from pipelines import PortraitInpaintPipeline

        >>> # `pipe`: a loaded PortraitPipeline with its identity adapter and ControlNet
        >>> inpaint = PortraitInpaintPipeline.from_pipe(pipe)  # shares every weight
        >>> # face: the target's face crop; mask: white where the face is repainted;
        >>> # mesh: the target's face mesh drawn at the crop's size (draw_face_mesh)
        >>> image = inpaint(
        ...     "a photo of a person",
        ...     image=face,
        ...     mask_image=mask,
        ...     strength=0.8,
        ...     identity_embeds=identity_embeds,
        ...     control_image=mesh,
        ... ).images[0]
        ```
"""


class PortraitInpaintPipeline(PortraitPipeline):
    r"""
    Repaints the masked part of an image with a person's identity, keeping the rest.

    The [`PortraitPipeline`] (identity adapter tokens, optional ControlNet) on an ordinary
    4-channel UNet, inpainting as diffusers' [`~diffusers.StableDiffusionInpaintPipeline`] does
    with such a UNet: the image's latents are noised to the step that `strength` picks, and
    after every step the latents outside the mask are replaced by the image's, noised to the
    next step. Made with `from_pipe` from a loaded [`PortraitPipeline`], it shares all weights
    (the studio's face swap uses it this way). Latents outside the mask keep the image, but the
    decoded pixels there are the VAE's reconstruction: callers that need the original pixels
    blend them back with the mask.
    """

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
            controlnet=controlnet,
            identity_projection=identity_projection,
            identity_attn=identity_attn,
            wplus_projection=wplus_projection,
            wplus_attn=wplus_attn,
            requires_safety_checker=requires_safety_checker,
        )
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor,
            do_normalize=False,
            do_binarize=True,
            do_convert_grayscale=True,
        )

    @classmethod
    def from_pipe(cls, pipeline, **kwargs: Any):
        """diffusers' ``from_pipe``, also handing over the identity and W+ adapters' components
        (diffusers hands over a model only when its class is the one the signature names)."""
        for name in ADAPTER_COMPONENTS:
            kwargs.setdefault(name, getattr(pipeline, name, None))
        return super().from_pipe(pipeline, **kwargs)

    def get_timesteps(self, num_inference_steps, strength, device):
        """The schedule's last ``strength`` of the steps, and how many they are."""
        # Copied from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img.StableDiffusionImg2ImgPipeline.get_timesteps  # noqa: E501
        # get the original timestep using init_timestep
        init_timestep = min(int(num_inference_steps * strength), num_inference_steps)

        t_start = max(num_inference_steps - init_timestep, 0)
        timesteps = self.scheduler.timesteps[t_start * self.scheduler.order :]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(t_start * self.scheduler.order)

        # End of copy
        return timesteps, num_inference_steps - t_start

    def prepare_image_latents(
        self,
        image: torch.Tensor,
        *,
        num_images: int,
        timestep: torch.Tensor,
        strength: float,
        generator: torch.Generator | list[torch.Generator] | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The starting latents, the noise they hold and the image's clean latents.

        As diffusers' inpainting pipeline: pure noise at `strength` 1, else the image's latents
        noised to `timestep`.
        """
        image = image.to(device=device, dtype=dtype)
        if isinstance(generator, list):
            image_latents = torch.cat(
                [
                    retrieve_latents(self.vae.encode(image), generator=one)
                    for one in generator[: len(image)]
                ]
            )
        else:
            image_latents = retrieve_latents(self.vae.encode(image), generator=generator)
        image_latents = self.vae.config.scaling_factor * image_latents
        image_latents = image_latents.repeat(num_images // image_latents.shape[0], 1, 1, 1)
        noise = randn_tensor(image_latents.shape, generator=generator, device=device, dtype=dtype)
        if strength >= 1.0:
            latents = noise * self.scheduler.init_noise_sigma
        else:
            latents = self.scheduler.add_noise(image_latents, noise, timestep)
        return latents, noise, image_latents

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: PipelineImageInput | None = None,
        mask_image: PipelineImageInput | None = None,
        strength: float = 0.8,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        identity_embeds: torch.Tensor | None = None,
        identity_scale: float | dict | None = None,
        control_image: ConditionImageInput | list[ConditionImageInput] | None = None,
        controlnet_conditioning_scale: float | list[float] | None = None,
        control_guidance_start: float | list[float] | None = None,
        control_guidance_end: float | list[float] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        **kwargs: Any,
    ) -> StableDiffusionPipelineOutput | tuple:
        r"""
        Repaint `image` where `mask_image` is white.

        Args:
            prompt (`str` or `list[str]`, *optional*):
                The prompt or prompts; or pass `prompt_embeds`.
            image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`):
                The image to repaint, as [`~diffusers.StableDiffusionInpaintPipeline`] takes it.
            mask_image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`):
                White (1) where the image is repainted, black (0) where it is kept; binarised.
            strength (`float`, *optional*, defaults to 0.8):
                How far the masked part may move from the image, in (0, 1]: the fraction of the
                steps that run (1 starts from pure noise).
            height (`int`, *optional*):
                Output height; defaults to the image's.
            width (`int`, *optional*):
                Output width; defaults to the image's.
            num_inference_steps (`int`, *optional*, defaults to 50):
                Denoising steps at `strength` 1; `strength` runs a fraction of them.
            guidance_scale (`float`, *optional*, defaults to 7.5):
                Classifier-free guidance scale; guidance is enabled when `guidance_scale > 1`.
            negative_prompt (`str` or `list[str]`, *optional*):
                What to steer away from.
            num_images_per_prompt (`int`, *optional*, defaults to 1):
                Images per prompt.
            eta (`float`, *optional*, defaults to 0.0):
                DDIM's eta; ignored by other schedulers.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                Generator(s) to make the noise deterministic.
            prompt_embeds (`torch.Tensor`, *optional*):
                Pre-generated text embeddings.
            negative_prompt_embeds (`torch.Tensor`, *optional*):
                Pre-generated negative text embeddings.
            identity_embeds (`torch.Tensor`, *optional*):
                The person's embeddings, as [`PortraitPipeline`] takes them.
            identity_scale (`float` or `dict`, *optional*):
                The identity adapter's scale for this call only.
            control_image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list, *optional*):
                The ControlNet condition (e.g. the target face's mesh drawn at the output size),
                as [`PortraitPipeline`] takes it.
            controlnet_conditioning_scale (`float` or `list[float]`, *optional*):
                Factor on the ControlNet residuals.
            control_guidance_start (`float` or `list[float]`, *optional*):
                Fraction of the steps at which the ControlNet starts.
            control_guidance_end (`float` or `list[float]`, *optional*):
                Fraction of the steps at which the ControlNet stops.
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`, `"np"` or `"pt"`.
            return_dict (`bool`, *optional*, defaults to `True`):
                Whether to return a [`StableDiffusionPipelineOutput`] instead of a tuple.
            cross_attention_kwargs (`dict`, *optional*):
                Passed to the UNet's attention processors; the identity is added under
                `"portrait"`.
            clip_skip (`int`, *optional*):
                Number of CLIP layers to skip for the prompt embeddings.
            kwargs:
                Names of other pipelines' arguments raise a `TypeError` naming this one's.

        Examples:

        Returns:
            [`~diffusers.pipelines.stable_diffusion.StableDiffusionPipelineOutput`] or `tuple`:
                The images and `None` for the safety verdicts (the studio runs none).
        """
        self.check_reference_arguments(kwargs)
        if image is None or mask_image is None:
            raise ValueError("pass `image` and `mask_image`: what to repaint, and where")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"`strength` must be in (0, 1]; found {strength}")
        if self.unet.config.in_channels != 4:
            raise ValueError(
                f"this pipeline inpaints with an ordinary 4-channel UNet; the loaded UNet takes "
                f"{self.unet.config.in_channels} channels (an inpainting UNet): use diffusers' "
                "StableDiffusionInpaintPipeline with it"
            )

        # 0. Output size (by default the image's) and the condition images at that size
        height, width = self.default_height_width(height, width, [image])
        height = height // self.vae_scale_factor * self.vae_scale_factor
        width = width // self.vae_scale_factor * self.vae_scale_factor
        control_images = self.control_image_tensors(control_image, height=height, width=width)

        # 1. Check inputs
        self.check_inputs(
            prompt,
            height,
            width,
            None,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            identity_embeds=identity_embeds,
            identity_scale=identity_scale,
            num_images_per_prompt=num_images_per_prompt,
            control_images=control_images,
            controlnet_conditioning_scale=controlnet_conditioning_scale,
            control_guidance_start=control_guidance_start,
            control_guidance_end=control_guidance_end,
        )
        self._guidance_scale = guidance_scale
        self._guidance_rescale = 0.0
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False

        # 2. Define call parameters
        batch_size = self.prompt_batch_size(prompt, prompt_embeds)
        num_images = batch_size * num_images_per_prompt
        device = self._execution_device

        # 3. Encode input prompt
        lora_scale = (cross_attention_kwargs or {}).get("scale")
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
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])

        # 4. Encode the identity
        identity_tokens = None
        if identity_embeds is not None:
            identity_tokens = self.encode_identity_tokens(
                identity_embeds,
                None,
                device=device,
                num_images=num_images,
                do_classifier_free_guidance=self.do_classifier_free_guidance,
            )

        # 5. Prepare the control images
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

        # 6. Timesteps: the last `strength` of the schedule
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device
        )
        timesteps, num_inference_steps = self.get_timesteps(num_inference_steps, strength, device)
        if num_inference_steps < 1:
            raise ValueError(
                f"`strength` {strength} leaves no denoising step of {len(self.scheduler.timesteps)}"
                "; raise `strength` or `num_inference_steps`"
            )
        latent_timestep = timesteps[:1].repeat(num_images)

        # 7. The image's latents, the starting latents and the mask at latent size
        init_image = self.image_processor.preprocess(image, height=height, width=width)
        latents, noise, image_latents = self.prepare_image_latents(
            init_image.to(dtype=torch.float32),
            num_images=num_images,
            timestep=latent_timestep,
            strength=strength,
            generator=generator,
            device=device,
            dtype=prompt_embeds.dtype,
        )
        mask = self.mask_processor.preprocess(mask_image, height=height, width=width)
        mask = torch.nn.functional.interpolate(
            mask, size=(height // self.vae_scale_factor, width // self.vae_scale_factor)
        ).to(device=device, dtype=prompt_embeds.dtype)
        init_mask = mask.repeat(num_images // mask.shape[0], 1, 1, 1)

        # 8. Denoising loop, the image's latents restored outside the mask after every step
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        self._num_timesteps = len(timesteps)
        attention_kwargs = self.attention_call_kwargs(
            cross_attention_kwargs, identity_tokens=identity_tokens, identity_scale=identity_scale
        )
        self._cross_attention_kwargs = attention_kwargs
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                latent_model_input = (
                    torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                )
                latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
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
                    guess_mode=False,
                )
                noise_pred = self.unet(
                    latent_model_input,
                    t,
                    encoder_hidden_states=prompt_embeds,
                    cross_attention_kwargs=self.cross_attention_kwargs,
                    down_block_additional_residuals=down_block_res_samples,
                    mid_block_additional_residual=mid_block_res_sample,
                    return_dict=False,
                )[0]
                if self.do_classifier_free_guidance:
                    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + self.guidance_scale * (
                        noise_pred_text - noise_pred_uncond
                    )
                latents = self.scheduler.step(
                    noise_pred, t, latents, **extra_step_kwargs, return_dict=False
                )[0]
                # As diffusers' inpainting with a 4-channel UNet: outside the mask, the image
                init_latents_proper = image_latents
                if i < len(timesteps) - 1:
                    noise_timestep = timesteps[i + 1]
                    init_latents_proper = self.scheduler.add_noise(
                        init_latents_proper, noise, torch.tensor([noise_timestep])
                    )
                latents = (1 - init_mask) * init_latents_proper + init_mask * latents
                progress_bar.update()

        # 9. Decode
        if output_type == "latent":
            raise ValueError("`output_type` must be 'pil', 'np' or 'pt' for inpainting")
        decoded = self.vae.decode(
            latents / self.vae.config.scaling_factor, return_dict=False, generator=generator
        )[0]
        images = self.image_processor.postprocess(decoded, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, None)
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=None)
