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
"""Inpainting with an ordinary 4-channel UNet, as diffusers' inpainting pipelines do with one.

:class:`InpaintingMixin` is mixed into the identity-inpainting pipelines (SD1.5 and SDXL) before
their portrait pipeline: the image's latents are noised to the step that ``strength`` picks,
and after every step the latents outside the mask are put back to the image's, noised to the
next step. Made with ``from_pipe`` from a loaded portrait pipeline, the inpainting one shares
every weight, the identity adapter's included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint import (
    retrieve_latents,
)
from diffusers.utils.torch_utils import randn_tensor

from pipelines.vae import decode_latents, vae_in_float32


@dataclass(frozen=True, eq=False)
class InpaintStart:
    """Where an inpainting run starts: its steps, latents, noise, image latents and mask."""

    timesteps: torch.Tensor
    num_inference_steps: int
    latents: torch.Tensor
    noise: torch.Tensor
    image_latents: torch.Tensor
    mask: torch.Tensor


class InpaintingMixin:
    """Image and mask preparation, the strength's schedule and the per-step restore."""

    @property
    def mask_processor(self) -> VaeImageProcessor:
        """diffusers' inpainting mask processor: grayscale, binarised, not normalised."""
        return VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor,
            do_normalize=False,
            do_binarize=True,
            do_convert_grayscale=True,
        )

    def check_inpaint_inputs(self, image: Any, mask_image: Any, strength: float) -> None:
        if image is None or mask_image is None:
            raise ValueError("pass `image` and `mask_image`: what to repaint, and where")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"`strength` must be in (0, 1]; found {strength}")
        if self.unet.config.in_channels != 4:
            raise ValueError(
                f"this pipeline inpaints with an ordinary 4-channel UNet; the loaded UNet takes "
                f"{self.unet.config.in_channels} channels (an inpainting UNet): use diffusers' "
                "inpainting pipeline with it"
            )

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
        if num_inference_steps - t_start < 1:
            raise ValueError(
                f"`strength` {strength} leaves no denoising step of {num_inference_steps}; raise "
                "`strength` or `num_inference_steps`"
            )
        return timesteps, num_inference_steps - t_start

    def prepare_image_latents(
        self,
        image: PipelineImageInput,
        *,
        height: int,
        width: int,
        num_images: int,
        timestep: torch.Tensor,
        strength: float,
        generator: torch.Generator | list[torch.Generator] | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The starting latents, the noise they hold and the image's clean latents: pure noise
        at ``strength`` 1, else the image's latents noised to ``timestep``."""
        pixels = self.image_processor.preprocess(image, height=height, width=width)
        with vae_in_float32(self.vae):
            pixels = pixels.to(device=device, dtype=self.vae.dtype)
            if isinstance(generator, list):
                encoded = [
                    retrieve_latents(self.vae.encode(pixels), generator=one)
                    for one in generator[: len(pixels)]
                ]
                image_latents = torch.cat(encoded)
            else:
                image_latents = retrieve_latents(self.vae.encode(pixels), generator=generator)
        image_latents = (self.vae.config.scaling_factor * image_latents).to(dtype)
        image_latents = image_latents.repeat(num_images // image_latents.shape[0], 1, 1, 1)
        noise = randn_tensor(image_latents.shape, generator=generator, device=device, dtype=dtype)
        if strength >= 1.0:
            latents = noise * self.scheduler.init_noise_sigma
        else:
            latents = self.scheduler.add_noise(image_latents, noise, timestep)
        return latents, noise, image_latents

    def prepare_inpaint_mask(
        self,
        mask_image: PipelineImageInput,
        *,
        height: int,
        width: int,
        num_images: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """The binarised mask at latent size, ``[num_images, 1, h, w]``."""
        mask = self.mask_processor.preprocess(mask_image, height=height, width=width)
        mask = torch.nn.functional.interpolate(
            mask, size=(height // self.vae_scale_factor, width // self.vae_scale_factor)
        ).to(device=device, dtype=dtype)
        return mask.repeat(num_images // mask.shape[0], 1, 1, 1)

    def prepare_inpainting(
        self,
        image: PipelineImageInput,
        mask_image: PipelineImageInput,
        *,
        num_inference_steps: int,
        strength: float,
        height: int,
        width: int,
        num_images: int,
        generator,
        device: torch.device,
        dtype: torch.dtype,
    ) -> InpaintStart:
        """The last ``strength`` of the schedule, the starting latents, the image's own latents,
        the noise and the mask at latent size."""
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device
        )
        timesteps, num_inference_steps = self.get_timesteps(num_inference_steps, strength, device)
        latents, noise, image_latents = self.prepare_image_latents(
            image,
            height=height,
            width=width,
            num_images=num_images,
            timestep=timesteps[:1].repeat(num_images),
            strength=strength,
            generator=generator,
            device=device,
            dtype=dtype,
        )
        mask = self.prepare_inpaint_mask(
            mask_image,
            height=height,
            width=width,
            num_images=num_images,
            device=device,
            dtype=dtype,
        )
        return InpaintStart(timesteps, num_inference_steps, latents, noise, image_latents, mask)

    def inpaint_step(
        self,
        noise_pred: torch.Tensor,
        latents: torch.Tensor,
        start: InpaintStart,
        step: int,
        guidance_scale: float,
        extra_step_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """Guidance, the scheduler's step ``step``, then the image's latents restored outside
        the mask."""
        if self.do_classifier_free_guidance:
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
        t = start.timesteps[step]
        latents = self.scheduler.step(
            noise_pred, t, latents, **extra_step_kwargs, return_dict=False
        )[0]
        return self.restore_known(
            latents,
            image_latents=start.image_latents,
            noise=start.noise,
            mask=start.mask,
            timesteps=start.timesteps,
            step=step,
        )

    def restore_known(
        self,
        latents: torch.Tensor,
        *,
        image_latents: torch.Tensor,
        noise: torch.Tensor,
        mask: torch.Tensor,
        timesteps: torch.Tensor,
        step: int,
    ) -> torch.Tensor:
        """After step ``step``: outside the mask, the image's latents noised to the next step
        (clean after the last one), as diffusers' inpainting with a 4-channel UNet does."""
        known = image_latents
        if step < len(timesteps) - 1:
            known = self.scheduler.add_noise(
                image_latents, noise, torch.tensor([timesteps[step + 1]])
            )
        return (1 - mask) * known + mask * latents

    def decode_inpainted(self, latents: torch.Tensor, output_type: str, generator=None):
        """Decode to images of ``output_type`` (``pil``, ``np`` or ``pt``)."""
        if output_type == "latent":
            raise ValueError("`output_type` must be 'pil', 'np' or 'pt' for inpainting")
        return decode_latents(self, latents, output_type, generator)
