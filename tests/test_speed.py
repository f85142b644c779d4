"""Speed and memory settings on the tiny sets: offload modes reach diffusers, VAE tiling follows
the size, and a compiled host does not recompile when only prompt, seed or identity change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.cli import build_parser
from studio.cli_common import settings_from_args
from studio.errors import ConfigError
from studio.host import PipelineHost, build_pipeline
from studio.models import select_model_set
from studio.settings import load_settings
from studio.speed import VAE_TILING_PIXELS, fit_vae


def _call(seed: int, **kwargs) -> dict:
    return {
        "prompt": "a portrait",
        "num_inference_steps": 2,
        "width": 64,
        "height": 64,
        "output_type": "np",
        "generator": torch.Generator().manual_seed(seed),
        **kwargs,
    }


def _identity(seed: int) -> torch.Tensor:
    """A unit embedding of the tiny set's 128-d recognizer."""
    embeds = torch.randn(1, 128, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(embeds, dim=-1)


def test_speed_settings_come_from_flags_env_and_config_and_are_checked(tmp_path):
    args = build_parser().parse_args(["portrait", "--compile", "--offload", "group"])
    settings = settings_from_args(args)
    assert settings.compile and settings.offload == "group"
    plain = settings_from_args(build_parser().parse_args(["generate", "--prompt", "x"]))
    assert not plain.compile and plain.offload == "none"

    env = {"STUDIO_COMPILE": "1", "STUDIO_OFFLOAD": "model"}
    settings = load_settings(env=env)
    assert settings.compile and settings.offload == "model"
    config = tmp_path / "config.toml"
    config.write_text('vae_tiling = "on"\nattention_backend = "math"\ncompile = true\n')
    settings = load_settings(env={}, config=config)
    assert settings.vae_tiling == "on" and settings.attention_backend == "math"
    assert settings.compile

    with pytest.raises(ConfigError, match="offload 'disk' is not supported; use one of none"):
        load_settings(env={"STUDIO_OFFLOAD": "disk"})
    config.write_text('compile = "yes"\n')
    with pytest.raises(ConfigError, match="compile must be true or false"):
        load_settings(env={}, config=config)


def test_auto_dtype_is_bfloat16_on_gpus_that_support_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert load_settings(env={}, device="cuda").torch_dtype() == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert load_settings(env={}, device="cuda").torch_dtype() == torch.float16
    assert load_settings(env={}, device="cuda", dtype="float16").torch_dtype() == torch.float16
    assert load_settings(env={}, device="cpu").torch_dtype() == torch.float32


@pytest.mark.slow
def test_offload_modes_install_diffusers_hooks_and_generate_the_same_images(tiny_env):
    tiny = select_model_set("tiny")
    plain = build_pipeline(tiny, load_settings(), identity=False)
    expected = plain(**_call(0)).images

    offloaded = build_pipeline(tiny, load_settings(offload="model"), identity=False)
    assert all(hasattr(getattr(offloaded, name), "_hf_hook") for name in ("unet", "vae"))
    np.testing.assert_allclose(offloaded(**_call(0)).images, expected, atol=1e-6)

    grouped = build_pipeline(tiny, load_settings(offload="group"), identity=False)
    from diffusers.hooks import HookRegistry

    registry = HookRegistry.check_if_exists_or_initialize(grouped.unet)
    assert "group_offloading" in registry.hooks
    np.testing.assert_allclose(grouped(**_call(0)).images, expected, atol=1e-6)


@pytest.mark.slow
def test_vae_tiles_large_images_only_and_slices_batches(tiny_env):
    pipe = build_pipeline(select_model_set("tiny"), load_settings(), identity=False)
    side = int(VAE_TILING_PIXELS**0.5)
    fit_vae(pipe, width=side, height=side, mode="auto")
    assert not pipe.vae.use_tiling and pipe.vae.use_slicing
    fit_vae(pipe, width=side + 64, height=side, mode="auto")
    assert pipe.vae.use_tiling
    fit_vae(pipe, width=64, height=64, mode="on")
    assert pipe.vae.use_tiling
    fit_vae(pipe, width=4096, height=4096, mode="off")
    assert not pipe.vae.use_tiling


@pytest.mark.slow
def test_a_compiled_host_does_not_recompile_for_new_prompt_seed_or_identity(tiny_env):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    settings = load_settings(compile_backend="eager")
    host = PipelineHost(settings, compile=True)
    pipe = host.pipeline(select_model_set("tiny"))
    images, _ = host.run(pipe, **_call(0, identity_embeds=_identity(0)))
    compiled = sum(counters["stats"].values()), dict(counters["frames"])
    assert counters["frames"]["ok"] > 0, "the repeated blocks were not compiled"
    assert not counters["graph_break"], "the attention stack must trace in one graph"
    eager = PipelineHost(load_settings())
    expected, _ = eager.run(
        eager.pipeline(select_model_set("tiny")), **_call(0, identity_embeds=_identity(0))
    )
    np.testing.assert_allclose(images, expected, atol=1e-5)

    # Another request: new prompt, seed and identity; the same compiled blocks serve it.
    again = host.pipeline(select_model_set("tiny"))
    assert again is pipe
    host.run(pipe, **_call(7, prompt="another person, smiling", identity_embeds=_identity(3)))
    assert (sum(counters["stats"].values()), dict(counters["frames"])) == compiled
    assert counters["recompiles"] == {} or not any(counters["recompiles"].values())
