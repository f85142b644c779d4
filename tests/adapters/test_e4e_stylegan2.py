"""e4e and the StyleGAN2 decoder: published layouts (full size on the meta device), a tiny
synthetic e4e_ffhq_encode.pt through encode and render, and bad checkpoints."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
from published_ir_se import ir_se50_stem_and_body_layout

from adapters.e4e import E4E, E4EConfig, check_state_dict, load_e4e
from adapters.stylegan2 import StyleGAN2Config, StyleGAN2Generator, Upsample, upfirdn2d
from adapters.synthetic_wplus import write_e4e_checkpoint

TINY_ENCODER = E4EConfig(widths=(8, 8, 16, 16), n_styles=10)
TINY_DECODER = StyleGAN2Config(size=64, channels=(16, 16, 16, 16, 8), style_dim=16, n_mlp=2)


def _rosinality_generator_layout(size=1024, style_dim=512, n_mlp=8, multiplier=2):
    """Key -> shape of rosinality's ``Generator(size, 512, 8, channel_multiplier=2)``."""
    channels = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * multiplier, 128: 128 * multiplier}
    channels |= {256: 64 * multiplier, 512: 32 * multiplier, 1024: 16 * multiplier}
    layout = {}
    for i in range(1, n_mlp + 1):
        layout |= {f"style.{i}.weight": (style_dim, style_dim), f"style.{i}.bias": (style_dim,)}
    layout["input.input"] = (1, channels[4], 4, 4)

    def styled(prefix, cin, cout, up):
        layout[f"{prefix}.conv.weight"] = (1, cout, cin, 3, 3)
        layout[f"{prefix}.conv.modulation.weight"] = (cin, style_dim)
        layout[f"{prefix}.conv.modulation.bias"] = (cin,)
        layout[f"{prefix}.noise.weight"] = (1,)
        layout[f"{prefix}.activate.bias"] = (cout,)
        if up:
            layout[f"{prefix}.conv.blur.kernel"] = (4, 4)

    def to_rgb(prefix, cin, up):
        layout[f"{prefix}.conv.weight"] = (1, 3, cin, 1, 1)
        layout[f"{prefix}.conv.modulation.weight"] = (cin, style_dim)
        layout[f"{prefix}.conv.modulation.bias"] = (cin,)
        layout[f"{prefix}.bias"] = (1, 3, 1, 1)
        if up:
            layout[f"{prefix}.upsample.kernel"] = (4, 4)

    styled("conv1", channels[4], channels[4], False)
    to_rgb("to_rgb1", channels[4], False)
    log_size = int(math.log2(size))
    for i in range((log_size - 2) * 2 + 1):
        res = 2 ** ((i + 5) // 2)
        layout[f"noises.noise_{i}"] = (1, 1, res, res)
    cin = channels[4]
    for i in range(3, log_size + 1):
        cout = channels[2**i]
        styled(f"convs.{2 * (i - 3)}", cin, cout, True)
        styled(f"convs.{2 * (i - 3) + 1}", cout, cout, False)
        to_rgb(f"to_rgbs.{i - 3}", cout, True)
        cin = cout
    return layout


def _e4e_encoder_layout():
    """Key -> shape of e4e's ``Encoder4Editing(50, 'ir_se', opts)`` for 1024-px StyleGAN."""
    layout = ir_se50_stem_and_body_layout()
    for i in range(18):
        spatial = 16 if i < 3 else 32 if i < 7 else 64
        for j in range(int(math.log2(spatial))):
            layout[f"styles.{i}.convs.{2 * j}.weight"] = (512, 512, 3, 3)
            layout[f"styles.{i}.convs.{2 * j}.bias"] = (512,)
        layout[f"styles.{i}.linear.weight"] = (512, 512)
        layout[f"styles.{i}.linear.bias"] = (512,)
    layout |= {"latlayer1.weight": (512, 256, 1, 1), "latlayer1.bias": (512,)}
    layout |= {"latlayer2.weight": (512, 128, 1, 1), "latlayer2.bias": (512,)}
    return layout


def _shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.fixture(scope="module")
def full_size_e4e() -> E4E:
    with torch.device("meta"):
        return E4E(E4EConfig(), StyleGAN2Config.published(1024))


def test_full_size_model_has_the_published_key_sets_without_allocating(full_size_e4e):
    state = full_size_e4e.state_dict()
    assert all(v.is_meta for v in state.values())
    encoder = {k[8:]: v for k, v in state.items() if k.startswith("encoder.")}
    decoder = {k[8:]: v for k, v in state.items() if k.startswith("decoder.")}
    assert _shapes(encoder) == _e4e_encoder_layout()
    assert len(encoder) == 621
    assert _shapes(decoder) == _rosinality_generator_layout()
    assert full_size_e4e.decoder.n_latent == 18
    assert tuple(state["latent_avg"].shape) == (18, 512)
    # Shapes are read back from a state dict, as load_e4e does.
    assert StyleGAN2Config.from_state_dict(decoder) == StyleGAN2Config.published(1024)
    assert E4EConfig.from_state_dict(encoder) == E4EConfig()


def test_full_size_layout_check_names_the_file_and_the_differences(full_size_e4e):
    expected = full_size_e4e.state_dict()
    found = dict(expected)
    del found["encoder.styles.17.linear.bias"]
    found["decoder.extra"] = torch.empty(1, device="meta")
    found["decoder.style.1.weight"] = torch.empty(512, 256, device="meta")
    with pytest.raises(ValueError, match="e4e_ffhq_encode.pt") as error:
        check_state_dict(expected, found, "e4e_ffhq_encode.pt")
    message = str(error.value)
    assert "styles.17.linear.bias" in message and "decoder.extra" in message
    assert "decoder.style.1.weight [512, 256] (expected [512, 512])" in message
    check_state_dict(expected, expected, "e4e_ffhq_encode.pt")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("e4e") / "e4e_ffhq_encode.pt"
    return write_e4e_checkpoint(path, TINY_ENCODER, TINY_DECODER)


def test_tiny_published_file_loads_and_encodes_and_renders(tiny_checkpoint):
    saved = torch.load(tiny_checkpoint, weights_only=True)
    model = load_e4e(tiny_checkpoint)
    assert model.encoder.config == TINY_ENCODER and model.decoder.config == TINY_DECODER
    torch.testing.assert_close(model.latent_avg, saved["latent_avg"])
    torch.testing.assert_close(
        model.decoder.style[1].weight, saved["state_dict"]["decoder.style.1.weight"]
    )
    faces = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        w_plus = model.encode(faces)
        assert w_plus.shape == (2, TINY_DECODER.n_latent, TINY_DECODER.style_dim)
        # Row 0 is w0; every later row adds its own delta, so the rows differ.
        offsets = w_plus - model.latent_avg
        assert not torch.allclose(offsets[:, 0], offsets[:, 1])
        model.decoder.conv1.noise.weight.fill_(1.0)
        images = model.render(w_plus)
        again = model.render(w_plus)
        noisy = model.render(w_plus, noise_mode="random")
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()
    # The stored noise maps render the same face twice; fresh noise changes it.
    torch.testing.assert_close(images, again)
    assert not torch.allclose(images, noisy)


def test_generator_rejects_wrong_w_plus_and_upsample_keeps_flat_fields():
    generator = StyleGAN2Generator(TINY_DECODER)
    with pytest.raises(ValueError, match=r"\[batch, 10, 16\]"):
        generator(torch.zeros(1, 18, 512))
    flat = Upsample()(torch.ones(1, 2, 8, 8))
    assert flat.shape == (1, 2, 16, 16)
    torch.testing.assert_close(flat[..., 2:-2, 2:-2], torch.ones(1, 2, 12, 12))


def test_encode_rejects_faces_of_the_wrong_size(tiny_checkpoint):
    model = load_e4e(tiny_checkpoint)
    with pytest.raises(ValueError, match="align_ffhq_quad"):
        model.encode(torch.zeros(1, 3, 128, 128))


def test_bad_checkpoints_fail_with_the_file_named(tmp_path, tiny_checkpoint):
    saved = torch.load(tiny_checkpoint, weights_only=True)
    state = saved["state_dict"]

    def write(name, obj):
        path = tmp_path / name
        torch.save(obj, path)
        return path

    cases = {
        "tensor.pt": (torch.zeros(3), "holds a Tensor, not a state dict"),
        "stylegan.pt": (
            {"state_dict": {k: v for k, v in state.items() if k.startswith("decoder.")}},
            "no encoder",
        ),
        "pickled.pt": ({**saved, "opts": argparse.Namespace(a=1)}, "weights_only"),
        "psp.pt": ({**saved, "opts": {"encoder_type": "GradualStyleEncoder"}}, "GradualStyle"),
        "no_avg.pt": ({k: v for k, v in saved.items() if k != "latent_avg"}, "latent_avg"),
        "missing.pt": (
            {**saved, "state_dict": {k: v for k, v in state.items() if "latlayer2" not in k}},
            "missing keys",
        ),
    }
    for name, (obj, message) in cases.items():
        path = write(name, obj)
        with pytest.raises(ValueError, match=message) as error:
            load_e4e(path)
        assert name in str(error.value)
    with pytest.raises(FileNotFoundError, match="e4e_ffhq_encode.pt"):
        load_e4e(tmp_path / "absent.pt")


def test_upfirdn2d_is_zero_insertion_padding_and_true_convolution():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 2, 5, 6)).astype(np.float32)
    kernel = rng.normal(size=(4, 4)).astype(np.float32)  # asymmetric: the flip matters
    up, (before, after) = 2, (2, 1)
    # Reference by the definition: insert up-1 zeros after each sample, pad, convolve.
    grid = np.zeros((1, 2, 5 * up, 6 * up), np.float32)
    grid[..., ::up, ::up] = x
    grid = np.pad(grid, ((0, 0), (0, 0), (before, after), (before, after)))
    out_h, out_w = grid.shape[2] - 3, grid.shape[3] - 3
    expected = np.zeros((1, 2, out_h, out_w), np.float32)
    for i in range(out_h):
        for j in range(out_w):
            window = grid[..., i : i + 4, j : j + 4]
            expected[..., i, j] = (window * kernel[::-1, ::-1]).sum(axis=(-2, -1))
    ours = upfirdn2d(torch.from_numpy(x), torch.from_numpy(kernel), up=up, pad=(before, after))
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-5)
