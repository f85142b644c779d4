# Copyright 2026 The Portrait Studio authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Training-free attribute repair (FreeCure) on the portrait pipelines.

A call makes the personalized images and the *foundation* images (identity off: no identity
tokens, no FaceID LoRA, no IdentityNet, no W+, no profile LoRA; the caller's
``foundation_prompt`` has the trigger word replaced by the class word) from the same noise,
pose/ControlNet images shared. One batch ``[personalized, foundation]`` (per-row identity, mode
``"batched"``; W+ follows the identity's rows) when nothing else must be switched off; with a
peft LoRA on the pipeline (which cannot be switched per row), or W+ without identity embeddings,
the foundation runs as its own call with the LoRA disabled (mode ``"separate"``); with
``compare=False`` (attributes known beforehand) the foundation runs alone. The caller's **mask
function** then gets both branches' images and returns, per image, the attributes to repair and
their masks (``None``: the fallback mask, the foundation's cross-attention map of the
attribute's words, averaged at 32², normalised, Otsu threshold), and FASA (:mod:`adapters.fasa`)
repairs them, in one of two ways:

- **in the run** (``check_step``, mode batched): after that share of the steps the mask function
  gets the x0 previews (:func:`x0_estimate`, decoded by the VAE) and FASA acts from the next step
  on in the same batch, the personalized rows reading the foundation rows' keys/values of the
  same call: one run, nothing recorded;
- **in pass 2** (default): pass 1 runs to the end recording the foundation's self-attention
  keys/values in the FASA layers and steps (and its cross-attention maps of the attribute
  tokens); the mask function gets the final images; pass 2 runs the personalized rows again with
  FASA on the recorded keys/values. Steps before FASA's first step are identical to pass 1's, so
  with a first-order deterministic scheduler (Euler) pass 2 starts from pass 1's latents there.

No face library is used here: masks come from the caller (the studio passes one built on its
face parser).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from adapters.fasa import (
    ATTENTION_MAPS,
    FASA,
    AttentionMaps,
    FasaConfig,
    FasaInput,
    FasaSession,
    FoundationAwareSelfAttention,
    MapInput,
    default_fasa_layers,
    default_fasa_weight,
    self_attention_layers,
)
from adapters.stack import STATE_KEY, AttentionCallState
from pipelines.portrait import PortraitPipeline
from pipelines.portrait_xl import PortraitXLPipeline
from pipelines.vae import decode_latents

#: Per image: attribute -> mask (``[H, W]``, True where the attribute is) to repair it with, or
#: ``None`` to repair it with the fallback attention mask; attributes left out are not repaired.
ImageMasks = Mapping[str, np.ndarray | None]
#: ``(personalized images, foundation images, attributes) -> one ImageMasks per image``.
MaskFunction = Callable[
    [Sequence[PIL.Image.Image], Sequence[PIL.Image.Image], tuple[str, ...]], Sequence[ImageMasks]
]
#: Identity inputs the foundation branch runs without (its own call in "separate" mode).
IDENTITY_ARGUMENTS = (
    "identity_embeds",
    "identity_scale",
    "identity_image",
    "keypoint_image",
    "identitynet_conditioning_scale",
    "wplus",
    "wplus_scale",
)
#: Arguments a repair sets itself.
REFUSED_ARGUMENTS = {
    "callback_on_step_end": "the repair follows the steps with its own callback",
    "callback_on_step_end_tensor_inputs": "the repair follows the steps with its own callback",
    "identity_rows": "the repair sets the rows: personalized images with identity, "
    "foundation images without",
    "prompt_embeds": "pass `prompt` (and `foundation_prompt`)",
    "return_dict": "a repair returns a RepairPipelineOutput",
    "denoising_end": "a repair denoises to the end",
}
#: An in-run repair decodes its previews at 1/PREVIEW_DOWNSCALE of the image size (cheaper than
#: the full decode; the masks are resized up, and FASA reads them on token grids of 1/8 or less).
PREVIEW_DOWNSCALE = 2
#: Schedulers pass 2 can resume mid-run with (first-order, deterministic, custom timesteps).
RESUMABLE_SCHEDULERS = ("EulerDiscreteScheduler",)


@dataclass
class RepairPipelineOutput(BaseOutput):
    """A repair's images and what it did.

    Attributes:
        images: the repaired images (the personalized ones where nothing was repaired).
        personalized_images: pass 1's personalized images (``None`` with ``compare=False``,
            and when the repair was made in the run: no unrepaired image exists).
        foundation_images: pass 1's foundation images (identity off).
        masks: per image, attribute -> the bool ``[H, W]`` mask it was repaired with.
        mask_sources: per image, attribute -> ``"given"`` (the mask function's),
            ``"attention"`` (the fallback map) or ``"none"`` (no mask: not repaired).
        foundation_mode: ``"batched"`` (one batch with per-row identity) or ``"separate"``
            (the foundation ran as its own call, with the LoRAs off).
        fasa_start: the step FASA started acting at, in pass 2 or in the run (``None``:
            nothing repaired).
        check_step: the step whose x0 previews the mask function saw, the repair then made in
            the same run (``None``: it saw the final images of pass 1).
    """

    images: list[PIL.Image.Image] | np.ndarray
    personalized_images: list[PIL.Image.Image] | np.ndarray | None
    foundation_images: list[PIL.Image.Image] | np.ndarray
    masks: list[dict[str, np.ndarray]]
    mask_sources: list[dict[str, str]]
    foundation_mode: str
    fasa_start: int | None
    check_step: int | None


class AttributeRepairMixin:
    """``__call__`` = FreeCure repair around the portrait pipeline's own ``__call__``.

    List it before the portrait pipeline: ``class X(AttributeRepairMixin, PortraitPipeline)``.
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        *,
        attributes: Mapping[str, str],
        mask_function: MaskFunction | None = None,
        foundation_prompt: str | None = None,
        negative_prompt: str | None = None,
        fasa: FasaConfig | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 50,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        output_type: str = "pil",
        compare: bool = True,
        check_step: float | None = None,
        **kwargs: Any,
    ) -> RepairPipelineOutput:
        """Generate, find the attributes the identity lost, and repair them.

        Args:
            prompt: the personalized prompt (with the trigger word when a LoRA is on).
            attributes: attribute name -> the prompt's words for it (e.g.
                ``{"hair": "red hair", "glasses": "round glasses"}``), whose cross-attention
                map is the fallback mask.
            mask_function: ``(personalized, foundation, attribute names) -> per image
                {attribute: mask or None}`` (see :data:`MaskFunction`); ``None`` repairs every
                attribute with its attention mask.
            foundation_prompt: the foundation branch's prompt (the trigger word replaced by the
                class word); ``prompt`` by default.
            fasa: layers, steps and weight of FASA; the published defaults by default.
            output_type: ``"pil"`` or ``"np"``.
            compare: run the personalized branch in pass 1, for the mask function to compare
                (and for ``personalized_images``); ``False`` when the attributes to repair are
                known: pass 1 is then the foundation alone (``personalized_images`` is ``None``
                and the mask function gets ``None`` for them).
            check_step: repair **in the run**: at this fraction of the steps the mask function
                gets the x0 previews (the images the batch predicts at that step, at half size:
                its masks are at that size too) instead of the final images, and FASA acts from
                that step on (within ``fasa``'s range) on the same batch's foundation
                keys/values: one batched run, no pass 2, no recorded keys. ``None`` (default):
                check the final images and repair in pass 2. Used when comparing in mode
                ``"batched"``; otherwise the two passes run.
            kwargs: the portrait pipeline's other arguments (identity, ControlNet, guidance
                ...), used by both passes.
        """
        # 1. Check inputs
        self._check_repair_inputs(prompt, attributes, output_type, kwargs)
        fasa = fasa or FasaConfig()
        foundation_prompt = prompt if foundation_prompt is None else foundation_prompt
        names = tuple(attributes)
        n = num_images_per_prompt
        conditions = [kwargs.get("keypoint_image"), kwargs.get("control_image")]
        height, width = self.default_height_width(height, width, conditions)
        base = {
            "num_inference_steps": num_inference_steps,
            "height": height,
            "width": width,
            "generator": generator if isinstance(generator, torch.Generator) else None,
            "output_type": "np",
            **kwargs,
        }

        # 2. The noise both passes and branches start from
        if latents is None:
            shape = (
                n,
                self.unet.config.in_channels,
                height // self.vae_scale_factor,
                width // self.vae_scale_factor,
            )
            latents = randn_tensor(
                shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype
            )

        # 3. FASA and the attention-map recorder, on the UNet from the first repair on
        layers = fasa.layers or default_fasa_layers(self.unet)
        self._check_fasa_layers(layers)
        self._stack_repair_contributions()
        weight = default_fasa_weight(self.unet) if fasa.weight is None else fasa.weight
        mode = "separate" if self._foundation_needs_own_call(kwargs) or not compare else "batched"
        steps = fasa.step_range(num_inference_steps)
        check = None
        if check_step is not None:
            check = self._check_step(check_step, num_inference_steps, steps)
            check = check if mode == "batched" else None
        if check is not None:
            steps = range(max(check, steps.start), steps.stop)
        session = FasaSession(
            num_images=n, steps=steps, weight=weight, layers=layers, live=check is not None
        )
        token_indices = {
            name: self._token_indices(foundation_prompt, words)
            for name, words in attributes.items()
        }
        run = _Passes(self, session, base, cross_attention_kwargs, latents, n)

        def choose(personalized, foundation):
            """Per image, the masks of the mask function at the images' size (previews:
            smaller), else of the foundation's attention maps, resized to the output; their
            sources; the union of each image's masks ``[n, H, W]``."""
            given = self._given_masks(mask_function, personalized, foundation, names, n)
            maps = session.maps.averaged(
                height // self.vae_scale_factor, width // self.vae_scale_factor
            )
            masks, sources = _resolve_masks(given, maps, names, *foundation.shape[1:3])
            masks = [{k: _resized(m, height, width) for k, m in image.items()} for image in masks]
            empty = [np.zeros((height, width), dtype=bool)]
            union = np.stack([np.logical_or.reduce([*image.values()] or empty) for image in masks])
            return masks, sources, union

        def to_session(union: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(union[:, None]).to(self._execution_device, self.unet.dtype)

        start = None
        if check is not None:
            # 4a. One run: the previews checked at `check`, FASA live from there on
            chosen = []

            def at_check(previews: np.ndarray) -> None:
                chosen.append(choose(previews[:n], previews[n:]))
                session.apply(to_session(chosen[0][2]))

            repaired, foundation = run.in_run(
                prompt, foundation_prompt, negative_prompt, token_indices, check, at_check
            )
            masks, sources, union = chosen[0]
            personalized = None if union.any() else repaired
            start = steps.start if union.any() else None
        else:
            # 4b. Pass 1: personalized (when compared) and foundation images, the foundation
            # recorded; masks on its final images
            if mode == "batched":
                personalized, foundation = run.batched(
                    prompt, foundation_prompt, negative_prompt, token_indices
                )
            else:
                personalized, foundation = run.separate(
                    prompt if compare else None, foundation_prompt, negative_prompt, token_indices
                )
            masks, sources, union = choose(personalized, foundation)

            # 5. Pass 2: personalized rows only, FASA on the masks
            repaired = personalized
            if union.any() or personalized is None:  # empty masks: a plain personalized run
                session.apply(to_session(union))
                repaired, start = run.repair(prompt, negative_prompt)
                start = start if union.any() else None

        # 6. Outputs
        convert = self.image_processor.numpy_to_pil if output_type == "pil" else (lambda x: x)
        return RepairPipelineOutput(
            images=convert(repaired),
            personalized_images=None if personalized is None else convert(personalized),
            foundation_images=convert(foundation),
            masks=masks,
            mask_sources=sources,
            foundation_mode=mode,
            fasa_start=start,
            check_step=check,
        )

    def _check_repair_inputs(self, prompt, attributes, output_type, kwargs) -> None:
        if not isinstance(prompt, str):
            raise ValueError(f"a repair takes one `prompt` string, got {type(prompt).__name__}")
        if (
            not isinstance(attributes, Mapping)
            or not attributes
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in attributes.items())
        ):
            raise ValueError(
                "`attributes` must map attribute names to the prompt's words for them, e.g. "
                f"{{'hair': 'red hair'}}, got {attributes!r}"
            )
        if output_type not in ("pil", "np"):
            raise ValueError(f"a repair's `output_type` is 'pil' or 'np', got {output_type!r}")
        for name, why in REFUSED_ARGUMENTS.items():
            if name in kwargs:
                raise TypeError(f"`{name}` cannot be given to a repair: {why}")

    @staticmethod
    def _check_step(fraction: float, num_steps: int, steps: range) -> int:
        """The step an in-run repair checks at: ``fraction`` of the steps, at least 1 (a preview
        needs one denoising step), before FASA's end."""
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"`check_step` is a fraction of the steps in (0, 1), got {fraction}")
        check = max(1, round(fraction * num_steps))
        if check >= steps.stop:
            raise ValueError(
                f"`check_step` {fraction} is step {check} of {num_steps}, at or after the end of "
                f"FASA's step range (step {steps.stop}); check earlier or end FASA later"
            )
        return check

    @torch.no_grad()
    def _decode_preview(self, latents: torch.Tensor, downscale: int = PREVIEW_DOWNSCALE):
        """x0 latents as ``[batch, H / downscale, W / downscale, 3]`` images in ``[0, 1]``: the
        latents averaged over ``downscale``² cells, then decoded."""
        if downscale > 1:
            latents = F.avg_pool2d(latents, downscale)
        return decode_latents(self, latents, "np")

    def _stack_repair_contributions(self) -> None:
        """FASA on every self-attention layer and the map recorder on every cross-attention
        layer, once: both are inert in calls without a repair session."""
        if FASA in self.attention_contributions():
            return
        layers = [layer.name for layer in self_attention_layers(self.unet)]
        self.add_attention_contribution({n: FoundationAwareSelfAttention(n) for n in layers})
        self.add_attention_contribution(AttentionMaps(), layers=lambda a: a.is_cross_attention)

    def _check_fasa_layers(self, layers: Sequence[str]) -> None:
        known = {layer.name for layer in self_attention_layers(self.unet)}
        unknown = [name for name in layers if name not in known]
        if unknown:
            raise ValueError(
                f"FASA layers must be self-attention layers of this UNet; unknown: {unknown[:3]} "
                f"(e.g. {sorted(known)[0]!r})"
            )

    def _foundation_needs_own_call(self, kwargs: Mapping[str, Any]) -> bool:
        """A peft LoRA cannot be switched off per row of a batch; W+ follows the identity's rows,
        so it needs identity embeddings to be switched off in the foundation rows."""
        loras = bool(getattr(self, "get_active_adapters", lambda: [])())
        return loras or (kwargs.get("wplus") is not None and kwargs.get("identity_embeds") is None)

    def _token_indices(self, prompt: str, words: str) -> list[int]:
        """Positions of ``words``' tokens in ``prompt``'s token ids (empty when absent)."""
        ids = self.tokenizer(prompt, truncation=True, max_length=self.tokenizer.model_max_length)
        ids = ids.input_ids
        wanted = self.tokenizer(words, add_special_tokens=False).input_ids
        for start in range(len(ids) - len(wanted) + 1):
            if wanted and ids[start : start + len(wanted)] == wanted:
                return list(range(start, start + len(wanted)))
        return []

    def _foundation_embeds(self, prompt: str, n: int) -> torch.Tensor:
        """The foundation's conditional text embeddings, as its cross-attention reads them."""
        embeds = self.encode_prompt(
            prompt=prompt,
            device=self._execution_device,
            num_images_per_prompt=n,
            do_classifier_free_guidance=False,
        )
        return embeds[0]

    def _given_masks(self, mask_function, personalized, foundation, names, n):
        if mask_function is None:
            return [dict.fromkeys(names) for _ in range(n)]
        pil = self.image_processor.numpy_to_pil
        mine = None if personalized is None else pil(personalized)
        given = list(mask_function(mine, pil(foundation), names))
        if len(given) != n or not all(isinstance(g, Mapping) for g in given):
            raise ValueError(
                f"the mask function must return one mapping per image ({n}), got {given!r:.80}"
            )
        for image in given:
            unknown = set(image) - set(names)
            if unknown:
                raise ValueError(
                    f"the mask function returned attributes {sorted(unknown)} that were not "
                    f"asked for ({list(names)})"
                )
        return given


class _Passes:
    """The runs of one repair call, sharing its session and inputs."""

    def __init__(self, pipe, session, base, cross_attention_kwargs, latents, n):
        self.pipe = pipe
        self.session = session
        self.base = base
        self.kwargs = dict(cross_attention_kwargs or {})
        self.latents = latents
        self.n = n
        self.resume_latents = None

    def _state(self, inputs) -> dict[str, Any]:
        return {**self.kwargs, STATE_KEY: AttentionCallState(inputs=inputs)}

    def _callback(self, offset: int, keep: slice | None, at_step: Callable | None):
        """Counts steps for the session; with ``keep``, keeps the latents at FASA's start; calls
        ``at_step`` with each step reached."""
        session, first = self.session, self.session.steps.start

        def on_step(pipe, step, timestep, tensors):
            session.step = offset + step + 1
            if keep is not None and session.step == first:
                self.resume_latents = tensors["latents"][keep].clone()
            if at_step is not None:
                at_step(session.step)
            return {}

        return on_step

    def _call(self, offset=0, keep=None, at_step=None, **call):
        self.session.step = offset
        return self.pipe_call(
            callback_on_step_end=self._callback(offset, keep, at_step),
            callback_on_step_end_tensor_inputs=["latents"],
            **call,
        )

    def pipe_call(self, **call):
        return super(AttributeRepairMixin, self.pipe).__call__(**call).images

    def _recording_state(self, tokens, indices):
        session = self.session
        return self._state(
            {
                FASA: FasaInput(session=session),
                ATTENTION_MAPS: MapInput(tokens=tokens, session=session, token_indices=indices),
            }
        )

    def _batched_call(self, prompt, foundation_prompt, negative_prompt) -> dict[str, Any]:
        """The call on the batch ``[personalized, foundation]``, identity on the first rows."""
        n = self.n
        call = dict(self.base)
        if call.get("identity_embeds") is not None:
            call["identity_rows"] = [True] * n + [False] * n
        wplus = call.get("wplus")
        if isinstance(wplus, torch.Tensor) and wplus.ndim == 3 and len(wplus) == n > 1:
            call["wplus"] = torch.cat([wplus, wplus])  # one W+ per image of both branches
        call.update(
            prompt=[prompt] * n + [foundation_prompt] * n,
            negative_prompt=None if negative_prompt is None else [negative_prompt] * 2 * n,
            latents=torch.cat([self.latents, self.latents]),
        )
        return call

    def batched(self, prompt, foundation_prompt, negative_prompt, token_indices):
        """Pass 1 as one call on ``[personalized, foundation]``, the foundation recorded."""
        n = self.n
        tokens = self.pipe._foundation_embeds(foundation_prompt, n)
        images = self._call(
            keep=slice(0, n),
            cross_attention_kwargs=self._recording_state(tokens, token_indices),
            **self._batched_call(prompt, foundation_prompt, negative_prompt),
        )
        return images[:n], images[n:]

    def in_run(self, prompt, foundation_prompt, negative_prompt, token_indices, check, at_check):
        """One call on ``[personalized, foundation]``: after step ``check - 1``,
        ``at_check(previews)`` gets both branches' x0 previews ``[2n, H, W, 3]`` (and switches the
        live session on); FASA then acts in the same run."""
        pipe, n = self.pipe, self.n
        tokens = pipe._foundation_embeds(foundation_prompt, n)
        preview = _Preview(pipe, self.session, check - 1)

        def at_step(step: int) -> None:
            if step == check:
                at_check(pipe._decode_preview(preview.latents))
                preview.latents = None

        handle = pipe.unet.register_forward_hook(preview, with_kwargs=True)
        try:
            images = self._call(
                at_step=at_step,
                cross_attention_kwargs=self._recording_state(tokens, token_indices),
                **self._batched_call(prompt, foundation_prompt, negative_prompt),
            )
        finally:
            handle.remove()
        return images[:n], images[n:]

    def separate(self, prompt, foundation_prompt, negative_prompt, token_indices):
        """The personalized call (unless ``prompt`` is ``None``), then the foundation's, with
        the LoRA disabled."""
        pipe, n = self.pipe, self.n
        personalized = None
        if prompt is not None:
            personalized = self._call(
                keep=slice(0, n),
                prompt=prompt,
                negative_prompt=negative_prompt,
                num_images_per_prompt=n,
                latents=self.latents,
                cross_attention_kwargs=self.kwargs or None,
                **self.base,
            )
        foundation_call = {k: v for k, v in self.base.items() if k not in IDENTITY_ARGUMENTS}
        loras = bool(getattr(pipe, "get_active_adapters", lambda: [])())
        if loras:
            pipe.disable_lora()
        try:
            tokens = pipe._foundation_embeds(foundation_prompt, n)
            foundation = self._call(
                prompt=foundation_prompt,
                negative_prompt=negative_prompt,
                num_images_per_prompt=n,
                latents=self.latents,
                cross_attention_kwargs=self._recording_state(tokens, token_indices),
                **foundation_call,
            )
        finally:
            if loras:
                pipe.enable_lora()
        return personalized, foundation

    def repair(self, prompt, negative_prompt) -> tuple[np.ndarray, int]:
        """Pass 2; returns its images and the step it started at."""
        pipe, n, session = self.pipe, self.n, self.session
        full = pipe.scheduler.timesteps.clone()
        rows = (False,) * (n if pipe.do_classifier_free_guidance else 0) + (True,) * n
        call = dict(self.base)
        start = session.steps.start
        latents = self.latents
        if start > 0 and self._resumable():
            tail = full[start:].tolist()
            pipe.scheduler.set_timesteps(timesteps=tail, device=full.device)
            latents = self.resume_latents / pipe.scheduler.init_noise_sigma
            call.update(timesteps=tail, num_inference_steps=len(tail))
        else:
            start = 0
        images = self._call(
            offset=start,
            prompt=prompt,
            negative_prompt=negative_prompt,
            num_images_per_prompt=n,
            latents=latents,
            cross_attention_kwargs=self._state({FASA: FasaInput(session=session, rows=rows)}),
            **call,
        )
        return images, start

    def _resumable(self) -> bool:
        """Pass 1's latents at FASA's first step can seed pass 2 (same later steps)."""
        step_relative = ("control_guidance_start", "control_guidance_end", "wplus", "timesteps")
        return (
            type(self.pipe.scheduler).__name__ in RESUMABLE_SCHEDULERS
            and self.resume_latents is not None
            and all(self.base.get(k) is None for k in (*step_relative, "sigmas"))
        )


class _Preview:
    """A UNet forward hook keeping, at one step, the guided x0 prediction of the batch's
    conditional rows (``[2n, ...]``: personalized, then foundation)."""

    def __init__(self, pipe, session: FasaSession, step: int):
        self.pipe, self.session, self.step = pipe, session, step
        self.latents: torch.Tensor | None = None

    def __call__(self, module, args, kwargs, output):
        if self.session.step != self.step:
            return
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        prediction = output[0] if isinstance(output, tuple) else output.sample
        if self.pipe.do_classifier_free_guidance:
            uncond, cond = prediction.chunk(2)
            prediction = uncond + self.pipe.guidance_scale * (cond - uncond)
            sample = sample.chunk(2)[1]
        self.latents = x0_estimate(self.pipe.scheduler, sample, timestep, prediction)


def x0_estimate(scheduler, sample, timestep, prediction) -> torch.Tensor:
    """The clean latents a denoiser ``prediction`` implies for its (scaled) model input
    ``sample`` at ``timestep``, by the scheduler's ``alphas_cumprod`` (interpolated for
    fractional timesteps) and prediction type; sigma schedulers' scaled inputs are on the same
    scale (``x / sqrt(sigma^2 + 1)``)."""
    alphas = scheduler.alphas_cumprod.float()
    t = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
    low = min(int(t), len(alphas) - 1)
    high = min(low + 1, len(alphas) - 1)
    alpha = alphas[low] + (alphas[high] - alphas[low]) * (t - low)
    a, b = alpha.sqrt(), (1 - alpha).sqrt()
    sample, prediction = sample.float(), prediction.float()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (sample - b * prediction) / a
    if kind == "v_prediction":
        return a * sample - b * prediction
    if kind == "sample":
        return prediction
    raise ValueError(f"no x0 preview for the scheduler's prediction type {kind!r}")


def _resized(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A bool mask at ``height x width`` (nearest neighbour)."""
    if mask.shape == (height, width):
        return mask
    resized = F.interpolate(torch.from_numpy(mask)[None, None].float(), (height, width))
    return resized[0, 0].numpy() > 0.5


def _resolve_masks(given, maps, names, height, width):
    """Per image: attribute -> bool mask and its source, given masks first, then maps."""
    masks, sources = [], []
    for index, image in enumerate(given):
        chosen, source = {}, {}
        for name in names:
            if name not in image:
                continue
            mask = image[name]
            if mask is not None:
                mask = np.asarray(mask).astype(bool)
                if mask.shape != (height, width):
                    raise ValueError(
                        f"the mask function's {name!r} mask is {list(mask.shape)}, the images "
                        f"are {height}x{width}; return [height, width] masks"
                    )
                chosen[name], source[name] = mask, "given"
            elif name in maps:
                chosen[name] = attention_mask(maps[name][index], height, width)
                source[name] = "attention"
            else:
                source[name] = "none"
        masks.append(chosen)
        sources.append(source)
    return masks, sources


def attention_mask(attention: torch.Tensor, height: int, width: int) -> np.ndarray:
    """A ``[side, side]`` attention map as a bool ``[height, width]`` mask: normalised to
    ``[0, 1]``, resized, thresholded by Otsu's method."""
    low, high = attention.min(), attention.max()
    normalised = (attention - low) / (high - low) if high > low else torch.zeros_like(attention)
    resized = F.interpolate(normalised[None, None].float(), (height, width), mode="bilinear")
    values = resized[0, 0].numpy()
    return values > otsu_threshold(values)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold in ``[0, 1]`` maximising the between-class variance of ``values`` (the
    upper edge of the low class's last bin: values above it form the high class)."""
    histogram, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(histogram)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(histogram * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[1:][int(np.argmax(between))])


class PortraitRepairPipeline(AttributeRepairMixin, PortraitPipeline):
    """Attribute repair on Stable Diffusion 1.5 portraits (``PortraitRepairPipeline.from_pipe``
    of a loaded :class:`~pipelines.PortraitPipeline` shares its weights)."""


class PortraitRepairXLPipeline(AttributeRepairMixin, PortraitXLPipeline):
    """Attribute repair on SDXL portraits (FaceID or InstantID), as
    :class:`PortraitRepairPipeline`."""


def repair_pipeline_class(pipeline_class: type) -> type:
    """The repair pipeline of a portrait pipeline class."""
    for base, repair in (
        (PortraitXLPipeline, PortraitRepairXLPipeline),
        (PortraitPipeline, PortraitRepairPipeline),
    ):
        if issubclass(pipeline_class, base):
            return repair
    raise TypeError(
        f"no repair pipeline for {pipeline_class.__name__}; repair works on PortraitPipeline "
        "and PortraitXLPipeline"
    )
