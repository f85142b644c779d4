"""A training run's folder: its settings, the crops it trains on, and its JSONL log.

Layout::

    run.json                     settings, model set, photos used and left out, the reference
    crops/NNN.png                the head crops, exactly what the run trains on
    log.jsonl                    one record per step ({"kind": "train"}) and per validation
    checkpoints/checkpoint-N/    see studio.training.checkpoint
    validation/step-N/           the validation images
    best-N/                      the LoRA with the best identity similarity so far
    pytorch_lora_weights.safetensors, lora.json, report.*, curves.svg   the result

A resumed run reads everything from here, so it does not depend on the user's photos still
being where they were.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from studio.errors import ConfigError
from studio.faces.encoders import IdentityEmbedding
from studio.fileio import atomic_write, atomic_write_text
from studio.profiles.types import PhotoOutcome
from studio.training.config import TrainConfig
from studio.training.types import PhotoSet

RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"
CROPS_DIR = "crops"
VALIDATION_DIR = "validation"
BEST_PREFIX = "best-"
RUN_SCHEMA = 1
_SLUG = re.compile(r"[^A-Za-z0-9_-]+")


def slug(text: str) -> str:
    """A safe folder name for a profile or photo folder name."""
    return _SLUG.sub("-", text).strip("-")[:64] or "run"


@dataclass(frozen=True, eq=False)
class RunRecord:
    """What ``run.json`` holds."""

    config: TrainConfig
    model_set: str
    family: str
    resolution: int
    created: datetime
    used: tuple[str, ...]
    tags: tuple[tuple[str, ...], ...]
    rejected: tuple[PhotoOutcome, ...]
    warnings: tuple[str, ...]
    reference: IdentityEmbedding


class RunFolder:
    """Reads and writes one run's files."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def log(self) -> Path:
        return self.root / LOG_FILE

    def exists(self) -> bool:
        return (self.root / RUN_FILE).is_file()

    def check_new(self) -> None:
        """Refuse to start a new run over an existing one or over unrelated files."""
        if self.exists():
            raise ConfigError(
                f"{self.root} already holds a training run; continue it with --resume latest, "
                "or start a new one with another --out"
            )
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--out {self.root} is a file; give a folder for the run")
        if self.root.exists() and any(self.root.iterdir()):
            raise ConfigError(
                f"--out {self.root} is a folder with other files in it; choose an empty or new "
                "folder for the run"
            )

    def start(self, record: RunRecord, photos: PhotoSet) -> None:
        """Write the crops and ``run.json`` (the latter last: it marks a usable run)."""
        crops = self.root / CROPS_DIR
        crops.mkdir(parents=True, exist_ok=True)
        for index, photo in enumerate(photos.used):
            atomic_write(
                crops / f"{index:03d}.png",
                lambda fh, rgb=photo.crop: Image.fromarray(rgb).save(fh, format="PNG"),
            )
        doc = {
            "schema": RUN_SCHEMA,
            "config": record.config.to_json(),
            "model_set": record.model_set,
            "family": record.family,
            "resolution": record.resolution,
            "created": record.created.isoformat(),
            "photos": [
                {"file": file, "crop": f"{CROPS_DIR}/{i:03d}.png", "tags": list(tags)}
                for i, (file, tags) in enumerate(zip(record.used, record.tags, strict=True))
            ],
            "rejected": [
                {
                    "file": r.file,
                    "status": r.status,
                    "reasons": list(r.reasons),
                    "similarity": r.similarity,
                }
                for r in record.rejected
            ],
            "warnings": list(record.warnings),
            "reference": {
                "encoder": record.reference.encoder,
                "vector": [float(v) for v in record.reference.vector],
            },
        }
        atomic_write_text(self.root / RUN_FILE, json.dumps(doc, indent=1))

    def read(self) -> RunRecord:
        try:
            doc = json.loads((self.root / RUN_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"run folder {self.root} cannot be read ({exc})") from exc
        if doc.get("schema") != RUN_SCHEMA:
            raise ConfigError(f"run folder {self.root}: unknown schema {doc.get('schema')!r}")
        return RunRecord(
            config=TrainConfig.from_json(doc["config"]),
            model_set=doc["model_set"],
            family=doc["family"],
            resolution=doc["resolution"],
            created=datetime.fromisoformat(doc["created"]),
            used=tuple(p["file"] for p in doc["photos"]),
            tags=tuple(tuple(p["tags"]) for p in doc["photos"]),
            rejected=tuple(
                PhotoOutcome(r["file"], r["status"], tuple(r["reasons"]), r["similarity"])
                for r in doc["rejected"]
            ),
            warnings=tuple(doc["warnings"]),
            reference=IdentityEmbedding(doc["reference"]["encoder"], doc["reference"]["vector"]),
        )

    def crops(self) -> list[np.ndarray]:
        paths = sorted((self.root / CROPS_DIR).glob("*.png"))
        return [np.asarray(Image.open(p).convert("RGB")) for p in paths]

    # The log

    def append(self, record: Mapping[str, Any]) -> None:
        with self.log.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()

    def records(self) -> Iterator[dict[str, Any]]:
        if not self.log.exists():
            return
        for line in self.log.read_text(encoding="utf-8").splitlines():
            try:
                yield json.loads(line)
            except ValueError:  # a line cut short by a kill
                continue

    def rewind(self, step: int) -> None:
        """Forget everything after ``step``: log records, validation images, best LoRAs."""
        kept = [r for r in self.records() if r["step"] <= step]
        atomic_write_text(self.log, "".join(json.dumps(r) + "\n" for r in kept))
        for folder in self.root.glob(f"{VALIDATION_DIR}/step-*"):
            if int(folder.name.removeprefix("step-")) > step:
                shutil.rmtree(folder, ignore_errors=True)
        for folder in self.root.glob(f"{BEST_PREFIX}*"):
            if int(folder.name.removeprefix(BEST_PREFIX)) > step:
                shutil.rmtree(folder, ignore_errors=True)

    # Best LoRA

    def best_dir(self, step: int) -> Path:
        return self.root / f"{BEST_PREFIX}{step:06d}"

    def keep_best(self, step: int | None) -> None:
        """Remove best-LoRA folders other than ``step``'s (called once a checkpoint records it)."""
        for folder in self.root.glob(f"{BEST_PREFIX}*"):
            if step is None or folder != self.best_dir(step):
                shutil.rmtree(folder, ignore_errors=True)

    def validation_dir(self, step: int) -> Path:
        return self.root / VALIDATION_DIR / f"step-{step:06d}"
