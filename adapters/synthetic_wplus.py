"""Random-weight W+ files in the published layouts: e4e's ``e4e_ffhq_encode.pt`` and
``wplus_adapter.bin``, for tests and tiny model sets (scaled down by their configs)."""

from __future__ import annotations

from pathlib import Path

import torch

from adapters.e4e import E4E, E4EConfig
from adapters.stylegan2 import StyleGAN2Config
from adapters.wplus import W_DIM, WPlusAttention, WProjection


def write_e4e_checkpoint(
    path: str | Path,
    encoder_config: E4EConfig,
    decoder_config: StyleGAN2Config,
    *,
    seed: int = 0,
) -> Path:
    """Write a random e4e in the published file layout: ``state_dict`` with ``encoder.*`` and
    ``decoder.*``, ``opts`` as a plain dict and ``latent_avg`` ``[n_latent, style_dim]``."""
    torch.manual_seed(seed)
    model = E4E(encoder_config, decoder_config)
    state = {k: v for k, v in model.state_dict().items() if k != "latent_avg"}
    checkpoint = {
        "state_dict": state,
        "opts": {
            "encoder_type": "Encoder4Editing",
            "stylegan_size": decoder_config.size,
            "start_from_latent_avg": True,
            "checkpoint_path": str(path),
        },
        "latent_avg": torch.randn(decoder_config.n_latent, decoder_config.style_dim) * 0.1,
    }
    path = Path(path)
    torch.save(checkpoint, path)
    return path


def wplus_adapter_state_dict(model: torch.nn.Module, *, seed: int = 0, w_dim: int = W_DIM) -> dict:
    """A random ``wplus_adapter.bin`` dict for the denoiser ``model`` (a UNet) in the published
    keys: ``w_proj`` (``proj_0..3.weight``, ``norm.*``) and ``wplus_adapter`` (``"<layer
    index>.to_{q,k,v}_wplus.weight"`` on cross-attention layers); ``w_dim`` is the width of W
    (512 published, less for a scaled-down e4e)."""
    generator = torch.Generator().manual_seed(seed)
    attention = WPlusAttention.for_denoiser(model)
    projection = WProjection(cross_attention_dim=attention.config.context_dims[0], w_dim=w_dim)

    def randomised(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        state = {}
        for key, value in module.state_dict().items():
            noise = torch.randn(value.shape, generator=generator) / value.shape[-1] ** 0.5
            state[key] = 1.0 + 0.1 * noise if key == "norm.weight" else noise
        return state

    return {"w_proj": randomised(projection), "wplus_adapter": randomised(attention)}
