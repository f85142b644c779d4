"""Behaviour both portrait pipelines must have, as a mixin of their test classes.

A test class sets ``pipeline_class`` and ``optional_parts`` and its module provides the fixtures
``pipe`` (the plain pipeline from a standard folder), ``stock_images`` (diffusers' own pipeline,
:func:`portrait_helpers.generate` defaults), ``controlnets`` (two ControlNets of the UNet),
and ``identity_pipe`` (the identity adapter loaded, no nets).
Tests never change a shared pipeline beyond one call.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import ControlNetModel
from diffusers.models import MultiControlNetModel
from portrait_helpers import PROMPT, condition, generate, unit_embeds

from adapters import IdentityAdapterError


class PortraitPipelineTesterMixin:
    pipeline_class: ClassVar[type]
    #: Components that a standard diffusers folder does not have.
    optional_parts: ClassVar[tuple[str, ...]]

    def with_components(self, pipe, **components):
        variant = self.pipeline_class(**{**pipe.components, **components})
        variant.set_progress_bar_config(disable=True)
        return variant

    # -- plain generation is diffusers' ------------------------------------------------------

    def test_from_pretrained_on_a_standard_folder_has_no_optional_parts(self, pipe):
        for name in self.optional_parts:
            assert getattr(pipe, name) is None, name
        assert pipe.identity_family is None

    def test_plain_generation_equals_stock_pipeline(self, pipe, stock_images):
        np.testing.assert_array_equal(generate(pipe), stock_images)

    def test_output_types_and_tuple_return(self, pipe, stock_images):
        pil = generate(pipe, output_type="pil")
        assert len(pil) == 1 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (64, 64)
        np.testing.assert_array_equal(np.asarray(pil[0]), (stock_images[0] * 255).round())
        assert generate(pipe, output_type="latent").shape == (1, 4, 32, 32)
        result = pipe(
            PROMPT,
            num_inference_steps=2,
            guidance_scale=5.0,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
            return_dict=False,
        )
        assert isinstance(result, tuple)
        np.testing.assert_array_equal(result[0], stock_images)

    def test_batch_of_prompts_times_images_per_prompt(self, pipe):
        images = generate(pipe, prompt=[PROMPT, "an oil painting"], num_images_per_prompt=2)
        assert images.shape == (4, 64, 64, 3)
        assert not np.array_equal(images[0], images[1])

    def test_callback_runs_every_step_and_can_replace_latents(self, pipe):
        steps = []

        def callback(pipeline, step, timestep, tensors):
            steps.append(step)
            assert set(tensors) == {"latents", "control_image"}
            return {"latents": torch.zeros_like(tensors["latents"])}

        latents = generate(
            pipe,
            output_type="latent",
            callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=["latents", "control_image"],
        )
        assert steps == [0, 1]
        assert torch.count_nonzero(latents) == 0
        with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
            generate(pipe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["x"])

    def test_callback_replaces_the_control_image(self, pipe, controlnets):
        net = controlnets[0]
        controlled = self.with_components(pipe, controlnet=net)
        replaced = torch.full((2, 3, 64, 64), 0.25)  # negative and positive halves
        seen = []
        hook = net.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(kwargs["controlnet_cond"].clone()),
            with_kwargs=True,
        )
        try:
            generate(
                controlled,
                control_image=condition(3),
                callback_on_step_end=lambda *args: {"control_image": replaced},
                callback_on_step_end_tensor_inputs=["control_image"],
            )
        finally:
            hook.remove()
        assert len(seen) >= 2
        assert not torch.equal(seen[0], replaced)
        for later in seen[1:]:
            torch.testing.assert_close(later, replaced, rtol=0, atol=0)

    # -- identity ------------------------------------------------------------------------------

    def test_identity_scale_zero_equals_the_pipeline_without_adapter(
        self, identity_pipe, stock_images
    ):
        off = generate(identity_pipe, identity_embeds=unit_embeds(2), identity_scale=0.0)
        np.testing.assert_array_equal(off, stock_images)
        np.testing.assert_array_equal(generate(identity_pipe), stock_images)

    def test_identity_changes_the_image_and_the_call_scale_is_restored(
        self, identity_pipe, stock_images
    ):
        embeds = unit_embeds(2)
        full = generate(identity_pipe, identity_embeds=embeds)
        assert np.abs(full - stock_images).max() > 1e-3
        other_person = generate(identity_pipe, identity_embeds=unit_embeds(1, seed=5))
        assert np.abs(full - other_person).max() > 1e-3
        half = generate(identity_pipe, identity_embeds=embeds, identity_scale=0.5)
        assert np.abs(half - full).max() > 1e-4
        np.testing.assert_array_equal(generate(identity_pipe, identity_embeds=embeds), full)

    def test_identity_batch_of_prompts_times_images_per_prompt(self, identity_pipe):
        images = generate(
            identity_pipe,
            prompt=[PROMPT, "an oil painting"],
            num_images_per_prompt=2,
            identity_embeds=unit_embeds(3),
        )
        assert images.shape == (4, 64, 64, 3)

    def test_batch_equals_single_runs(self, identity_pipe, controlnets):
        controlled = self.with_components(identity_pipe, controlnet=controlnets[0])
        kwargs = {"identity_embeds": unit_embeds(2), "num_inference_steps": 2}
        prompts, meshes, seeds = [PROMPT, "an oil painting"], [condition(3), condition(4)], [0, 1]
        batch = controlled(
            prompt=prompts,
            control_image=meshes,
            generator=[torch.Generator().manual_seed(seed) for seed in seeds],
            guidance_scale=5.0,
            output_type="np",
            **kwargs,
        ).images
        for row, (prompt, mesh, seed) in enumerate(zip(prompts, meshes, seeds, strict=True)):
            single = generate(controlled, seed, prompt=prompt, control_image=mesh, **kwargs)
            np.testing.assert_allclose(batch[row], single[0], atol=1e-5)

    def test_identity_input_errors(self, pipe, identity_pipe):
        with pytest.raises(ValueError, match="needs an identity adapter"):
            generate(pipe, identity_embeds=unit_embeds(1))
        with pytest.raises(ValueError, match="`identity_scale` was given without"):
            generate(identity_pipe, identity_scale=0.5)
        with pytest.raises(IdentityAdapterError, match="finite and non-zero"):
            generate(identity_pipe, identity_embeds=unit_embeds(1) * float("nan"))
        with pytest.raises(IdentityAdapterError, match="128-d"):
            generate(identity_pipe, identity_embeds=torch.ones(1, 128) / 128**0.5)
        with pytest.raises(ValueError, match="read by FaceID-PlusV2 adapters only"):
            generate(identity_pipe, identity_embeds=unit_embeds(1), identity_image=condition(3))

    def test_save_and_load_round_trip_keeps_controlnet_and_identity_adapter(
        self, tmp_path, identity_pipe, controlnets
    ):
        full = self.with_components(identity_pipe, controlnet=controlnets[0])
        kwargs = {"identity_embeds": unit_embeds(2), "control_image": condition(3)}
        expected = generate(full, **kwargs)
        full.save_pretrained(tmp_path)
        again = self.pipeline_class.from_pretrained(tmp_path)
        again.set_progress_bar_config(disable=True)
        assert isinstance(again.controlnet, ControlNetModel)
        assert again.identity_family == identity_pipe.identity_family
        np.testing.assert_array_equal(generate(again, **kwargs), expected)

    # -- ControlNet ----------------------------------------------------------------------------

    def test_controlnet_scale_zero_equals_no_controlnet(self, pipe, controlnets, stock_images):
        controlled = self.with_components(pipe, controlnet=controlnets[0])
        mesh = condition(3)
        np.testing.assert_array_equal(generate(controlled), stock_images)
        off = generate(controlled, control_image=mesh, controlnet_conditioning_scale=0.0)
        np.testing.assert_array_equal(off, stock_images)
        on = generate(controlled, control_image=mesh)
        assert np.abs(on - stock_images).max() > 1e-3
        other = generate(controlled, control_image=condition(4))
        assert np.abs(on - other).max() > 1e-3

    def test_control_image_formats_are_equivalent(self, pipe, controlnets):
        controlled = self.with_components(pipe, controlnet=controlnets[0])
        mesh = condition(3)
        expected = generate(controlled, control_image=mesh)
        chw = torch.from_numpy(mesh).permute(2, 0, 1).float() / 255
        for same in (mesh.astype(np.float32) / 255, PIL.Image.fromarray(mesh), chw, [mesh]):
            np.testing.assert_array_equal(generate(controlled, control_image=same), expected)

    def test_a_condition_of_another_size_is_resized_as_diffusers_does(self, pipe, controlnets):
        controlled = self.with_components(pipe, controlnet=controlnets[0])
        small = condition(3, 32, 48)
        pil = PIL.Image.fromarray(small)
        resized_pil = np.asarray(pil.resize((64, 64), PIL.Image.LANCZOS))
        np.testing.assert_array_equal(
            generate(controlled, control_image=pil, height=64, width=64),
            generate(controlled, control_image=resized_pil),
        )
        nearest = torch.nn.functional.interpolate(
            torch.from_numpy(small).permute(2, 0, 1)[None].float() / 255, size=(64, 64)
        )
        np.testing.assert_array_equal(
            generate(
                controlled,
                control_image=[small, condition(4)],
                prompt=[PROMPT] * 2,
                height=64,
                width=64,
            ),
            generate(controlled, control_image=[nearest[0], condition(4)], prompt=[PROMPT] * 2),
        )

    def test_output_size_defaults_to_the_control_image(self, pipe, controlnets):
        controlled = self.with_components(pipe, controlnet=controlnets[0])
        images = generate(controlled, control_image=condition(3, height=64, width=96))
        assert images.shape == (1, 64, 96, 3)

    @pytest.mark.parametrize(
        ("control_image", "kwargs", "message"),
        [
            (np.zeros((64, 64, 4), np.uint8), {}, r"channels-last \[H, W, 3\].*\(64, 64, 4\)"),
            (np.zeros((3, 64, 64), np.uint8), {}, r"channels-last .*found shape \(3, 64, 64\)"),
            (torch.zeros(1, 64, 64), {}, r"channels-first \[3, H, W\].*\(1, 64, 64\)"),
            (np.full((64, 64, 3), 2.0, np.float32), {}, r"must lie in \[0, 1\]; found \[2, 2\]"),
            ([condition(3)] * 3, {"prompt": [PROMPT, PROMPT]}, "holds 3 images for 2 prompts"),
            ("mesh.png", {}, "must be a PIL image, a numpy array"),
        ],
    )
    def test_control_image_errors_name_expected_and_found(
        self, pipe, controlnets, control_image, kwargs, message
    ):
        controlled = self.with_components(pipe, controlnet=controlnets[0])
        with pytest.raises((ValueError, TypeError), match=message):
            generate(controlled, control_image=control_image, **kwargs)

    def test_control_image_without_controlnet_is_an_error(self, pipe):
        with pytest.raises(ValueError, match="has no `controlnet`"):
            generate(pipe, control_image=condition(3))

    def test_multicontrolnet_sums_the_nets(self, pipe, controlnets):
        first, second = controlnets
        multi = self.with_components(pipe, controlnet=[first, second])
        assert isinstance(multi.controlnet, MultiControlNetModel)
        images = [condition(3), condition(4)]
        single = generate(self.with_components(pipe, controlnet=first), control_image=images[0])
        only_first = generate(multi, control_image=images, controlnet_conditioning_scale=[1.0, 0.0])
        np.testing.assert_array_equal(only_first, single)
        both = generate(multi, control_image=images)
        assert np.abs(both - single).max() > 1e-3

        with pytest.raises(ValueError, match=r"one image per ControlNet \(2 nets\); found a"):
            generate(multi, control_image=images[0])
        with pytest.raises(ValueError, match="has 3 values for 2 condition nets"):
            generate(multi, control_image=images, controlnet_conditioning_scale=[1.0, 1.0, 1.0])
