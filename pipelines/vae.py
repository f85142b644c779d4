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
"""The VAE's float16 overflow guard and the decode both the inpainting and repair pipelines use."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def vae_in_float32(vae) -> Iterator[None]:
    """Run ``vae`` in float32 while inside, when it is a float16 VAE that overflows
    (``force_upcast``), as diffusers' SDXL pipelines do."""
    upcast = vae.dtype == torch.float16 and vae.config.get("force_upcast", False)
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        yield
    finally:
        if upcast:
            vae.to(dtype=torch.float16)


def decode_latents(pipe, latents: torch.Tensor, output_type: str, generator=None):
    """``pipe``'s latents decoded by its VAE to images of ``output_type`` (``pil``, ``np``,
    ``pt``)."""
    with vae_in_float32(pipe.vae):
        latents = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor
        decoded = pipe.vae.decode(latents, return_dict=False, generator=generator)[0]
    return pipe.image_processor.postprocess(decoded, output_type=output_type)
