"""The W+ adapter: published projection and attention maths, the published file layout, scale 0
and the schedule, and its term beside the identity adapter's on the attention stack."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

from adapters import AttentionCallState, ContributionInput, PortraitAttnProcessor
from adapters.attention import IdentityAttnLayer, IdentityContribution
from adapters.synthetic_wplus import wplus_adapter_state_dict
from adapters.wplus import (
    WPLUS,
    WPlusAttnLayer,
    WPlusContribution,
    WPlusSchedule,
    WProjection,
)

WIDTH = 32


def _randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=g) / param.shape[-1] ** 0.5)
    return module.eval()


@pytest.fixture(scope="module")
def attn2(sd15_unet):
    block = copy.deepcopy(sd15_unet.down_blocks[1].attentions[0].transformer_blocks[0])
    return block.attn2  # heads 4 x 8, width 32, 32-d text


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return {
        "hidden": torch.randn(2, 64, WIDTH, generator=g),
        "text": torch.randn(2, 7, WIDTH, generator=g),
        "wplus": torch.randn(2, 4, WIDTH, generator=g),
        "identity": torch.randn(2, 4, WIDTH, generator=g),
    }


def _published_wplus_layer(attn, layer, hidden, text, wplus_tokens, scale):
    """``WPlusAttnProcessor2_0.__call__`` of csxmli2016/w-plus-adapter, re-derived."""
    batch, heads = hidden.shape[0], attn.heads

    def split(x):
        return x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)

    def merge(x):
        return x.transpose(1, 2).reshape(batch, -1, x.shape[1] * x.shape[-1])

    query, key, value = attn.to_q(hidden), attn.to_k(text), attn.to_v(text)
    hidden_states = merge(F.scaled_dot_product_attention(split(query), split(key), split(value)))
    wq = layer.to_q_wplus(hidden_states)
    wk, wv = layer.to_k_wplus(wplus_tokens), layer.to_v_wplus(wplus_tokens)
    term = merge(F.scaled_dot_product_attention(split(wq), split(wk), split(wv)))
    out = attn.to_out[0](hidden_states + scale * term)
    return attn.to_out[1](out)


def _layer_call(attn, contributions, inputs, state):
    processor = PortraitAttnProcessor(AttnProcessor2_0(), contributions)
    return processor(attn, inputs["hidden"], inputs["text"], portrait=state)


@torch.no_grad()
def test_projection_is_the_published_four_slices_and_layernorm():
    projection = _randomised(WProjection(cross_attention_dim=24), seed=0)
    assert sorted(projection.state_dict()) == [
        "norm.bias",
        "norm.weight",
        "proj_0.weight",
        "proj_1.weight",
        "proj_2.weight",
        "proj_3.weight",
    ]
    assert projection.proj_3.weight.shape == (24, 6 * 512)
    w_plus = torch.randn(3, 18, 512)
    tokens = [
        w_plus[:, a:b].reshape(3, -1) @ getattr(projection, f"proj_{i}").weight.T
        for i, (a, b) in enumerate([(0, 4), (4, 8), (8, 12), (12, 18)])
    ]
    expected = F.layer_norm(
        torch.stack(tokens, 1), (24,), projection.norm.weight, projection.norm.bias
    )
    torch.testing.assert_close(projection(w_plus), expected)
    cfg = projection.encode(w_plus, do_classifier_free_guidance=True)
    torch.testing.assert_close(cfg[:3], projection(torch.zeros_like(w_plus)))
    torch.testing.assert_close(cfg[3:], expected)
    with pytest.raises(ValueError, match=r"\[batch, 18, 512\]"):
        projection(torch.zeros(1, 14, 512))


@torch.no_grad()
@pytest.mark.parametrize("scale", [0.0, 0.6])
def test_layer_matches_the_published_processor_and_scale_0_is_no_adapter(attn2, inputs, scale):
    layer = _randomised(WPlusAttnLayer(WIDTH, WIDTH), seed=1)
    state = AttentionCallState().with_input(
        WPLUS, ContributionInput(tokens=inputs["wplus"], scale=scale)
    )
    ours = _layer_call(attn2, [WPlusContribution(layer)], inputs, state)
    reference = _published_wplus_layer(
        attn2, layer, inputs["hidden"], inputs["text"], inputs["wplus"], scale
    )
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    if scale == 0:
        plain = AttnProcessor2_0()(attn2, inputs["hidden"], inputs["text"])
        assert torch.equal(ours, plain)


@torch.no_grad()
def test_wplus_and_identity_terms_add_on_the_same_layer(attn2, inputs):
    wplus = WPlusContribution(_randomised(WPlusAttnLayer(WIDTH, WIDTH), seed=2), scale=0.7)
    identity_layer = IdentityAttnLayer(WIDTH, WIDTH, cross_attention=True, lora_rank=None)
    identity = IdentityContribution(_randomised(identity_layer, seed=3), scale=0.4)
    state = (
        AttentionCallState()
        .with_input(WPLUS, ContributionInput(tokens=inputs["wplus"]))
        .with_input("identity", ContributionInput(tokens=inputs["identity"]))
    )
    none = _layer_call(attn2, [], inputs, state)
    both = _layer_call(attn2, [identity, wplus], inputs, state)
    only_wplus = _layer_call(attn2, [wplus], inputs, state)
    only_identity = _layer_call(attn2, [identity], inputs, state)
    # Both terms are added before the linear to_out, the W+ one from the text attention alone.
    torch.testing.assert_close(
        both - none, (only_wplus - none) + (only_identity - none), atol=1e-5, rtol=1e-5
    )
    assert (only_wplus - none).abs().max() > 1e-3 and (only_identity - none).abs().max() > 1e-3
    torch.testing.assert_close(_layer_call(attn2, [wplus, identity], inputs, state), both)


def test_schedule_is_zero_before_the_start_fraction():
    schedule = WPlusSchedule(scale=0.8, start=0.2)
    assert [schedule.scale_at(i, 10) for i in range(4)] == [0.0, 0.0, 0.8, 0.8]
    assert WPlusSchedule(scale=0.5).scale_at(0, 30) == 0.5
    with pytest.raises(ValueError, match="fraction"):
        WPlusSchedule(start=1.5)


@torch.no_grad()
def _unet(pipe, state=None):
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 16, 16, generator=g)
    text = torch.randn(2, 7, WIDTH, generator=g)
    kwargs = None if state is None else {"portrait": state}
    return pipe.unet(sample, 10, text, cross_attention_kwargs=kwargs).sample


def test_published_file_loads_onto_the_cross_attention_layers(make_sd15_pipe, tmp_path):
    pipe = make_sd15_pipe()
    baseline = _unet(pipe)
    checkpoint = wplus_adapter_state_dict(pipe.unet, seed=4)
    assert all(k.split(".")[0].isdigit() for k in checkpoint["wplus_adapter"])
    assert {k.split(".", 1)[1] for k in checkpoint["wplus_adapter"]} == {
        "to_q_wplus.weight",
        "to_k_wplus.weight",
        "to_v_wplus.weight",
    }
    path = tmp_path / "wplus_adapter.bin"
    torch.save(checkpoint, path)
    pipe.load_wplus_adapter(path, scale=0.9)
    projection = pipe.wplus_projection
    assert pipe.attention_contributions() == [WPLUS]
    cross = [n for n in pipe.unet.attn_processors if n.endswith("attn2.processor")]
    stacked = {
        n
        for n, p in pipe.unet.attn_processors.items()
        if getattr(p, "contribution", None) and p.contribution(WPLUS) is not None
    }
    assert stacked == set(cross)
    torch.testing.assert_close(projection.proj_0.weight, checkpoint["w_proj"]["proj_0.weight"])

    with torch.no_grad():
        tokens = projection.encode(torch.randn(1, 18, 512), do_classifier_free_guidance=True)
    on = AttentionCallState().with_input(WPLUS, ContributionInput(tokens=tokens))
    off = AttentionCallState().with_input(WPLUS, ContributionInput(tokens=tokens, scale=0.0))
    assert not torch.allclose(_unet(pipe, on), baseline, atol=1e-4)
    assert torch.equal(_unet(pipe, off), baseline)
    pipe.remove_attention_contribution(WPLUS)
    assert torch.equal(_unet(pipe, on), baseline)


def test_bad_wplus_files_fail_with_a_clear_message(make_sd15_pipe, tmp_path):
    pipe = make_sd15_pipe()
    checkpoint = wplus_adapter_state_dict(pipe.unet)
    missing = {**checkpoint, "wplus_adapter": dict(checkpoint["wplus_adapter"])}
    missing["wplus_adapter"].pop("1.to_q_wplus.weight")
    cases = {
        "ip_adapter.bin": ({"image_proj": {}, "ip_adapter": {}}, "not a W\\+ adapter"),
        "missing.bin": (missing, "missing \\['1.to_q_wplus.weight'\\]"),
        "pickled.bin": ({**checkpoint, "extra": argparse.Namespace(a=1)}, "weights_only"),
    }
    for name, (obj, message) in cases.items():
        path = tmp_path / name
        torch.save(obj, path)
        with pytest.raises(ValueError, match=message) as error:
            pipe.load_wplus_adapter(path)
        assert name in str(error.value)
    assert pipe.attention_contributions() == []
    assert pipe.wplus_attn is None and pipe.wplus_projection is None
