"""Identity keys/values are computed once per pipeline call, not per step, with results unchanged
(tiny SD1.5 FaceID, SDXL InstantID), and recomputed when weights or tokens change."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from portrait_helpers import condition, generate, unit_embeds

from adapters.stack import STATE_KEY, AttentionCallState, ContributionInput

STEPS = 3


def _identity(pipe) -> dict:
    kwargs = {"identity_embeds": unit_embeds(1), "identity_scale": 0.8}
    if getattr(pipe, "identitynet", None) is not None:
        kwargs["keypoint_image"] = condition(3)
    return kwargs


def _kv_layers(pipe):
    return [layer for _, layer in pipe.identity_attn.named_children() if layer.to_k_ip is not None]


@pytest.mark.parametrize("name", ["sd15_faceid", "sdxl_instantid"])
def test_cached_keys_values_give_the_uncached_images(name, request, monkeypatch):
    pipe = request.getfixturevalue(name)
    cached = generate(pipe, num_inference_steps=STEPS, **_identity(pipe))
    with monkeypatch.context() as patch:
        patch.setattr(
            AttentionCallState,
            "keys_values",
            lambda self, contribution, attn, inputs, query: contribution.token_keys_values(
                attn, inputs, query
            ),
        )
        uncached = generate(pipe, num_inference_steps=STEPS, **_identity(pipe))
    np.testing.assert_allclose(cached, uncached, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["sd15_faceid", "sdxl_instantid"])
def test_identity_projections_run_once_per_layer_per_call(name, request):
    pipe = request.getfixturevalue(name)
    calls: dict[int, int] = {}
    hooks = []
    for layer in _kv_layers(pipe):
        for linear in (layer.to_k_ip, layer.to_v_ip):
            calls[id(linear)] = 0
            hooks.append(
                linear.register_forward_hook(
                    lambda m, *_: calls.__setitem__(id(m), calls[id(m)] + 1)
                )
            )
    try:
        generate(pipe, num_inference_steps=STEPS, **_identity(pipe))
        assert set(calls.values()) == {1}, "to_k_ip/to_v_ip ran more than once per layer"
        generate(pipe, num_inference_steps=STEPS, **_identity(pipe))
        assert set(calls.values()) == {2}, "the next call must compute them afresh"
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def test_a_reused_state_recomputes_after_weights_or_tokens_change(sd15_faceid):
    pipe = sd15_faceid
    unet = pipe.unet
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    text = torch.randn(2, 7, unet.config.cross_attention_dim, generator=generator)
    tokens = pipe.encode_identity(unit_embeds(1), num_images=1, do_classifier_free_guidance=True)

    def run(state):
        kwargs = {STATE_KEY: state}
        return unet(sample, 10, text, cross_attention_kwargs=kwargs).sample

    def fresh(tokens):
        return AttentionCallState().with_input("identity", ContributionInput(tokens=tokens))

    state = fresh(tokens)
    first = run(state)
    assert torch.equal(run(state), first)  # second step: from the cache, same result

    weight = _kv_layers(pipe)[0].to_v_ip.weight
    original = weight.clone()
    try:
        weight.mul_(2.0)  # in place, between steps
        changed = run(state)
        assert not torch.equal(changed, first)
        assert torch.equal(changed, run(fresh(tokens)))
    finally:
        weight.copy_(original)

    other = pipe.encode_identity(
        unit_embeds(1, seed=5), num_images=1, do_classifier_free_guidance=True
    )
    state.inputs["identity"] = ContributionInput(tokens=other)  # same state, new tokens
    assert torch.equal(run(state), run(fresh(other)))
