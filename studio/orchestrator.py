"""The studio: the one place that composes the stages into ranked portraits.

identity (profile → adapter embeddings, the profile's LoRA, its W+ with the request's edits when
the model set has the W+ adapter) → generation (identity-adapter pipeline, the W+ adapter,
optional landmark ControlNet from a pose reference, the LoRA; with ``repair`` on, the derived
repair pipeline of :mod:`studio.repair` instead) → the request's stages (face swap: registered in
:mod:`studio.stages`, run under the GPU lock) →
scoring (identity similarity by a recognizer the adapter was not trained on) → saving
(watermarked PNG with ``parameters``, JSON sidecar, read back by :meth:`Studio.history`), only
once every stage succeeded on every image.

Pipelines live in the :class:`~studio.host.PipelineHost`: they load lazily, once, and are
reused; switching model set unloads the previous one.

Generation and training hold one lock: one job on the GPU at a time per studio; a portrait asked
for while a LoRA trains is refused with a message rather than left waiting for minutes.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import studio.stagelib  # noqa: F401  (registers the built-in stages)
from studio.clip_check import ClipScorer, clip_scorer_for
from studio.errors import StudioError
from studio.face_parsers import face_parser_for
from studio.faces.analyzer import DEFAULT_ENCODER, FaceAnalyzer, analyzer_from_settings
from studio.faces.condition import pose_condition
from studio.faces.encoders import IdentityEmbedding, mean_embedding
from studio.faces.types import Face
from studio.host import ActiveLora, PipelineHost
from studio.images import ImageLoadError, load_image
from studio.limits import MAX_REFINE_STEPS, check_range
from studio.models import select_model_set
from studio.outputs import GenerationRecord, save_image
from studio.profiles.errors import ProfileError
from studio.profiles.library import ProfileLibrary
from studio.profiles.types import Profile
from studio.repair import (
    RepairReport,
    foundation_prompt_for,
    generate_repaired,
    parse_repair,
    repair_attributes,
    save_foundation,
)
from studio.requests import Identity, PortraitRequest
from studio.scoring import IdentityScore, IdentityScorer
from studio.settings import Settings
from studio.stages import (
    STAGES,
    FaceParser,
    Stage,
    StageInput,
    StageRecord,
    StageResources,
    check_stage_names,
    run_stages,
)
from studio.styles import StylePreset, get_style, load_styles, user_styles_dir
from studio.swap.service import run_swap
from studio.swap.types import SwapRequest, SwapResult
from studio.training.run_folder import slug
from studio.wplus import face_points
from studio.wplus_models import WPlusModels

logger = logging.getLogger(__name__)

PORTRAITS_DIR = "portraits"
DEFAULT_SUBJECT = "a person"
IR_SE50_WEIGHTS = "ir_se50"
"""``--weights ir_se50=PATH``: the IR-SE50 model that adds an identity term to W+ refinement."""
SCORING_ENCODERS = ("sface", "dlib")
"""Recognizers that score likeness, in order of preference; the adapter's own is skipped."""


@dataclass(frozen=True)
class Portrait:
    """One saved portrait and how much it looks like the person."""

    path: Path
    seed: int
    score: IdentityScore
    repair: RepairReport | None = None
    """The attribute repair's report, when the request asked for repair."""
    foundation: Path | None = None
    """The repair's foundation image (identity off), saved beside the portrait."""


@dataclass(frozen=True)
class PortraitResult:
    """Portraits, best likeness first, and notes on what the studio decided."""

    portraits: tuple[Portrait, ...]
    prompt: str
    scorer: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class HistoryItem:
    """A saved portrait and its sidecar (the parameters it was made with)."""

    path: Path
    record: dict[str, Any] = field(hash=False)


class Studio:
    """Profiles, training, styles and portraits on one model set, for the CLI and the web UI."""

    def __init__(self, settings: Settings, models: str = "tiny") -> None:
        self.settings = settings
        self.model_set = select_model_set(models)
        self.host = PipelineHost(settings)
        self._face_parser: FaceParser | None = None
        self._clip: tuple[ClipScorer | None] | None = None
        self.styles: dict[str, StylePreset] = load_styles(user_dir=user_styles_dir(settings))
        self._stages: dict[str, Stage] = {}
        self._analyzers: dict[tuple[str, ...], FaceAnalyzer] = {}
        self._identity_cache: dict[tuple, torch.Tensor | IdentityEmbedding] = {}
        self._gpu_lock = threading.Lock()
        self._training = threading.Event()
        self._faces_lock = threading.RLock()
        self.wplus = self._wplus_models()

    # Model sets

    def use_models(self, models: str) -> None:
        """Switch model set; the previous set's pipeline is unloaded at once."""
        model_set = select_model_set(models)
        with self._gpu_lock:
            if model_set.name != self.model_set.name:
                self.host.unload()
                self.model_set = model_set
                self.wplus = self._wplus_models()
                self._face_parser = None
                self._clip = None

    def pipeline(self):
        """The model set's identity pipeline, loaded on first use."""
        return self.host.pipeline(self.model_set)

    @property
    def face_parser(self) -> FaceParser:
        """The stages' face parser (BiSeNet when its file is local, else the mesh), made once."""
        with self._faces_lock:
            if self._face_parser is None:
                self._face_parser = face_parser_for(self.settings, self.model_set)
            return self._face_parser

    @property
    def clip_scorer(self) -> ClipScorer | None:
        """CLIP for the repair's attribute check when its weights are local, else ``None``;
        looked up once."""
        with self._faces_lock:
            if self._clip is None:
                self._clip = (clip_scorer_for(self.settings, self.model_set),)
            return self._clip[0]

    # Faces and profiles

    def analyzer(self, *encoders: str) -> FaceAnalyzer:
        """A face analyzer with these encoders, built once."""
        with self._faces_lock:
            if encoders not in self._analyzers:
                self._analyzers[encoders] = analyzer_from_settings(self.settings, encoders)
            return self._analyzers[encoders]

    def analyze(self, image: np.ndarray, *encoders: str) -> list[Face]:
        """Every face of an RGB image, largest first, described with these encoders."""
        analyzer = self.analyzer(*encoders)
        with self._faces_lock:
            return analyzer.analyze(image)

    @contextmanager
    def library(self, *, wplus: bool = False) -> Iterator[ProfileLibrary]:
        """The profile library, opened for this call (a library serves one thread).

        New photos get their W+ at intake when the model set's e4e is here; ``wplus`` gives the
        library the e4e even when it is not (resolving it, which offline names the file).
        """
        encoder = self.wplus.encoder(intake=not wplus)
        with ProfileLibrary(
            self.settings.profiles_dir, lambda enc: self.analyzer(*enc), encoder
        ) as lib:
            yield lib

    # W+

    def _wplus_models(self) -> WPlusModels:
        return WPlusModels(self.model_set, self.settings, lambda: self.analyzer(DEFAULT_ENCODER))

    def profile_wplus(self, profile: str) -> torch.Tensor:
        """The profile's W+ ``[1, rows, dim]`` from this set's e4e: stored, or computed from the
        accepted photos and stored on first use."""
        self.wplus.require("W+")
        with self.library(wplus=True) as lib:
            found = lib.ensure_wplus(profile)
        return torch.from_numpy(found.latent)

    def refine_wplus(
        self,
        profile: str,
        steps: int,
        *,
        on_progress: Callable[[int, int, float], None] | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[str, ...]:
        """Refine each accepted photo's stored W+ by ``steps`` of latent optimisation against
        the photo (:mod:`studio.wplus_refine`), store them and the new profile W+; returns a
        report per photo. The identity term needs ``--weights ir_se50=model_ir_se50.pth``."""
        from adapters.ir_se50 import load_ir_se50
        from studio.models.resolver import ModelResolver
        from studio.wplus_refine import refine_photo_wplus

        check_range("W+ refinement steps", steps, 1, MAX_REFINE_STEPS)
        path = ModelResolver(self.settings).explicit(self.model_set.name, IR_SE50_WEIGHTS)
        recognizer = None if path is None else load_ir_se50(path)  # a wrong path names itself
        self.profile_wplus(profile)  # every accepted photo has been through the e4e
        with self.library(wplus=True) as lib:
            found = lib.get(profile)
        key, reports = self.wplus.key, []
        for photo in found.accepted:
            stored = photo.wplus.get(key)
            if stored is None or stored.latent is None:
                why = stored.reason if stored is not None else "no W+ from this e4e"
                reports.append(f"{photo.file}: not refined: {why}")
                continue
            rgb = load_image(photo.path).rgb
            with self._faces_lock:
                faces = self.analyzer(DEFAULT_ENCODER).analyze(rgb)
            if len(faces) != photo.face_count:
                reports.append(
                    f"{photo.file}: not refined: {len(faces)} faces found now, "
                    f"{photo.face_count} at intake"
                )
                continue
            with self._gpu_lock:
                result = refine_photo_wplus(
                    self.wplus.e4e(),
                    rgb,
                    face_points(faces[photo.face_index]),
                    steps,
                    w_plus=torch.from_numpy(stored.latent),
                    recognizer=recognizer,
                    analyzer=self.analyzer(DEFAULT_ENCODER),
                    on_progress=on_progress,
                    stop=stop,
                )
            refined = replace(
                stored,
                latent=result.w_plus.detach().float().cpu().numpy(),
                computed=datetime.now(timezone.utc).replace(microsecond=0),
                refine_steps=stored.refine_steps + result.refinement.steps,
            )
            with self.library(wplus=True) as lib:
                lib.set_photo_wplus(found.name, photo.stored_name, refined)
            reports.append(f"{photo.file}: {result.report()}")
        return tuple(reports)

    def wplus_preview(self, profile: str, edits: tuple[tuple[str, float], ...] = ()) -> np.ndarray:
        """The StyleGAN rendering of the profile's W+ with ``edits``, RGB ``uint8``."""
        w_plus = self.wplus.edited(self.profile_wplus(profile), edits)
        with self._gpu_lock:
            return self.wplus.preview(w_plus)

    def _check_wplus(self, request: PortraitRequest) -> None:
        """Before anything loads: the request's edits name known directions of a set with W+."""
        if _asks_wplus(request):
            self.wplus.require("--edit / --wplus-scale (W+)")
        sources = self.wplus.directions.sources() if request.edits else {}
        for name, _ in request.edits:
            self.wplus.directions.edit(name, sources)

    def _wplus_call(self, request: PortraitRequest, notes: list[str]) -> dict[str, Any]:
        """The pipeline's ``wplus`` / ``wplus_scale``: the profile's edited W+ when the request
        asks for it, or when the set's W+ files are here and the profile has (or gets) a W+."""
        asked = _asks_wplus(request)
        if not (asked or self.wplus.ready):
            return {}
        try:
            w_plus = self.profile_wplus(request.profile)
        except ProfileError as exc:
            if asked:
                raise
            notes.append(f"W+ not used: {exc}")
            return {}
        return {
            "wplus": self.wplus.edited(w_plus, request.edits),
            "wplus_scale": request.wplus_scale,
        }

    def identity(self, profile_name: str, *, use_lora: bool = True) -> Identity:
        """The profile's adapter embeddings, scoring reference and newest fitting LoRA."""
        with self.library() as lib:
            profile = lib.get(profile_name)
        if not profile.accepted:
            raise StudioError(
                f"profile {profile.name!r} has no accepted photo; add photos of the person first"
            )
        encoder = self.model_set.identity_encoder
        embeds = self._photo_embeddings(profile, encoder)
        scorer = self.scoring_encoder()
        reference = mean_embedding(self._photo_embeddings(profile, scorer))
        lora = None
        if use_lora:
            fitting = [x for x in profile.loras if x.family == self.model_set.family]
            lora = fitting[-1] if fitting else None
        return Identity(
            profile=profile.name,
            encoder=encoder,
            embeds=torch.from_numpy(np.stack([e.vector for e in embeds])),
            reference=reference,
            lora=lora,
            subject=f"{lora.trigger} {lora.class_word}" if lora else DEFAULT_SUBJECT,
            keypoints_photo=profile.accepted[0].path,
            encodings={encoder: mean_embedding(embeds), scorer: reference},
        )

    def scoring_encoder(self) -> str:
        """The likeness judge: a recognizer other than the one the adapter was trained on."""
        for name in SCORING_ENCODERS:
            if name == self.model_set.identity_encoder:
                continue
            if name == "dlib" and importlib.util.find_spec("dlib") is None:
                continue
            return name
        return SCORING_ENCODERS[0]

    def _photo_embeddings(self, profile: Profile, encoder: str) -> list[IdentityEmbedding]:
        """Per accepted photo; from the library when it keeps ``encoder``, else computed once."""
        if encoder in {info.name for info in profile.encoders}:
            return [photo.embeddings[encoder] for photo in profile.accepted]
        key = (profile.name, profile.updated, encoder)
        if key not in self._identity_cache:
            analyzer = self.analyzer(encoder)
            found = []
            for photo in profile.accepted:
                with self._faces_lock:
                    faces = analyzer.analyze(load_image(photo.path).rgb)
                if len(faces) == photo.face_count:  # the face the profile chose, same order
                    face = faces[photo.face_index]
                    found.append(IdentityEmbedding(encoder, face.embeddings[encoder]))
            if not found:
                raise StudioError(
                    f"no face of profile {profile.name!r} could be read by "
                    f"{encoder}; add clearer photos"
                )
            self._identity_cache[key] = found
        return self._identity_cache[key]

    # Portraits

    def prompt_for(self, request: PortraitRequest, identity: Identity) -> tuple[str, str, dict]:
        """The prompt, negative prompt and sampler settings for a request."""
        defaults = dict(self.model_set.defaults)
        if request.style:
            style = get_style(self.styles, request.style)
            prompt = style.render(identity.subject, request.prompt.strip())
            negative = ", ".join(x for x in (style.negative_prompt, request.negative_prompt) if x)
            width, height = style.size_for(self.model_set.family)
            settings = {
                "steps": style.steps,
                "guidance": style.guidance,
                "identity_scale": style.identity_scale,
            }
        else:
            text = request.prompt.strip()
            prompt = (
                text.replace("{subject}", identity.subject)
                if "{subject}" in text
                else f"{identity.subject}, {text}"
            )
            negative = request.negative_prompt
            width, height = defaults.get("width", 512), defaults.get("height", 512)
            settings = {
                "steps": defaults.get("steps", 30),
                "guidance": defaults.get("guidance", 7),
                "identity_scale": 1.0,
            }
        width, height = _fit(width, height, defaults.get("max_side"))
        for key in ("steps", "guidance", "identity_scale"):
            if getattr(request, key) is not None:
                settings[key] = getattr(request, key)
        return prompt, negative, {**settings, "width": width, "height": height}

    def generate(self, request: PortraitRequest, out_dir: Path | None = None) -> PortraitResult:
        """Make ``request.num_images`` portraits, score, save (to ``out_dir``, default the
        history's folder), and rank them."""
        request.validate()
        check_stage_names(request.stages)
        if self._training.is_set():
            raise StudioError(
                "a LoRA is training on this machine; wait until it finishes, or "
                "cancel it (it can resume later), then generate"
            )
        self._check_wplus(request)
        identity = self.identity(request.profile, use_lora=request.use_lora)
        style = get_style(self.styles, request.style) if request.style else None
        prompt, negative, knobs = self.prompt_for(request, identity)
        notes = []
        if request.use_lora and identity.lora is None:
            notes.append(
                f"profile {identity.profile!r} has no {self.model_set.family} LoRA; "
                "likeness comes from the identity adapter alone (train one to improve "
                "it)"
            )
        wplus = self._wplus_call(request, notes)
        pose = request.pose or (style.pose if style else None)
        condition = self._condition(pose, identity, knobs["width"], knobs["height"])
        seeds = [request.seed + i for i in range(request.num_images)]
        stages = [self._stage(name) for name in request.stages]
        scorer = IdentityScorer(self.analyzer(identity.reference.encoder), identity.reference)
        with self._gpu_lock:
            pipe = self.pipeline()
            if wplus and pipe.wplus_schedule is None:
                pipe.load_wplus_adapter(self.wplus.adapter_path())
            self.host.use_loras(_lora_specs(identity, style))
            call = {
                "prompt": [prompt] * len(seeds),
                "negative_prompt": [negative] * len(seeds) if negative else None,
                "num_inference_steps": knobs["steps"],
                "guidance_scale": knobs["guidance"],
                "width": knobs["width"],
                "height": knobs["height"],
                "generator": [torch.Generator("cpu").manual_seed(s) for s in seeds],
                "identity_embeds": identity.embeds,
                "identity_scale": knobs["identity_scale"],
                **wplus,
                **condition,
            }
            repaired = self._repair(pipe, call, request, identity, prompt)
            if repaired:
                images, offload_note = [r.image for r in repaired], None
            else:
                images, offload_note = self.host.run(pipe, **call)
            wplus_record = _wplus_record(pipe, request, self.wplus.key) if wplus else None
            sampler = type(pipe.scheduler).__name__.removesuffix("Scheduler")
            staged = [
                self._run_stages(stages, image, identity, request, seed, i, scorer.analyzer)
                for i, (seed, image) in enumerate(zip(seeds, images, strict=True))
            ]
        if offload_note:
            notes.append(offload_note)
        portraits = []
        for index, (seed, (image, records)) in enumerate(zip(seeds, staged, strict=True)):
            fixed = repaired[index] if repaired else None
            with self._faces_lock:
                score = scorer.score(image)
            record = GenerationRecord(
                prompt=prompt,
                negative_prompt=negative,
                seed=seed,
                steps=knobs["steps"],
                guidance=knobs["guidance"],
                width=knobs["width"],
                height=knobs["height"],
                sampler=sampler,
                model_set=self.model_set.name,
            )
            extra = {
                "profile": identity.profile,
                "style": request.style,
                "user_prompt": request.prompt,
                "identity_scale": knobs["identity_scale"],
                "lora": identity.lora.name if identity.lora else None,
                "style_lora": style.lora.origin if style and style.lora else None,
                "pose": str(pose) if pose else None,
                "stages": [record.name for record in records],
                "stage_notes": {record.name: list(record.notes) for record in records},
                "wplus": wplus_record,
                "identity": {
                    "encoder": scorer.encoder,
                    "similarity": round(score.similarity, 4),
                    "faces": score.faces,
                    "same_person": score.same_person,
                    "threshold": scorer.threshold,
                },
            }
            masks = {f"{r.name}.{name}": mask for r in records for name, mask in r.masks.items()}
            if fixed is not None:
                extra["repair"] = fixed.report.sidecar()
                masks.update(fixed.masks)
            path = save_image(image, record, out_dir or self.portraits_dir, extra, masks)
            foundation = save_foundation(fixed, path, record, extra) if fixed else None
            portraits.append(
                Portrait(path, seed, score, fixed.report if fixed else None, foundation)
            )
        portraits.sort(key=lambda p: p.score.similarity, reverse=True)
        return PortraitResult(tuple(portraits), prompt, scorer.encoder, tuple(notes))

    def swap(self, request: SwapRequest, out_dir: Path | None = None) -> SwapResult:
        """Put a profile's face into a photo (:mod:`studio.swap`) and save the result (to
        ``out_dir``, default the history's folder)."""
        if self._training.is_set():
            raise StudioError(
                "a LoRA is training on this machine; wait until it finishes, or cancel it, "
                "then swap"
            )
        with self._gpu_lock:
            return run_swap(self, request, out_dir or self.portraits_dir)

    def _repair(self, pipe, call, request, identity, prompt) -> list | None:
        """With ``request.repair`` on, generate through the repair pipeline (called with the GPU
        lock held); ``None`` when the request repairs nothing."""
        attributes = repair_attributes(request.repair, request.prompt)
        if not attributes:
            return None
        lora = identity.lora
        with self._faces_lock:
            analyzer, parser = self.analyzer(self.scoring_encoder()), self.face_parser
            clip = self.clip_scorer

        def faces(rgb):
            with self._faces_lock:
                return analyzer.analyze(rgb)

        choice = parse_repair(request.repair)
        return generate_repaired(
            self.host,
            pipe,
            dict(call),
            attributes=attributes,
            forced=() if isinstance(choice, str) else choice,
            user_prompt=request.prompt,
            foundation_prompt=foundation_prompt_for(
                prompt, identity.subject, lora.class_word if lora else None
            ),
            faces=faces,
            parser=parser,
            clip=clip,
        )

    def _stage(self, name: str) -> Stage:
        """The registered stage ``name``, made once per studio."""
        if name not in self._stages:
            self._stages[name] = STAGES[name]()
        return self._stages[name]

    def _run_stages(
        self,
        stages: list[Stage],
        image: Image.Image,
        identity: Identity,
        request: PortraitRequest,
        seed: int,
        index: int,
        analyzer: FaceAnalyzer,
    ) -> tuple[Image.Image, tuple[StageRecord, ...]]:
        """Run the request's stages on one image; called with the GPU lock held."""
        if not stages:
            return image, ()
        with self._faces_lock:
            faces = tuple(analyzer.analyze(np.asarray(image.convert("RGB"))))
        given = StageInput(image, faces, identity, request, seed, index)
        resources = StageResources(
            host=self.host,
            analyzer=analyzer,
            face_parser=self.face_parser,
            generator=torch.Generator("cpu").manual_seed(seed),
        )
        with self._faces_lock:  # the analyzer and parser are shared with other threads
            return run_stages(stages, given, resources, total=request.num_images)

    @property
    def portraits_dir(self) -> Path:
        return self.settings.output_dir / PORTRAITS_DIR

    def _condition(
        self, pose: str | Path | None, identity: Identity, width: int, height: int
    ) -> dict[str, Any]:
        """The pose condition: the pose reference's face, or the profile's own pose when the
        family conditions on it (SDXL's IdentityNet)."""
        family = self.model_set.base_family
        source = pose or (identity.keypoints_photo if family.pose_from_profile else None)
        if source is None:
            return {}
        try:
            rgb = load_image(source).rgb
        except ImageLoadError as exc:
            raise StudioError(f"pose reference: {exc}") from exc
        with self._faces_lock:
            faces = self.analyzer(self.scoring_encoder()).analyze(rgb)
        if not faces:
            raise StudioError(
                f"pose reference {Path(str(source)).name}: no face found; use a "
                "photo with a clearly visible face"
            )
        try:
            drawn = pose_condition(faces[0], (width, height), kind=family.pose_kind)
        except ValueError as exc:
            raise StudioError("pose control needs the face mesh: install the `mesh` extra") from exc
        return {family.pose_argument: Image.fromarray(drawn)}

    # History and training

    @property
    def _runs_dir(self) -> Path:
        return self.settings.output_dir / "loras"

    def training_runs(self, profile: str) -> list[Path]:
        """The profile's training run folders, oldest first."""
        pattern = re.compile(re.escape(slug(profile)) + r"-\d{8}-\d{6}(-\d+)?")
        runs = self._runs_dir.glob("*/run.json")
        return sorted(p.parent for p in runs if pattern.fullmatch(p.parent.name))

    def history(self, limit: int = 100) -> list[HistoryItem]:
        """Saved portraits, newest first, with their sidecars."""
        items = []
        for sidecar in sorted(self.portraits_dir.glob("*.json"), reverse=True):
            image = sidecar.with_suffix(".png")
            if not image.exists():
                continue
            try:
                record = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            items.append(HistoryItem(image, record))
            if len(items) == limit:
                break
        return items

    def train(
        self,
        profile: str,
        *,
        stop: threading.Event | None = None,
        on_progress: Callable | None = None,
        resume: bool = False,
        **flags: Any,
    ):
        """Train (or resume) the profile's LoRA on this model set; registered in the profile."""
        from studio.training.config import config_from_flags
        from studio.training.trainer import train

        given = {"profile": profile, "models": self.model_set.name, **flags}
        runs = self.training_runs(profile)
        if resume:
            if not runs:
                raise StudioError(f"profile {profile!r} has no training run to resume")
            given.update(resume="latest", out=str(runs[-1]))
        else:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            out, n = self._runs_dir / f"{slug(profile)}-{stamp}", 1
            while out.exists():
                out, n = self._runs_dir / f"{slug(profile)}-{stamp}-{n}", n + 1
            given["out"] = str(out)
        config = config_from_flags(given, self.settings.torch_device())
        with self._gpu_lock:
            self._training.set()
            try:
                return train(config, self.settings, given=given, stop=stop, on_progress=on_progress)
            finally:
                self._training.clear()


def _lora_specs(identity: Identity, style: StylePreset | None) -> tuple[ActiveLora, ...]:
    specs = []
    if identity.lora is not None:
        specs.append(ActiveLora("identity", str(identity.lora.path)))
    if style is not None and style.lora is not None:
        lora = style.lora
        source = str(lora.path) if lora.path is not None else lora.repo
        specs.append(ActiveLora("style", source, lora.weight_name, lora.scale))
    return tuple(specs)


def _asks_wplus(request: PortraitRequest) -> bool:
    return any(amount for _, amount in request.edits) or request.wplus_scale is not None


def _wplus_record(pipe, request: PortraitRequest, e4e: str) -> dict[str, Any]:
    """What the sidecar says about W+: the edits, the scale used and which e4e made the W+."""
    scale = request.wplus_scale
    return {
        "e4e": e4e,
        "edits": [[name, amount] for name, amount in request.edits],
        "scale": pipe.wplus_schedule.scale if scale is None else scale,
        "start": pipe.wplus_schedule.start,
    }


def _fit(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """Scale a size down to ``max_side`` (the tiny sets), keeping its shape, multiples of 8."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(8, int(width * scale) // 8 * 8), max(8, int(height * scale) // 8 * 8)
