"""Save generated images: watermarked PNG with A1111 ``parameters`` and provenance, plus a sidecar.

Every PNG carries the invisible mark of :mod:`studio.watermark` and provenance text chunks
(:func:`provenance`) that say it is AI-generated, by which software and model set, with the IPTC
digital source type; the same provenance sits in an XMP packet and in the sidecar JSON.
"""

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
from xml.sax.saxutils import quoteattr

from PIL import Image, PngImagePlugin

from studio import __version__, watermark
from studio.fileio import atomic_write_bytes, atomic_write_text

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
"""IPTC digital source type of images made by a trained model."""

PROVENANCE_KEYS = ("ai_generated", "software", "model_set", "digital_source_type", "watermark")
"""PNG text chunks (and sidecar ``provenance`` keys) that :func:`read_provenance` returns."""


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


def provenance(model_set: str, marked: bool) -> dict[str, str]:
    """Provenance of one saved image; ``marked`` says whether the invisible mark is in it."""
    return {
        "ai_generated": "true",
        "software": f"Portrait Studio {__version__}",
        "model_set": model_set,
        "digital_source_type": DIGITAL_SOURCE_TYPE,
        "watermark": watermark.WATERMARK_ID
        if marked
        else f"none (image under {watermark.MIN_SIDE} px)",
    }


def read_provenance(path: str | Path) -> dict[str, str]:
    """The provenance text chunks of an image file; empty if it has none."""
    with Image.open(path) as image:
        return {k: image.info[k] for k in PROVENANCE_KEYS if isinstance(image.info.get(k), str)}


def _xmp(prov: Mapping[str, str]) -> str:
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF'
        ' xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about=""'
        ' xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
        ' xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
        f" Iptc4xmpExt:DigitalSourceType={quoteattr(prov['digital_source_type'])}"
        f" xmp:CreatorTool={quoteattr(prov['software'])}/>"
        "</rdf:RDF></x:xmpmeta>"
    )


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
    masks: Mapping[str, Image.Image] | None = None,
) -> Path:
    """Write the watermarked ``<stamp>-<seed>.png`` and its ``.json`` atomically; return the PNG.

    ``masks`` (named images) are written beside it as ``<stamp>-<seed>.<name>.png`` and listed
    in the sidecar under ``masks``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    created = datetime.now(timezone.utc)
    path = _free_name(out_dir, f"{created:%Y%m%d-%H%M%S}-{record.seed}")
    vers = versions()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", record.a1111_parameters(vers))
    info.add_text("Software", f"portrait-studio {vers['portrait-studio']}")
    prov = provenance(record.model_set, min(image.size) >= watermark.MIN_SIDE)
    for key, value in prov.items():
        info.add_text(key, value)
    info.add_itxt("XML:com.adobe.xmp", _xmp(prov))
    buf = io.BytesIO()
    watermark.embed(image).save(buf, format="PNG", pnginfo=info)
    sidecar = {
        **asdict(record),
        "created": created.isoformat(),
        "image": path.name,
        "versions": vers,
        "provenance": prov,
        **(extra or {}),
    }
    if masks:
        sidecar["masks"] = {name: f"{path.stem}.{name}.png" for name in masks}
        for name, mask in masks.items():
            mask_buf = io.BytesIO()
            mask.save(mask_buf, format="PNG")
            atomic_write_bytes(path.with_name(sidecar["masks"][name]), mask_buf.getvalue())
    atomic_write_bytes(path, buf.getvalue())
    atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=2) + "\n")
    return path
