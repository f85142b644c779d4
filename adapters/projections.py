"""Projections from face embeddings to identity tokens, in the published checkpoints' layouts.

Each class loads its published ``image_proj`` state dict key for key
(``load_state_dict(strict=True)``): module names follow the published files, so
``proj.0``/``proj.2``/``norm``, ``perceiver_resampler.layers.N.0.to_kv`` and the like are the
reference implementation's names, not ours to choose. Attention inside the perceivers runs on
``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class PerceiverAttention(nn.Module):
    """Latents attend to ``[inputs, latents]``; keys ``norm1, norm2, to_q, to_kv, to_out``."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        batch, length, _ = latents.shape
        query = self.to_q(latents)
        key, value = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        query, key, value = (
            t.view(batch, t.shape[1], self.heads, -1).transpose(1, 2) for t in (query, key, value)
        )
        out = F.scaled_dot_product_attention(query, key, value)
        return self.to_out(out.transpose(1, 2).reshape(batch, length, -1))


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    """Published ``layers.N.1``: LayerNorm (``.0``), Linear (``.1``), GELU, Linear (``.3``)."""
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


def _perceiver_layers(dim: int, depth: int, heads: int, dim_head: int, ff_mult: int):
    return nn.ModuleList(
        nn.ModuleList([PerceiverAttention(dim, heads, dim_head), _feed_forward(dim, ff_mult)])
        for _ in range(depth)
    )


def _perceive(module: nn.Module, latents: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The perceiver body shared by both resamplers: ``proj_in``, residual layers, ``proj_out``."""
    x = module.proj_in(x)
    for attention, feed_forward in module.layers:
        latents = attention(x, latents) + latents
        latents = feed_forward(latents) + latents
    return module.norm_out(module.proj_out(latents))


class FacePerceiverResampler(nn.Module):
    """FaceID-Plus's resampler: refines ID tokens by attending to CLIP image features."""

    def __init__(
        self, dim: int, depth: int, heads: int, dim_head: int, embed_dim: int, ff_mult: int
    ):
        super().__init__()
        self.proj_in = nn.Linear(embed_dim, dim)
        self.proj_out = nn.Linear(dim, dim)
        self.norm_out = nn.LayerNorm(dim)
        self.layers = _perceiver_layers(dim, depth, heads, dim_head, ff_mult)

    def forward(self, latents: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _perceive(self, latents, x)


def _faceid_mlp(id_embed_dim: int, hidden_dim: int, out_features: int) -> nn.Sequential:
    """Published ``proj``: Linear (``.0``), GELU, Linear (``.2``)."""
    return nn.Sequential(
        nn.Linear(id_embed_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_features)
    )


def _faceid_tokens(module: ModelMixin, id_embeds: torch.Tensor) -> torch.Tensor:
    tokens = module.proj(id_embeds)
    config = module.config
    return module.norm(tokens.reshape(-1, config.num_tokens, config.cross_attention_dim))


class FaceIDProjection(ModelMixin, ConfigMixin):
    """IP-Adapter-FaceID: ``[B, 512]`` ArcFace embeddings -> ``[B, num_tokens, width]`` tokens.

    Published keys: ``proj.0`` (512 -> 1024), ``proj.2`` (1024 -> cross_attention_dim x 4),
    ``norm`` (LayerNorm over each token).
    """

    @register_to_config
    def __init__(
        self,
        id_embed_dim: int = 512,
        hidden_dim: int = 1024,
        cross_attention_dim: int = 768,
        num_tokens: int = 4,
    ):
        super().__init__()
        self.proj = _faceid_mlp(id_embed_dim, hidden_dim, cross_attention_dim * num_tokens)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, id_embeds: torch.Tensor) -> torch.Tensor:
        return _faceid_tokens(self, id_embeds)


class FaceIDPlusProjection(ModelMixin, ConfigMixin):
    """IP-Adapter-FaceID-PlusV2: FaceID tokens refined over CLIP ViT-H image features.

    ``forward(id_embeds [B, 512], clip_image_embeds [B, 257, 1280])``: the MLP's tokens ``x`` are
    the perceiver's latents; with ``shortcut`` (V2) the result is ``x + scale * perceiver(x)``,
    without it (V1) just ``perceiver(x)``. Published keys: FaceIDProjection's plus
    ``perceiver_resampler.{proj_in, proj_out, norm_out, layers.N.0.*, layers.N.1.{0,1,3}}``.
    """

    @register_to_config
    def __init__(
        self,
        id_embed_dim: int = 512,
        hidden_dim: int = 1024,
        cross_attention_dim: int = 768,
        num_tokens: int = 4,
        clip_embed_dim: int = 1280,
        depth: int = 4,
        heads: int = 12,
        dim_head: int = 64,
        ff_mult: int = 4,
        shortcut: bool = True,
    ):
        super().__init__()
        self.proj = _faceid_mlp(id_embed_dim, hidden_dim, cross_attention_dim * num_tokens)
        self.norm = nn.LayerNorm(cross_attention_dim)
        self.perceiver_resampler = FacePerceiverResampler(
            cross_attention_dim, depth, heads, dim_head, clip_embed_dim, ff_mult
        )

    def forward(
        self, id_embeds: torch.Tensor, clip_image_embeds: torch.Tensor, scale: float = 1.0
    ) -> torch.Tensor:
        tokens = _faceid_tokens(self, id_embeds)
        refined = self.perceiver_resampler(tokens, clip_image_embeds)
        return tokens + scale * refined if self.config.shortcut else refined


class IdentityResampler(ModelMixin, ConfigMixin):
    """InstantID's perceiver Resampler: ``[B, 512]`` or ``[B, n, 512]`` -> ``[B, 16, 2048]``.

    Published keys: ``latents`` ``[1, num_tokens, dim]``, ``proj_in``, ``proj_out``, ``norm_out``,
    ``layers.N.0.{norm1, norm2, to_q, to_kv, to_out}``, ``layers.N.1.{0, 1, 3}``.
    """

    @register_to_config
    def __init__(
        self,
        id_embed_dim: int = 512,
        cross_attention_dim: int = 2048,
        num_tokens: int = 16,
        dim: int = 1280,
        depth: int = 4,
        heads: int = 20,
        dim_head: int = 64,
        ff_mult: int = 4,
    ):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_tokens, dim) / dim**0.5)
        self.proj_in = nn.Linear(id_embed_dim, dim)
        self.proj_out = nn.Linear(dim, cross_attention_dim)
        self.norm_out = nn.LayerNorm(cross_attention_dim)
        self.layers = _perceiver_layers(dim, depth, heads, dim_head, ff_mult)

    def forward(self, id_embeds: torch.Tensor) -> torch.Tensor:
        if id_embeds.ndim == 2:
            id_embeds = id_embeds.unsqueeze(1)
        latents = self.latents.expand(id_embeds.shape[0], -1, -1)
        return _perceive(self, latents, id_embeds)
