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
from diffusers.image_processor import PipelineImageInput
from diffusers.pipelines.stable_diffusion import (
    StableDiffusionPipelineOutput,
)
from diffusers.utils import logging, replace_example_docstring

from pipelines.conditioning import ConditionImageInput
from pipelines.inpainting import InpaintingMixin
from pipelines.portrait import PortraitPipeline

logger = logging.get_logger(__name__)

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


class PortraitInpaintPipeline(InpaintingMixin, PortraitPipeline):
    r"""
    Repaints the masked part of an image with a person's identity, keeping the rest.

    The [`PortraitPipeline`] (identity adapter tokens, optional ControlNet) on an ordinary
    4-channel UNet, inpainting as diffusers' [`~diffusers.StableDiffusionInpaintPipeline`] does
    with such a UNet ([`~pipelines.inpainting.InpaintingMixin`]). Made with `from_pipe` from a
    loaded [`PortraitPipeline`], it shares all weights (the studio's face swap uses it so).
    Latents outside the mask keep the image, but the decoded pixels there are the VAE's
    reconstruction: callers that need the original pixels blend them back with the mask.
    """

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
        self.check_inpaint_inputs(image, mask_image, strength)

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

        # 6. The last `strength` of the schedule; the starting latents, the image's own, the mask
        start = self.prepare_inpainting(
            image,
            mask_image,
            num_inference_steps=num_inference_steps,
            strength=strength,
            height=height,
            width=width,
            num_images=num_images,
            generator=generator,
            device=device,
            dtype=prompt_embeds.dtype,
        )
        timesteps, num_inference_steps, latents = (
            start.timesteps,
            start.num_inference_steps,
            start.latents,
        )

        # 7. Denoising loop, the image's latents restored outside the mask after every step
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
                latents = self.inpaint_step(
                    noise_pred, latents, start, i, self.guidance_scale, extra_step_kwargs
                )
                progress_bar.update()

        # 8. Decode
        images = self.decode_inpainted(latents, output_type, generator)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, None)
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=None)
