"""IdentityAttnProcessor on one attention layer: off is the base processor bit for bit; on adds
the decoupled identity attention (and FaceID LoRA) as the reference does, beside diffusers'
IP-Adapter."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import (
    AttnProcessor2_0,
    IPAdapterAttnProcessor2_0,
    SlicedAttnProcessor,
)

from adapters.attention import IdentityAttnLayer, IdentityAttnProcessor

BATCH, PIXELS, TEXT, TOKENS, WIDTH = 2, 64, 7, 4, 32


@pytest.fixture(scope="module")
def attns(sd15_unet):
    block = copy.deepcopy(sd15_unet.down_blocks[1].attentions[0].transformer_blocks[0])
    return block.attn1, block.attn2  # heads 4 x 8, width 32; attn2 takes 32-d text


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return {
        "hidden": torch.randn(BATCH, PIXELS, WIDTH, generator=g),
        "text": torch.randn(BATCH, TEXT, WIDTH, generator=g),
        "tokens": torch.randn(BATCH, TOKENS, WIDTH, generator=g),
        "image": torch.randn(BATCH, 1, TOKENS, WIDTH, generator=g),
    }


def _layer(cross: bool = True, lora_rank: int | None = None, seed: int = 0) -> IdentityAttnLayer:
    layer = IdentityAttnLayer(WIDTH, WIDTH, cross_attention=cross, lora_rank=lora_rank)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=g) / param.shape[1] ** 0.5)
    return layer.eval()


def _ip_processor(scale: float) -> IPAdapterAttnProcessor2_0:
    processor = IPAdapterAttnProcessor2_0(WIDTH, WIDTH, num_tokens=(TOKENS,), scale=scale)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for param in processor.parameters():
            param.copy_(torch.randn(param.shape, generator=g) / WIDTH**0.5)
    return processor


def _attention(q, k, v, heads=4):
    split = [t.view(BATCH, -1, heads, WIDTH // heads).transpose(1, 2) for t in (q, k, v)]
    out = F.scaled_dot_product_attention(*split)
    return out.transpose(1, 2).reshape(BATCH, -1, WIDTH)


@torch.no_grad()
def test_identity_off_is_exactly_the_base_processor(attns, inputs):
    attn1, attn2 = attns
    hidden, text, tokens = inputs["hidden"], inputs["text"], inputs["tokens"]
    base = AttnProcessor2_0()
    expected = base(attn2, hidden, text)
    processor = IdentityAttnProcessor(base, _layer(lora_rank=8), scale=0.8)
    assert torch.equal(processor(attn2, hidden, text), expected)
    processor.scale = 0.0  # LoRA included: a layer at scale 0 is the base model
    assert torch.equal(processor(attn2, hidden, text, identity_tokens=tokens), expected)
    processor.scale = 0.8
    assert not torch.allclose(processor(attn2, hidden, text, identity_tokens=tokens), expected)

    self_attention = IdentityAttnProcessor(base, _layer(cross=False, lora_rank=8))
    expected = base(attn1, hidden)
    assert torch.equal(self_attention(attn1, hidden), expected)
    assert not torch.allclose(self_attention(attn1, hidden, identity_tokens=tokens), expected)
    no_weights = IdentityAttnProcessor(base, None)  # InstantID's self-attention layers
    assert torch.equal(no_weights(attn1, hidden, identity_tokens=tokens), expected)


@torch.no_grad()
def test_identity_on_adds_decoupled_attention_before_to_out(attns, inputs):
    _, attn = attns
    hidden, text, tokens = inputs["hidden"], inputs["text"], inputs["tokens"]
    layer = _layer()
    processor = IdentityAttnProcessor(AttnProcessor2_0(), layer, scale=0.6)
    text_term = _attention(attn.to_q(hidden), attn.to_k(text), attn.to_v(text))
    id_term = _attention(attn.to_q(hidden), layer.to_k_ip(tokens), layer.to_v_ip(tokens))
    expected = attn.to_out[0](text_term + 0.6 * id_term)
    torch.testing.assert_close(
        processor(attn, hidden, text, identity_tokens=tokens), expected, rtol=0, atol=1e-6
    )
    # With a zero identity value the sum is the text attention: bit for bit AttnProcessor2_0.
    layer.to_v_ip.weight.zero_()
    assert torch.equal(
        processor(attn, hidden, text, identity_tokens=tokens),
        AttnProcessor2_0()(attn, hidden, text),
    )


@torch.no_grad()
def test_faceid_lora_is_added_to_each_projection_as_in_the_reference(attns, inputs):
    _, attn = attns
    hidden, text, tokens = inputs["hidden"], inputs["text"], inputs["tokens"]
    layer = _layer(lora_rank=8)
    processor = IdentityAttnProcessor(AttnProcessor2_0(), layer, scale=0.5)

    def lora(name, x):
        module = getattr(layer, f"{name}_lora")
        return module.up(module.down(x))

    query = attn.to_q(hidden) + lora("to_q", hidden)
    text_term = _attention(
        query, attn.to_k(text) + lora("to_k", text), attn.to_v(text) + lora("to_v", text)
    )
    id_term = _attention(query, layer.to_k_ip(tokens), layer.to_v_ip(tokens))
    mixed = text_term + 0.5 * id_term
    expected = attn.to_out[0](mixed) + lora("to_out", mixed)
    torch.testing.assert_close(
        processor(attn, hidden, text, identity_tokens=tokens), expected, rtol=0, atol=1e-5
    )


@torch.no_grad()
def test_beside_diffusers_ip_adapter_each_alone_and_together(attns, inputs):
    _, attn = attns
    hidden, text, tokens, image = (inputs[k] for k in ("hidden", "text", "tokens", "image"))
    ip = _ip_processor(scale=0.6)
    processor = IdentityAttnProcessor(ip, _layer(), scale=0.7)
    plain = IdentityAttnProcessor(AttnProcessor2_0(), processor.layer, scale=0.7)
    pair = (text, [image])

    ip_only = ip(attn, hidden, pair)
    assert torch.equal(processor(attn, hidden, pair), ip_only)  # identity off
    identity_only = plain(attn, hidden, text, identity_tokens=tokens)
    ip.scale = [0.0]  # diffusers' IP-Adapter off, identity on
    assert torch.equal(processor(attn, hidden, pair, identity_tokens=tokens), identity_only)
    ip.scale = [0.6]
    together = processor(attn, hidden, pair, identity_tokens=tokens)
    # to_out is affine: each adapter adds its own term
    base = AttnProcessor2_0()(attn, hidden, text)
    torch.testing.assert_close(together - ip_only, identity_only - base, rtol=0, atol=1e-5)
    assert not torch.allclose(together, ip_only) and not torch.allclose(together, identity_only)


@torch.no_grad()
def test_ip_adapter_terms_and_masks_follow_diffusers(attns, inputs):
    _, attn = attns
    hidden, text, tokens, image = (inputs[k] for k in ("hidden", "text", "tokens", "image"))
    ip = _ip_processor(scale=0.6)
    layer = _layer()
    layer.to_v_ip.weight.zero_()  # identity term 0: what is left is diffusers' computation
    processor = IdentityAttnProcessor(ip, layer)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8] = 1.0
    for masks in (None, [mask]):
        ours = processor(
            attn, hidden, (text, [image]), identity_tokens=tokens, ip_adapter_masks=masks
        )
        theirs = ip(attn, hidden, (text, [image]), ip_adapter_masks=masks)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    unmasked = processor(attn, hidden, (text, [image]), identity_tokens=tokens)
    assert not torch.allclose(ours, unmasked)
    with pytest.raises(ValueError, match="Length of ip_adapter_masks"):
        processor(
            attn, hidden, (text, [image]), identity_tokens=tokens, ip_adapter_masks=[mask, mask]
        )


def test_refuses_unknown_base_processors_and_bad_tokens(attns, inputs):
    _, attn = attns
    with pytest.raises(TypeError, match="SlicedAttnProcessor.*set_default_attn_processor"):
        IdentityAttnProcessor(SlicedAttnProcessor(2), _layer())
    processor = IdentityAttnProcessor(AttnProcessor2_0(), _layer())
    hidden, text = inputs["hidden"], inputs["text"]
    with pytest.raises(ValueError, match=r"\[batch=2, num_tokens, 32\].*got \[1, 4, 32\]"):
        processor(attn, hidden, text, identity_tokens=torch.zeros(1, 4, 32))
    with pytest.raises(ValueError, match="16-d, this layer's to_k_ip takes 32-d"):
        processor(attn, hidden, text, identity_tokens=torch.zeros(2, 4, 16))
    with pytest.raises(ValueError, match="no IP-Adapter loaded"):
        processor(attn, hidden, (text, [inputs["image"]]), identity_tokens=torch.zeros(2, 4, 32))


def test_faceid_lora_fold_equals_the_separate_term_and_follows_weight_changes():
    from adapters.attention import IdentityAttnLayer

    torch.manual_seed(0)
    layer = IdentityAttnLayer(6, 8, cross_attention=True, lora_rank=4)
    torch.nn.init.normal_(layer.to_k_lora.up.weight)
    base = torch.nn.Linear(8, 6)
    x = torch.randn(2, 5, 8)

    torch.testing.assert_close(layer.project("to_k", base, x), base(x) + layer.to_k_lora(x))
    with torch.no_grad():
        base.weight.add_(1.0)  # an in-place change (e.g. a fused style LoRA) must be seen
        layer.to_k_lora.down.weight.mul_(2.0)
    torch.testing.assert_close(layer.project("to_k", base, x), base(x) + layer.to_k_lora(x))
    wrapped = torch.nn.Sequential(base)  # a wrapped projection (as peft wraps) is not folded
    torch.testing.assert_close(layer.project("to_k", wrapped, x), base(x) + layer.to_k_lora(x))
