"""The attention stack: contributions in a fixed order on one layer, per-row switching, and the
pipeline API (add / list / remove by name) beside the identity adapter and diffusers'
IP-Adapter, through save / reload / scale / unload."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
from safetensors.torch import load_file
from stack_contributions import (
    AppendedKeys,
    ExtraTokens,
    cross_attention_terms,
    self_attention_editors,
)
from test_adapter_pipeline import _ip_adapter_file

from adapters import (
    AttentionCallState,
    ContributionInput,
    IdentityAttnProcessor,
    PortraitAttnProcessor,
)
from adapters.attention import IdentityAttnLayer, IdentityContribution
from adapters.layout import attention_layers, denoiser, layer_scales
from adapters.synthetic import synthetic_state_dict

WIDTH = 32


def _identity_layer(lora_rank: int | None = 8) -> IdentityAttnLayer:
    layer = IdentityAttnLayer(WIDTH, WIDTH, cross_attention=True, lora_rank=lora_rank)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=g) / param.shape[1] ** 0.5)
    return layer.eval()


@pytest.fixture(scope="module")
def attns(sd15_unet):
    block = copy.deepcopy(sd15_unet.down_blocks[1].attentions[0].transformer_blocks[0])
    return block.attn1, block.attn2  # heads 4 x 8, width 32; attn2 takes 32-d text


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return {
        "hidden": torch.randn(2, 64, WIDTH, generator=g),
        "text": torch.randn(2, 7, WIDTH, generator=g),
        "tokens": torch.randn(2, 4, WIDTH, generator=g),
        "extra": torch.randn(2, 5, WIDTH, generator=g),
    }


# -- one layer --------------------------------------------------------------------------------


@torch.no_grad()
def test_no_active_contribution_is_the_base_processor_bit_for_bit(attns, inputs):
    attn1, attn2 = attns
    hidden, text = inputs["hidden"], inputs["text"]
    base = AttnProcessor2_0()
    stack = PortraitAttnProcessor(
        base, [IdentityContribution(_identity_layer()), ExtraTokens(WIDTH, WIDTH)]
    )
    assert torch.equal(stack(attn2, hidden, text), base(attn2, hidden, text))
    off = AttentionCallState({"extra": ContributionInput(tokens=inputs["extra"], scale=0.0)})
    assert torch.equal(stack(attn2, hidden, text, portrait=off), base(attn2, hidden, text))
    rows_off = AttentionCallState(
        {"extra": ContributionInput(tokens=inputs["extra"], rows=(False, False))}
    )
    assert torch.equal(stack(attn2, hidden, text, portrait=rows_off), base(attn2, hidden, text))
    editor = PortraitAttnProcessor(base, [AppendedKeys(WIDTH)])
    on = editor(attn1, hidden)
    assert not torch.allclose(on, base(attn1, hidden))


@torch.no_grad()
def test_cross_attention_terms_add_scaled_masked_terms_in_order(attns, inputs):
    _, attn = attns
    hidden, text, tokens, extra = (inputs[k] for k in ("hidden", "text", "tokens", "extra"))
    identity = IdentityContribution(_identity_layer(lora_rank=None), scale=0.6)
    term = ExtraTokens(WIDTH, WIDTH)
    stack = PortraitAttnProcessor(AttnProcessor2_0(), [identity, term], layer_name="attn2")
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1.0
    state = AttentionCallState(
        {
            "identity": ContributionInput(tokens=tokens),
            "extra": ContributionInput(tokens=extra, scale={"attn2": 0.3}, mask=mask),
        }
    )

    def split(x):
        return x.view(2, -1, 4, 8).transpose(1, 2)

    def attention(q, k, v):
        out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
        return out.transpose(1, 2).reshape(2, -1, WIDTH)

    query = attn.to_q(hidden)
    layer = identity.layer
    expected_mask = torch.zeros(8, 8)
    expected_mask[:, :4] = 1.0
    expected = attn.to_out[0](
        attention(query, attn.to_k(text), attn.to_v(text))
        + 0.6 * attention(query, layer.to_k_ip(tokens), layer.to_v_ip(tokens))
        + 0.3
        * attention(query, term.to_k(extra), term.to_v(extra))
        * expected_mask.reshape(1, 64, 1)
    )
    actual = stack(attn, hidden, text, portrait=state)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["faceid-lora-and-identity", "self-attention", "cross-attention"])
def test_rows_on_and_off_equal_separate_calls(kind, attns, inputs):
    attn1, attn2 = attns
    hidden, text, tokens, extra = (inputs[k] for k in ("hidden", "text", "tokens", "extra"))
    base = AttnProcessor2_0()
    if kind == "self-attention":
        attn, context, name, value = attn1, None, "appended", None
        stack = PortraitAttnProcessor(base, [AppendedKeys(WIDTH)])
    elif kind == "cross-attention":
        attn, context, name, value = attn2, text, "extra", extra
        stack = PortraitAttnProcessor(base, [ExtraTokens(WIDTH, WIDTH)])
    else:  # the FaceID LoRA on every projection, then the identity term
        attn, context, name, value = attn2, text, "identity", tokens
        stack = IdentityAttnProcessor(base, _identity_layer(), scale=0.7)

    def run(rows, batch):
        tokens_in = None if value is None else value[batch]
        state = AttentionCallState({name: ContributionInput(tokens=tokens_in, rows=rows)})
        return stack(
            attn, hidden[batch], None if context is None else context[batch], portrait=state
        )

    def plain(batch):
        return base(attn, hidden[batch], None if context is None else context[batch])

    both = run((True, False), slice(0, 2))
    alone_on = run(None, slice(0, 1))
    torch.testing.assert_close(both[:1], alone_on, atol=1e-6, rtol=0)
    torch.testing.assert_close(both[1:], plain(slice(1, 2)), atol=1e-6, rtol=0)
    assert not torch.allclose(alone_on, plain(slice(0, 1)), atol=1e-3)
    with pytest.raises(ValueError, match="has 3 values, this call's batch has 2 rows"):
        run((True, False, True), slice(0, 2))


# -- pipelines ----------------------------------------------------------------------------------

ALL = ("identity", "self", "cross")


@pytest.fixture
def call_state(make_sd15_pipe, embeds) -> AttentionCallState:
    """Identity tokens (CFG, one image) and the cross-attention term's tokens for one call."""
    pipe = _stacked(make_sd15_pipe, ["identity"])
    tokens = pipe.encode_identity(embeds(1), num_images=1, do_classifier_free_guidance=True)
    extra = torch.randn(2, 5, WIDTH, generator=torch.Generator().manual_seed(8))
    return AttentionCallState(
        {"identity": ContributionInput(tokens=tokens), "extra": ContributionInput(tokens=extra)}
    )


@torch.no_grad()
def _unet(pipe, state: AttentionCallState | None = None, **kwargs):
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 16, 16, generator=g)
    text = torch.randn(2, 7, WIDTH, generator=g)
    if state is not None:
        kwargs["portrait"] = state
    return pipe.unet(sample, 10, text, cross_attention_kwargs=kwargs or None).sample


def _add(pipe, what: str) -> None:
    layers = attention_layers(pipe.unet)
    if what == "identity":
        pipe.load_identity_adapter(synthetic_state_dict("faceid-sd15", unet=pipe.unet, seed=2))
    elif what == "self":
        pipe.add_attention_contribution(self_attention_editors(layers))
    else:
        pipe.add_attention_contribution(cross_attention_terms(layers))


def _stacked(make_sd15_pipe, order):
    pipe = make_sd15_pipe()
    for what in order:
        _add(pipe, what)
    return pipe


def test_identity_and_two_contributions_stack_in_every_order(make_sd15_pipe, call_state, capfd):
    outputs = []
    for order in itertools.permutations(ALL):
        pipe = _stacked(make_sd15_pipe, order)
        assert sorted(pipe.attention_contributions()) == ["appended", "extra", "identity"]
        processors = pipe.unet.attn_processors.values()
        assert all(isinstance(p, IdentityAttnProcessor) for p in processors)
        outputs.append(_unet(pipe, call_state))
    for output in outputs[1:]:
        torch.testing.assert_close(output, outputs[0], atol=1e-6, rtol=0)
    assert "not expected" not in capfd.readouterr().err  # every layer takes the call state

    for dropped in ALL:  # each one has its effect
        rest = _stacked(make_sd15_pipe, [what for what in ALL if what != dropped])
        assert not torch.allclose(_unet(rest, call_state), outputs[0], atol=1e-4)


@pytest.mark.parametrize("identity_first", [True, False])
def test_save_reload_scale_unload_each_leave_the_others_intact(
    identity_first, make_sd15_pipe, call_state, tmp_path
):
    order = ALL if identity_first else ("self", "cross", "identity")
    pipe = _stacked(make_sd15_pipe, order)
    expected = _unet(pipe, call_state)
    without_identity = _unet(_stacked(make_sd15_pipe, ["self", "cross"]), call_state)
    names = pipe.attention_contributions()

    pipe.set_identity_scale(0.0)
    torch.testing.assert_close(_unet(pipe, call_state), without_identity, atol=1e-6, rtol=0)
    pipe.set_identity_scale({"up": {"block_0": [1.0, 0.5]}})
    assert pipe.attention_contributions() == names
    pipe.set_identity_scale(1.0)
    assert torch.equal(_unet(pipe, call_state), expected)

    pipe.save_pretrained(tmp_path / "saved")
    unet_keys = load_file(tmp_path / "saved" / "unet" / "diffusion_pytorch_model.safetensors")
    assert not any("processor" in key for key in unet_keys)  # the UNet is saved clean
    assert pipe.attention_contributions() == names
    assert torch.equal(_unet(pipe, call_state), expected)
    loaded = type(pipe).from_pretrained(tmp_path / "saved")
    assert loaded.attention_contributions() == ["identity"]  # the others are not components
    for what in ("self", "cross"):
        _add(loaded, what)
    torch.testing.assert_close(_unet(loaded, call_state), expected, atol=1e-6, rtol=0)

    pipe.load_ip_adapter(**_ip_adapter_file(tmp_path, pipe.unet))
    cross = pipe.unet.attn_processors["mid_block.attentions.0.transformer_blocks.0.attn2.processor"]
    assert isinstance(cross.base_processor, IPAdapterAttnProcessor2_0)
    assert pipe.attention_contributions() == names
    pipe.set_ip_adapter_scale(0.0)
    assert cross.base_processor.scale == [0.0]
    pipe.unload_ip_adapter()
    assert pipe.attention_contributions() == names
    assert torch.equal(_unet(pipe, call_state), expected)

    pipe.unload_identity_adapter()
    assert sorted(pipe.attention_contributions()) == ["appended", "extra"]
    processors = pipe.unet.attn_processors.values()
    assert not any(isinstance(p, IdentityAttnProcessor) for p in processors)
    assert not any(isinstance(c, IdentityContribution) for p in processors for c in p.contributions)
    torch.testing.assert_close(_unet(pipe, call_state), without_identity, atol=1e-6, rtol=0)
    _add(pipe, "identity")
    torch.testing.assert_close(_unet(pipe, call_state), expected, atol=1e-6, rtol=0)

    pipe.remove_attention_contribution("appended")
    only = _stacked(make_sd15_pipe, ["identity", "cross"])
    torch.testing.assert_close(_unet(pipe, call_state), _unet(only, call_state), atol=1e-6, rtol=0)
    pipe.remove_attention_contribution("identity")
    pipe.remove_attention_contribution("extra")
    assert pipe.attention_contributions() == [] and pipe.identity_family is None
    assert all(type(p) is AttnProcessor2_0 for p in pipe.unet.attn_processors.values())


def test_add_and_remove_refuse_what_does_not_fit(sd15_pipe):
    layers = attention_layers(sd15_pipe.unet)
    editors = self_attention_editors(layers)
    sd15_pipe.add_attention_contribution(editors)
    with pytest.raises(ValueError, match="already stacked; remove it first"):
        sd15_pipe.add_attention_contribution(AppendedKeys(WIDTH), layers=[layers[0].name])
    with pytest.raises(ValueError, match="'identity' is the identity adapter's"):
        sd15_pipe.add_attention_contribution(AppendedKeys(WIDTH, name="identity"))
    with pytest.raises(ValueError, match=r"unknown attention layers \['attn9'\]"):
        sd15_pipe.add_attention_contribution(AppendedKeys(WIDTH, name="x"), layers=["attn9"])
    with pytest.raises(ValueError, match="no attention layer chosen"):
        sd15_pipe.add_attention_contribution(AppendedKeys(WIDTH, name="x"), layers=lambda _: False)
    with pytest.raises(TypeError, match="Contribution objects, got str"):
        sd15_pipe.add_attention_contribution({layers[0].name: "not one"})
    with pytest.raises(ValueError, match=r"no attention contribution named 'x'; .*\['appended'\]"):
        sd15_pipe.remove_attention_contribution("x")
    # a test on the layout chooses layers; every layer gets a stack that takes the call state
    sd15_pipe.add_attention_contribution(
        ExtraTokens(WIDTH, WIDTH, name="mid"), layers=lambda layer: "mid_block" in layer.name
    )
    stacks = sd15_pipe.unet.attn_processors
    assert all(isinstance(p, PortraitAttnProcessor) for p in stacks.values())
    assert [n for n, p in stacks.items() if p.contribution("mid")] == [
        "mid_block.attentions.0.transformer_blocks.0.attn1.processor",
        "mid_block.attentions.0.transformer_blocks.0.attn2.processor",
    ]


def test_call_kwargs_carry_scale_and_rows_without_changing_the_pipeline(make_sd15_pipe, call_state):
    pipe = _stacked(make_sd15_pipe, ["identity", "cross"])
    tokens = call_state.inputs["identity"].tokens
    extra_only = AttentionCallState({"extra": call_state.inputs["extra"]})
    assert pipe.attention_call_kwargs({"scale": 0.5}) == {"scale": 0.5}
    with pytest.raises(ValueError, match="need identity tokens"):
        pipe.attention_call_kwargs(None, identity_scale=0.5)

    kwargs = pipe.attention_call_kwargs(
        {"portrait": extra_only, "scale": 1.0}, identity_tokens=tokens, identity_scale=0.3
    )
    assert kwargs["scale"] == 1.0 and set(kwargs["portrait"].inputs) == {"extra", "identity"}
    assert set(extra_only.inputs) == {"extra"}  # the caller's state is not changed
    per_call = _unet(pipe, kwargs["portrait"])
    assert {p.scale for p in pipe.unet.attn_processors.values()} == {1.0}
    pipe.set_identity_scale(0.3)
    torch.testing.assert_close(per_call, _unet(pipe, call_state), atol=0, rtol=0)
    pipe.set_identity_scale(1.0)

    blocks = {"up": {"block_0": [1.0, 0.0]}}
    kwargs = pipe.attention_call_kwargs(
        {"portrait": extra_only}, identity_tokens=tokens, identity_scale=blocks
    )
    per_call = _unet(pipe, kwargs["portrait"])
    pipe.set_identity_scale(blocks)
    torch.testing.assert_close(per_call, _unet(pipe, call_state), atol=0, rtol=0)
    pipe.set_identity_scale(1.0)

    kwargs = pipe.attention_call_kwargs(
        {"portrait": extra_only}, identity_tokens=tokens, identity_rows=[True]
    )
    assert kwargs["portrait"].inputs["identity"].rows == (True, True)  # CFG: both halves
    assert torch.equal(_unet(pipe, kwargs["portrait"]), _unet(pipe, call_state))
    with pytest.raises(ValueError, match="3 values for a denoiser batch of 2 rows"):
        pipe.attention_call_kwargs(None, identity_tokens=tokens, identity_rows=[True] * 3)
    with pytest.raises(ValueError, match="must be a list of bools"):
        pipe.check_identity_rows([1, 0], num_images=2)
    with pytest.raises(ValueError, match="has 1 values but this call generates 2 images"):
        pipe.check_identity_rows([True], num_images=2)
    with pytest.raises(TypeError, match=r"\['portrait'\] must be an AttentionCallState"):
        pipe.attention_call_kwargs({"portrait": {}}, identity_tokens=tokens)


def test_layout_finds_the_denoiser_on_unet_or_transformer(sd15_unet):
    class WithTransformer:
        unet = None
        transformer = sd15_unet

    assert denoiser(WithTransformer()) is sd15_unet
    with pytest.raises(TypeError, match="has no `unet` or `transformer`"):
        denoiser(object())
    scales = layer_scales(sd15_unet, {"mid": 0.5}, what="test scale")
    assert {name: s for name, s in scales.items() if s} == {
        "mid_block.attentions.0.transformer_blocks.0.attn1.processor": 0.5,
        "mid_block.attentions.0.transformer_blocks.0.attn2.processor": 0.5,
    }
    with pytest.raises(ValueError, match="test scale must be a finite number"):
        layer_scales(sd15_unet, float("inf"), what="test scale")
