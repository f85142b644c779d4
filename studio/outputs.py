"""Save generated images: PNG with an A1111-style ``parameters`` text chunk plus a JSON sidecar."""

from __future__ import annotations

import io
import json
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from studio.fileio import atomic_write_bytes, atomic_write_text


def versions() -> dict[str, str]:
    """Versions of the studio and the libraries that shape its output."""
    found = {"python": platform.python_version()}
    for dist in ("portrait-studio", "diffusers", "transformers", "torch"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "not installed"
    return found


@dataclass(frozen=True)
class GenerationRecord:
    """What produced one image; written into the PNG and its sidecar."""

    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    sampler: str
    model_set: str

    def a1111_parameters(self, versions_: Mapping[str, str]) -> str:
        """The ``parameters`` text other tools (A1111, ComfyUI readers) parse."""
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        fields = {
            "Steps": self.steps,
            "Sampler": self.sampler,
            "CFG scale": self.guidance,
            "Seed": self.seed,
            "Size": f"{self.width}x{self.height}",
            "Model": self.model_set,
            "Version": f"portrait-studio {versions_['portrait-studio']}",
            "Libraries": f"diffusers {versions_['diffusers']} torch {versions_['torch']}",
        }
        lines.append(", ".join(f"{k}: {v}" for k, v in fields.items()))
        return "\n".join(lines)


def _free_name(out_dir: Path, stem: str) -> Path:
    path, n = out_dir / f"{stem}.png", 1
    while path.exists() or path.with_suffix(".json").exists():
        path, n = out_dir / f"{stem}-{n}.png", n + 1
    return path


def save_image(
    image: Image.Image,
    record: GenerationRecord,
    out_dir: Path,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``<stamp>-<seed>.png`` and its ``.json`` atomically; return the PNG path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    created = datetime.now(timezone.utc)
    path = _free_name(out_dir, f"{created:%Y%m%d-%H%M%S}-{record.seed}")
    vers = versions()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", record.a1111_parameters(vers))
    info.add_text("Software", f"portrait-studio {vers['portrait-studio']}")
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    sidecar = {
        **asdict(record),
        "created": created.isoformat(),
        "image": path.name,
        "versions": vers,
        **(extra or {}),
    }
    atomic_write_bytes(path, buf.getvalue())
    atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=2) + "\n")
    return path
