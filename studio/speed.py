"""Speed and memory choices applied to a loaded pipeline, as the settings ask.

- **Placement** (``offload``): ``none`` moves the pipeline to the device; ``model`` is
  diffusers' model CPU offload (one model on the GPU at a time); ``group`` is diffusers' group
  offloading of the models' blocks (lowest GPU memory; on CUDA with a copy stream).
- **Compilation** (``compile``): the denoiser in channels-last memory format and its repeated
  transformer blocks compiled with ``compile_repeated_blocks`` (regional compilation: every
  block shares one compiled graph, so compiling takes seconds, not minutes). The identity
  tokens, prompt and seed are graph inputs, so changing them does not recompile. QKV
  projections stay unfused: diffusers' ``fuse_qkv_projections`` replaces every attention
  processor, which would remove the attention stack (identity, FaceID LoRA).
- **VAE** (``vae_tiling``): decoding tiled above :data:`VAE_TILING_PIXELS` (``auto``), always
  (``on``) or never (``off``); batches decode one image at a time (slicing, exact).
- **Attention kernel** (``attention_backend``): PyTorch's scaled-dot-product backend for the
  call (diffusers' ``set_attention_backend`` reaches only its dispatch-based processors, not
  the UNet's).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from adapters.layout import denoiser

#: ``vae_tiling="auto"`` tiles decoding of images larger than this (SDXL's native 1024²).
VAE_TILING_PIXELS = 1024 * 1024


def place(pipe, offload: str, device: str) -> None:
    """Put ``pipe`` on ``device`` with the chosen offload mode (``none``, ``model``, ``group``)."""
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "group":
        on_cuda = torch.device(device).type == "cuda"
        pipe.enable_group_offload(
            onload_device=torch.device(device),
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=on_cuda,
            non_blocking=on_cuda,
        )
    else:
        pipe.to(device)


def compile_denoiser(pipe, *, backend: str = "inductor") -> None:
    """Channels-last denoiser with its repeated blocks compiled (and the ControlNets' too)."""
    models = [denoiser(pipe)]
    models += [
        model
        for name in ("controlnet", "identitynet")
        if getattr(model := getattr(pipe, name, None), "_repeated_blocks", None)
    ]
    for model in models:
        model.to(memory_format=torch.channels_last)
        model.compile_repeated_blocks(backend=backend, fullgraph=False)


def fit_vae(pipe, *, width: int | None, height: int | None, mode: str) -> None:
    """Tile the VAE's decoding of large images (``mode``: ``auto``, ``on``, ``off``) and decode
    batches one image at a time."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return
    vae.enable_slicing()
    if mode == "auto":
        default = denoiser(pipe).config.sample_size * pipe.vae_scale_factor
        pixels = (width or default) * (height or default)
        tiled = pixels > VAE_TILING_PIXELS
    else:
        tiled = mode == "on"
    if tiled:
        vae.enable_tiling()
    else:
        vae.disable_tiling()


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """PyTorch's scaled-dot-product attention limited to backend ``name`` (``auto``: any)."""
    if name == "auto":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    with sdpa_kernel(backends[name]):
        yield
