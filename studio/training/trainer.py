"""The training loop: cached latents → denoising loss → LoRA updates, checkpoints, validation.

:func:`train` composes the stages for one run. Every random draw of step ``n`` (photos, jitter
variant, VAE sample, noise, timesteps) comes from a generator seeded with ``(seed, n, rank)``,
so a run resumed from a checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from studio.errors import ConfigError
from studio.faces.analyzer import FaceAnalyzer, analyzer_from_settings
from studio.faces.encoders import mean_embedding
from studio.fileio import atomic_write_bytes
from studio.models import select_model_set
from studio.outputs import versions
from studio.settings import Settings
from studio.training import cache as caching
from studio.training.augment import variants
from studio.training.captions import caption
from studio.training.checkpoint import (
    TrainerState,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rotate,
    save_checkpoint,
)
from studio.training.config import TrainConfig, check
from studio.training.estimate import Estimate, duration
from studio.training.export import (
    METADATA_NAME,
    WEIGHTS_NAME,
    base_model_name,
    export_kohya,
    load_lora,
    save_lora,
)
from studio.training.fit import torch_threads
from studio.training.model import add_lora, load_models, lora_parameters
from studio.training.photos import select_photos
from studio.training.report import TrainingSummary, write_report
from studio.training.run_folder import RunFolder, RunRecord, slug
from studio.training.types import LoraMetadata, PhotoSet
from studio.training.validation import Validator

logger = logging.getLogger(__name__)

MAX_GRAD_NORM = 1.0
_STEP_DRAWS, _EPOCH_ORDER = 0, 1  # separate random streams of step_generator


@dataclass(frozen=True)
class TrainingProgress:
    """One finished step, for progress displays (the web UI's live curves)."""

    step: int
    total: int
    loss: float
    lr: float
    elapsed_s: float
    similarity: float | None = None
    remaining_s: float | None = None
    """The time left, estimated from the measured steps (and validations) so far."""


ProgressCallback = Callable[[TrainingProgress], None]


@dataclass(frozen=True)
class TrainingResult:
    """What a run produced; ``weights`` is ``None`` when it was interrupted."""

    run_dir: Path
    status: str
    step: int
    weights: Path | None
    report: Path
    best_step: int | None
    best_similarity: float | None
    profile_lora: str | None = None


def default_run_dir(config: TrainConfig, settings: Settings) -> Path:
    first = Path(config.photos[0]).expanduser().resolve() if config.photos else None
    name = config.profile or (first.name if first.is_dir() else first.parent.name)
    return settings.output_dir / "loras" / slug(name)


def step_generator(seed: int, *key: int) -> torch.Generator:
    """A CPU generator for one step's random draws, independent of every other step's."""
    state = np.random.SeedSequence([seed, *key]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def sample_indices(seed: int, step: int, rank: int, world: int, batch: int, n: int) -> list[int]:
    """The photos of one step: every photo once per epoch, in an order shuffled per epoch."""
    indices = []
    for j in range(batch):
        k = (step * world + rank) * batch + j
        epoch, position = divmod(k, n)
        order = torch.randperm(n, generator=step_generator(seed, _EPOCH_ORDER, epoch))
        indices.append(int(order[position]))
    return indices


def _photo_sources(config: TrainConfig, settings: Settings) -> list[Path]:
    if config.photos:
        return [Path(p).expanduser() for p in config.photos]
    from studio.profiles.library import ProfileLibrary

    with ProfileLibrary.from_settings(settings) as library:
        profile = library.get(config.profile)
    if not profile.accepted:
        raise ConfigError(
            f"profile {profile.name!r} has no accepted photo to train on; add "
            "photos with `python -m studio profile add`"
        )
    return [photo.path for photo in profile.accepted]


def _new_run(
    folder: RunFolder, config: TrainConfig, settings: Settings, analyzer: FaceAnalyzer
) -> RunRecord:
    model_set = select_model_set(config.models)
    resolution = config.resolution_for(model_set.family)
    photos: PhotoSet = select_photos(
        _photo_sources(config, settings),
        analyzer,
        resolution=resolution,
        encoder=config.score_encoder,
    )
    for outcome in photos.rejected:
        logger.warning("left out %s: %s", outcome.file, "; ".join(outcome.reasons))
    record = RunRecord(
        config=config,
        model_set=config.models,
        family=model_set.family,
        resolution=resolution,
        created=datetime.now(timezone.utc),
        used=tuple(p.source.name for p in photos.used),
        tags=tuple(p.tags for p in photos.used),
        rejected=photos.rejected,
        warnings=photos.warnings,
        reference=mean_embedding(p.embedding for p in photos.used),
    )
    folder.start(record, photos)
    return record


class Trainer:
    """One run: set up from its folder (new or resumed), then :meth:`run` trains it.

    Setting ``stop`` ends the run within one unit of work: a training step, a denoising step of
    a validation (the validation is abandoned and redone on resume) or a batch of the latent
    cache; then it checkpoints and returns.
    """

    def __init__(
        self,
        config: TrainConfig,
        settings: Settings,
        *,
        given: Mapping[str, Any] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        from accelerate import Accelerator

        # 1. The run folder: a new run selects photos; a resumed one reads its own settings.
        if config.resume and not (config.out or config.photos or config.profile):
            raise ConfigError("--resume needs the run's --out folder (or its --profile / --photos)")
        self.started = time.monotonic()
        self.settings = settings
        self.stop = stop or threading.Event()
        self.folder = RunFolder(
            Path(config.out).expanduser() if config.out else default_run_dir(config, settings)
        )
        device = settings.torch_device()
        precision = config.precision_on(device)
        if precision == "fp16" and not device.startswith("cuda"):
            raise ConfigError("--mixed-precision fp16 needs a CUDA GPU; use bf16, no or auto")
        self.accelerator = accel = Accelerator(mixed_precision=precision, cpu=device == "cpu")
        analyzer = analyzer_from_settings(settings, encoders=(config.score_encoder,))
        if config.resume:
            if not self.folder.exists():
                raise ConfigError(
                    f"--resume: {self.folder.root} holds no training run; check --out"
                )
            config = config.resumed(self.folder.read().config, given or {})
            check(config)
        else:
            self.folder.check_new()
        class_images = None
        if config.prior_preservation:  # read before a new run's folder is written
            family = select_model_set(config.models).family
            resolution = config.resolution_for(family)
            class_images = caching.class_images(Path(config.class_images), resolution)
        if not config.resume:
            if accel.is_main_process:
                _new_run(self.folder, config, settings, analyzer)
            accel.wait_for_everyone()
        self.config = config
        self.record = self.folder.read()
        self._setup_models()
        self.step, self.best_step, self.best_similarity, self.elapsed_before = 0, None, None, 0.0
        if config.resume == "latest" and not list_checkpoints(self.folder.root):
            logger.info("%s has no checkpoint yet: training from step 0", self.folder.root)
            if accel.is_main_process:  # stopped (or killed) before its first checkpoint
                self.folder.rewind(0)
        elif config.resume:
            self._resume()
        with self._threads():
            self.cached = self._cache_inputs(class_images)
        self.validator = Validator(
            self.models,
            self.record.family,
            self.record.resolution,
            analyzer,
            self.record.reference,
            config,
            self.stop,
        )
        self.estimate = Estimate(config)
        self.abandoned_validation = False

    # Setup

    def _setup_models(self) -> None:
        """Frozen base model with LoRA layers, the optimizer and the LR schedule."""
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import cast_training_params

        config, accel = self.config, self.accelerator
        models = load_models(select_model_set(self.record.model_set), self.settings)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
            accel.mixed_precision, torch.float32
        )
        with torch.random.fork_rng(devices=[]):  # LoRA A matrices start from the run's seed
            torch.manual_seed(config.seed)
            trained = add_lora(
                models, config.rank, config.alpha, text_encoder=config.train_text_encoder
            )
        half = None if self.weight_dtype == torch.float32 else self.weight_dtype
        # Frozen text encoders stay on the CPU: their embeddings are cached, validation borrows.
        trained_encoders = models.text_encoders if config.train_text_encoder else []
        for module in (models.unet, *trained_encoders):
            module.to(accel.device, dtype=half)
        cast_training_params(trained, dtype=torch.float32)
        if config.gradient_checkpointing:
            models.unet.enable_gradient_checkpointing()
            for encoder in trained[1:]:
                encoder.gradient_checkpointing_enable()
        groups = [{"params": lora_parameters(models.unet), "lr": config.lr}]
        groups += [
            {"params": lora_parameters(e), "lr": config.text_encoder_lr or config.lr}
            for e in trained[1:]
        ]
        fused = accel.device.type == "cuda"  # one kernel for all LoRA tensors
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=1e-2, fused=fused)
        self.lr_scheduler = get_scheduler(
            "constant_with_warmup", optimizer, num_warmup_steps=config.lr_warmup_steps
        )
        models.unet, self.optimizer = accel.prepare(models.unet, optimizer)
        if config.train_text_encoder:
            models.text_encoders = [accel.prepare(e) for e in models.text_encoders]
        self.models = models

    def _cache_inputs(self, class_images: list[np.ndarray] | None) -> bool:
        """Latents of every jittered crop (and class image), embeddings of every caption.

        Returns ``False`` when ``stop`` was set meanwhile (the caches are then incomplete).
        """
        config, models, device = self.config, self.models, self.accelerator.device
        crops = self.folder.crops()
        self.n_photos = len(crops)
        jittered = [
            v
            for i, crop in enumerate(crops)
            for v in variants(crop, config.augment_variants, seed=config.seed * 100_003 + i)
        ]
        self.latents = caching.encode_latents(models.vae, jittered, device, self.stop)
        prompts = [caption(config.trigger, config.class_word, tags) for tags in self.record.tags]
        self.class_latents = None
        if class_images is not None and self.latents is not None:
            self.class_latents = caching.encode_latents(models.vae, class_images, device, self.stop)
            prompts.append(f"a photo of a {config.class_word}")
        if self.latents is None or (class_images is not None and self.class_latents is None):
            models.vae.to("cpu")
            return False
        self.text = caching.encode_prompts(
            models.tokenizers,
            models.text_encoders,
            prompts,
            self.record.family,
            frozen=not config.train_text_encoder,
        )
        models.vae.to("cpu")
        return True

    def _resume(self) -> None:
        """Weights, optimizer and schedule from a checkpoint; what came after it is forgotten."""
        path = find_checkpoint(self.folder.root, self.config.resume)
        state, optimizer_state = load_checkpoint(path)
        unet, encoders = self._unwrapped()
        load_lora(path, unet, encoders)
        self.optimizer.load_state_dict(optimizer_state)
        self.lr_scheduler.load_state_dict(dict(state.scheduler))
        if state.scaler is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(dict(state.scaler))
        self.step, self.best_step = state.step, state.best_step
        self.best_similarity, self.elapsed_before = state.best_similarity, state.elapsed_s
        if self.accelerator.is_main_process:
            self.folder.rewind(self.step)
        logger.info("resumed from %s at step %d", path, self.step)

    # Helpers

    @contextmanager
    def _threads(self) -> Iterator[None]:
        """Torch CPU threads fitted to the model set while the run computes (then restored)."""
        n = torch_threads(select_model_set(self.record.model_set), self.settings.torch_device())
        before = torch.get_num_threads()
        if n is not None:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _unwrapped(self) -> tuple[torch.nn.Module, list[torch.nn.Module]]:
        unwrap = self.accelerator.unwrap_model
        encoders = [unwrap(e) for e in self.models.text_encoders]
        return unwrap(self.models.unet), encoders if self.config.train_text_encoder else []

    def _elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def metadata(self) -> LoraMetadata:
        c, r = self.config, self.record
        return LoraMetadata(
            trigger=c.trigger,
            class_word=c.class_word,
            family=r.family,
            model_set=r.model_set,
            rank=c.rank,
            alpha=c.alpha,
            text_encoder=c.train_text_encoder,
            resolution=r.resolution,
            steps=self.step,
            best_step=self.best_step,
            best_similarity=self.best_similarity,
            score_encoder=c.score_encoder,
        )

    # One step

    def _loss(self) -> torch.Tensor:
        """The denoising loss of step ``self.step``, from that step's own random draws."""
        from diffusers.training_utils import compute_snr

        config, models, device = self.config, self.models, self.accelerator.device
        accel, dtype = self.accelerator, self.weight_dtype
        g = step_generator(config.seed, _STEP_DRAWS, self.step, accel.process_index)
        photos = torch.tensor(
            sample_indices(
                config.seed,
                self.step,
                accel.process_index,
                accel.num_processes,
                config.batch_size,
                self.n_photos,
            )
        )
        variant = torch.randint(config.augment_variants, photos.shape, generator=g)
        latents = self.latents.sample(photos * config.augment_variants + variant, g)
        prompt_idx = photos
        if self.class_latents is not None:
            classes = torch.randint(len(self.class_latents), photos.shape, generator=g)
            latents = torch.cat([latents, self.class_latents.sample(classes, g)])
            prompt_idx = torch.cat(
                [photos, torch.full_like(photos, len(self.text.token_ids[0]) - 1)]
            )
        scheduler = models.noise_scheduler
        noise = torch.randn(latents.shape, generator=g)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=g
        )
        latents, noise, timesteps = latents.to(device), noise.to(device), timesteps.to(device)
        noisy = scheduler.add_noise(latents, noise, timesteps).to(dtype)
        v_prediction = scheduler.config.prediction_type == "v_prediction"
        target = scheduler.get_velocity(latents, noise, timesteps) if v_prediction else noise
        with accel.autocast():
            if self.text.hidden is not None:
                hidden = self.text.hidden[prompt_idx].to(device, dtype)
                pooled = None if self.text.pooled is None else self.text.pooled[prompt_idx]
            else:
                ids = [ids[prompt_idx] for ids in self.text.token_ids]
                hidden, pooled = caching.encode_tokens(
                    models.text_encoders, ids, self.record.family
                )
            extra = {}
            if pooled is not None:  # the family's UNet takes pooled text and size ids
                time_ids = caching.sdxl_time_ids(self.record.resolution, len(prompt_idx))
                extra["added_cond_kwargs"] = {
                    "text_embeds": pooled.to(device, dtype),
                    "time_ids": time_ids.to(device, dtype),
                }
            pred = models.unet(noisy, timesteps, hidden, **extra).sample
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none")
        per_sample = per_sample.mean(dim=list(range(1, pred.ndim)))
        if config.snr_gamma is not None:  # min-SNR weighting
            snr = compute_snr(scheduler, timesteps)
            weight = torch.clamp(snr, max=config.snr_gamma) / (snr + 1 if v_prediction else snr)
            per_sample = per_sample * weight
        if self.class_latents is None:
            return per_sample.mean()
        instance, prior = per_sample.chunk(2)
        return instance.mean() + config.prior_loss_weight * prior.mean()

    def _update(self) -> float:
        accel, optimizer = self.accelerator, self.optimizer
        loss = self._loss()
        accel.backward(loss)
        if accel.sync_gradients:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            accel.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        self.lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return float(accel.reduce(loss.detach(), reduction="mean"))

    # Checkpoints and validation

    def checkpoint(self) -> None:
        if not self.accelerator.is_main_process:
            return
        unet, encoders = self._unwrapped()
        meta = self.metadata()
        save_checkpoint(
            self.folder.root,
            TrainerState(
                step=self.step,
                scheduler=self.lr_scheduler.state_dict(),
                scaler=None
                if self.accelerator.scaler is None
                else self.accelerator.scaler.state_dict(),
                best_step=self.best_step,
                best_similarity=self.best_similarity,
                elapsed_s=self._elapsed(),
            ),
            self.optimizer.state_dict(),
            lambda folder: save_lora(folder, unet, encoders, meta),
            keep=self.config.checkpoints_total_limit,
        )
        self.folder.keep_best(self.best_step)
        rotate(self.folder.root, self.config.checkpoints_total_limit)

    def validate(self) -> float | None:
        """Generate and score; a new best similarity keeps this step's LoRA as the best.

        Returns ``None`` when ``stop`` abandoned it: nothing is recorded, and a resume from
        this step's checkpoint validates it again.
        """
        unet, encoders = self._unwrapped()
        started = time.monotonic()
        with self.accelerator.autocast():
            result = self.validator.run(unet, self.folder.validation_dir(self.step), self.step)
        if result is None:
            self.abandoned_validation = True
            return None
        self.estimate.validations.append(time.monotonic() - started)
        self.folder.append(
            {
                "kind": "validation",
                "step": self.step,
                "similarity": result.similarity,
                "scores": result.scores,
                "faces": result.faces,
            }
        )
        best = self.best_similarity
        if result.faces_found and (best is None or result.similarity > best):
            self.best_step, self.best_similarity = self.step, result.similarity
            save_lora(self.folder.best_dir(self.step), unet, encoders, self.metadata())
        return result.similarity

    # The loop

    def run(self, on_progress: ProgressCallback | None = None) -> TrainingResult:
        """Train to ``--steps`` or until ``stop`` is set (then checkpoint and return)."""
        with self._threads():
            return self._run(on_progress)

    def _run(self, on_progress: ProgressCallback | None) -> TrainingResult:
        from tqdm.auto import tqdm

        config, accel, stop = self.config, self.accelerator, self.stop
        if not self.cached:  # stopped while caching: nothing trained in this session
            return self._finish(interrupted=True)
        bar = tqdm(
            total=config.steps,
            initial=self.step,
            desc="training",
            unit="step",
            disable=not accel.is_local_main_process,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
        )
        self.models.unet.train()
        if config.train_text_encoder:
            for encoder in self.models.text_encoders:
                encoder.train()
        if accel.is_main_process and self._validation_missing():  # abandoned before the resume
            self.validate()
        while self.step < config.steps and not stop.is_set():
            started = time.monotonic()
            loss = self._update()
            self.estimate.steps.append(time.monotonic() - started)
            lr = self.lr_scheduler.get_last_lr()[0]
            similarity = None
            if accel.is_main_process:
                self.folder.append(
                    {
                        "kind": "train",
                        "step": self.step,
                        "loss": loss,
                        "lr": lr,
                        "elapsed_s": round(self._elapsed(), 3),
                    }
                )
                if self._validates(self.step):
                    similarity = self.validate()
            if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                self.checkpoint()
            accel.wait_for_everyone()
            left = self.estimate.remaining(self.step)
            postfix = {"loss": f"{loss:.4f}"}
            if left is not None:
                postfix["left"] = f"~{duration(left)}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            if len(self.estimate.steps) == 1:
                logger.info(
                    "first step %.1f s: about %s for the %d steps left",
                    self.estimate.steps[0],
                    duration(left or 0.0),
                    config.steps - self.step,
                )
            if on_progress is not None:
                on_progress(
                    TrainingProgress(
                        self.step, config.steps, loss, lr, self._elapsed(), similarity, left
                    )
                )
        bar.close()
        return self._finish(interrupted=self.step < config.steps or self.abandoned_validation)

    def _validates(self, step: int) -> bool:
        every = self.config.validate_every
        return bool(every) and step > 0 and (step % every == 0 or step == self.config.steps)

    def _validation_missing(self) -> bool:
        """This step validates but has no validation record: one was abandoned here."""
        if not self._validates(self.step):
            return False
        done = (r["step"] for r in self.folder.records() if r["kind"] == "validation")
        return self.step not in done

    def _finish(self, interrupted: bool) -> TrainingResult:
        """A checkpoint at the last step; then, unless stopped, the exported, registered LoRA."""
        saved = [s for s, _ in list_checkpoints(self.folder.root)]
        if self.step and (not saved or saved[-1] != self.step):
            self.checkpoint()
        status = "interrupted" if interrupted else "finished"
        weights = profile_lora = None
        report = self.folder.root / "report.json"
        if self.accelerator.is_main_process:  # the other processes only trained
            if not interrupted:
                weights = self._export()
            report, _ = write_report(self._summary(status))
            if weights is not None and self.config.profile:
                profile_lora = _register(self.folder, self.config, self.settings, self.metadata())
        self.accelerator.wait_for_everyone()
        return TrainingResult(
            self.folder.root,
            status,
            self.step,
            weights,
            report,
            self.best_step,
            self.best_similarity,
            profile_lora,
        )

    def _summary(self, status: str) -> TrainingSummary:
        """What the report says about the run so far."""
        folder, config, record = self.folder, self.config, self.record
        losses, similarities = [], []
        for r in folder.records():
            if r["kind"] == "train":
                losses.append((r["step"], r["loss"]))
            elif r["kind"] == "validation":
                similarities.append((r["step"], r["similarity"]))
        warnings = list(record.warnings)
        if config.validate_every and self.best_step is None:
            warnings.append(
                "no validation image showed a detectable face, so the LoRA of the last "
                "step is kept rather than the most similar one"
            )
        return TrainingSummary(
            run_dir=folder.root,
            metadata=self.metadata(),
            params=config.to_json(),
            used=record.used,
            rejected=record.rejected,
            warnings=tuple(warnings),
            losses=tuple(losses),
            similarities=tuple(similarities),
            best_step=self.best_step,
            best_similarity=self.best_similarity,
            started=record.created,
            duration_s=self._elapsed(),
            status=status,
            device=str(self.accelerator.device),
            versions=versions(),
            score_encoder=config.score_encoder,
            score_threshold=self.validator.threshold,
        )

    def _export(self) -> Path:
        """The run's LoRA at its root: the best by identity similarity, else the last step's."""
        root, meta = self.folder.root, self.metadata()
        if self.best_step is not None:
            best = self.folder.best_dir(self.best_step)
            for name in (WEIGHTS_NAME, METADATA_NAME):
                atomic_write_bytes(root / name, (best / name).read_bytes())
            weights = root / WEIGHTS_NAME
        else:
            unet, encoders = self._unwrapped()
            weights = save_lora(root, unet, encoders, meta)
        if self.config.export_kohya:
            export_kohya(
                weights,
                root / f"{slug(self.config.trigger)}_kohya.safetensors",
                meta,
                base_model=base_model_name(select_model_set(self.record.model_set)),
                num_train_images=len(self.record.used),
            )
        return weights


def train(
    config: TrainConfig,
    settings: Settings,
    *,
    given: Mapping[str, Any] | None = None,
    stop: threading.Event | None = None,
    on_progress: ProgressCallback | None = None,
) -> TrainingResult:
    """Run (or resume) one training run; returns when it finishes or ``stop`` is set.

    ``given`` holds the flags the user set on purpose; a resumed run checks them against its own.
    """
    return Trainer(config, settings, given=given, stop=stop).run(on_progress)


def _register(folder: RunFolder, config: TrainConfig, settings: Settings, meta) -> str:
    from studio.profiles.library import ProfileLibrary

    with ProfileLibrary.from_settings(settings) as library:
        lora = library.add_lora(config.profile, folder.root, meta, lora_name=config.lora_name)
    logger.info("registered LoRA %r in profile %r", lora.name, config.profile)
    return lora.name
