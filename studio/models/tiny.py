"""The ``tiny`` model sets: standard diffusers folders with tiny random weights, built locally.

They are built deterministically (fixed seeds) on first use into the models dir and loaded
through the same ``from_pretrained`` code as real weights; their identity adapters are written
in the published checkpoint layouts (IP-Adapter-FaceID, InstantID) and their ControlNets as
diffusers folders, so the same loaders users hit are exercised. The ``tiny`` set's W+ pieces are
scaled down in the published layouts too: an e4e (``e4e_ffhq_encode.pt``: IR-SE body and 18
style blocks, a 1024-px generator with 18 W+ rows, all 16 wide), a ``wplus_adapter.bin`` for
the tiny UNet over that 16-d W, and edit directions (InterFaceGAN ``[1, 16]`` and
``[1, 18, 16]``, a per-layer ``[18, 16]`` ``.npy``, a GANSpace PCA and config). They prove
mechanics, not quality.
Bump ``BUILD_VERSION`` whenever a builder's output changes, so old builds are not reused.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from studio.models.clip_vocab import build_clip_tokenizer

logger = logging.getLogger(__name__)

BUILD_VERSION = 2
SEED = 0
SFACE_DIM = 128  # the tiny FaceID adapter takes the embedded recognizer's embeddings
TINY_VAE_SCALE = 2  # two VAE blocks: latents are half the image size
TINY_W_DIM = 16  # width of the tiny e4e's W (the published is 512)
TINY_GANSPACE_COMPONENTS = 8
_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def _text_config(**extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=49408,
        max_position_embeddings=77,
        layer_norm_eps=1e-5,
        **extra,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )


def _unet(**extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        **extra,
    )


def _build_sd15(out: Path) -> None:
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(SEED)
    unet = _unet(cross_attention_dim=32, attention_head_dim=4)
    torch.manual_seed(SEED + 1)
    vae = _vae()
    torch.manual_seed(SEED + 2)
    text_encoder = CLIPTextModel(_text_config())
    tokenizer = build_clip_tokenizer(out / "tokenizer")
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=EulerDiscreteScheduler(**_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)


def _build_sdxl(out: Path) -> None:
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(SEED)
    unet = _unet(
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 time ids + 32 pooled text
        cross_attention_dim=64,  # 32 + 32: both text encoders' hidden states
    )
    torch.manual_seed(SEED + 1)
    vae = _vae()
    torch.manual_seed(SEED + 2)
    text_encoder = CLIPTextModel(_text_config())
    torch.manual_seed(SEED + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(projection_dim=32))
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=build_clip_tokenizer(out / "tokenizer"),
        tokenizer_2=build_clip_tokenizer(out / "tokenizer_2", pad_token="!"),
        scheduler=EulerDiscreteScheduler(**_SCHEDULER_CONFIG),
    )
    pipe.save_pretrained(out, safe_serialization=True)


def _tiny_unet(models_dir: Path, base: str):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(build(models_dir, base) / "unet")


def _build_faceid_sd15(out: Path, models_dir: Path) -> None:
    from adapters import write_checkpoint

    unet = _tiny_unet(models_dir, "tiny-sd15")
    write_checkpoint(
        "faceid-sd15",
        out / "ip-adapter-faceid_sd15.bin",
        unet=unet,
        seed=SEED,
        id_embed_dim=SFACE_DIM,
    )


def _build_instantid(out: Path, models_dir: Path) -> None:
    from adapters import write_checkpoint

    unet = _tiny_unet(models_dir, "tiny-sdxl")
    write_checkpoint("instantid", out / "ip-adapter.bin", unet=unet, seed=SEED)


def _build_identitynet(out: Path, models_dir: Path) -> None:
    from adapters import write_identitynet

    unet = _tiny_unet(models_dir, "tiny-sdxl")
    write_identitynet(out, unet, seed=SEED, vae_scale_factor=TINY_VAE_SCALE)


def _build_mesh_controlnet(out: Path, models_dir: Path) -> None:
    import torch
    from diffusers import ControlNetModel

    from adapters.synthetic import randomize_zero_convs

    torch.manual_seed(SEED)
    unet = _tiny_unet(models_dir, "tiny-sd15")
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=(16, 32), load_weights_from_unet=True
    )
    randomize_zero_convs(controlnet, seed=SEED, std=0.1)
    controlnet.save_pretrained(out, safe_serialization=True)


def _build_e4e(out: Path) -> None:
    from adapters.e4e import E4EConfig
    from adapters.stylegan2 import StyleGAN2Config
    from adapters.synthetic_wplus import write_e4e_checkpoint

    encoder = E4EConfig(widths=(8, 8, 16, TINY_W_DIM), n_styles=18)
    decoder = StyleGAN2Config(
        size=1024, channels=(8, 8, 8, 8, 4, 4, 4, 4, 4), style_dim=TINY_W_DIM, n_mlp=1
    )
    write_e4e_checkpoint(out / "e4e_ffhq_encode.pt", encoder, decoder, seed=SEED)


def _build_wplus_sd15(out: Path, models_dir: Path) -> None:
    import torch

    from adapters.synthetic_wplus import wplus_adapter_state_dict

    unet = _tiny_unet(models_dir, "tiny-sd15")
    state = wplus_adapter_state_dict(unet, seed=SEED, w_dim=TINY_W_DIM)
    torch.save(state, out / "wplus_adapter.bin")


def _build_directions(out: Path) -> None:
    """Seeded directions in the published shapes: InterFaceGAN ``age.pt`` ``[1, dim]`` and
    ``smile.pt`` ``[1, 18, dim]``, a per-layer ``glasses.npy`` ``[18, dim]`` acting on rows 4-7,
    and GANSpace ``ffhq_pca.pt`` with its tab-separated ``ganspace_configs.csv``."""
    import numpy as np
    import torch

    generator = torch.Generator().manual_seed(SEED)

    def unit(*shape):
        vector = torch.randn(*shape, generator=generator)
        return vector / vector.norm(dim=-1, keepdim=True)

    torch.save(unit(1, TINY_W_DIM), out / "age.pt")
    torch.save(unit(1, 1, TINY_W_DIM).expand(1, 18, TINY_W_DIM).clone(), out / "smile.pt")
    glasses = torch.zeros(18, TINY_W_DIM)
    glasses[4:8] = unit(1, TINY_W_DIM)
    np.save(out / "glasses.npy", glasses.numpy().astype(np.float32))
    basis, _ = torch.linalg.qr(
        torch.randn(TINY_W_DIM, TINY_GANSPACE_COMPONENTS, generator=generator)
    )
    comp = basis.T.reshape(TINY_GANSPACE_COMPONENTS, 1, TINY_W_DIM)  # orthonormal components
    pca = {
        "mean": torch.randn(1, TINY_W_DIM, generator=generator) * 0.1,
        "comp": comp.contiguous(),
        "std": torch.linspace(2.0, 0.5, TINY_GANSPACE_COMPONENTS),
    }
    torch.save(pca, out / "ffhq_pca.pt")
    (out / "ganspace_configs.csv").write_text("eye_openness\t3\t7\t8\t20\n", encoding="utf-8")


BUILDERS: dict[str, Callable[[Path, Path], None]] = {
    "tiny-sd15": lambda out, _: _build_sd15(out),
    "tiny-sdxl": lambda out, _: _build_sdxl(out),
    "tiny-faceid-sd15": _build_faceid_sd15,
    "tiny-controlnet-face-sd15": _build_mesh_controlnet,
    "tiny-instantid": _build_instantid,
    "tiny-identitynet": _build_identitynet,
    "tiny-e4e": lambda out, _: _build_e4e(out),
    "tiny-wplus-sd15": _build_wplus_sd15,
    "tiny-directions": lambda out, _: _build_directions(out),
}


def built_path(models_dir: Path, builder: str) -> Path:
    return models_dir / "builtin" / f"{builder}-v{BUILD_VERSION}"


def build(models_dir: Path, builder: str) -> Path:
    """Build ``builder``'s folder once (atomically: temp folder, then rename) and return it."""
    target = built_path(models_dir, builder)
    if target.exists():
        return target
    if builder not in BUILDERS:
        raise KeyError(f"unknown builtin model builder {builder!r}; known: {', '.join(BUILDERS)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("building %s into %s", builder, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{builder}-", dir=target.parent))
    try:
        BUILDERS[builder](tmp, models_dir)
        try:
            tmp.rename(target)
        except OSError:
            if not target.exists():  # a concurrent build that won the race is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
