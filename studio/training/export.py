"""LoRA files: the diffusers layout (for pipelines and for resuming) and a kohya-ss export.

A trained LoRA is a folder holding ``pytorch_lora_weights.safetensors`` and ``lora.json``. The
weights use the layout ``StableDiffusionPipeline.save_lora_weights`` writes (``unet.*``,
``text_encoder.*``, ``text_encoder_2.*`` keys named like ``convert_state_dict_to_diffusers``
names them), so ``pipe.load_lora_weights(folder)`` reads it; the header carries the peft configs
under ``lora_adapter_metadata`` (as diffusers' training scripts write them), so an alpha other
than the rank loads with the right scale. ``lora.json`` is :class:`LoraMetadata` as JSON, with a
``format`` and a ``schema`` number.

The kohya-ss file (A1111, ComfyUI, sd-scripts) names each layer ``lora_unet_<path>`` /
``lora_te_<path>`` (SD 1.x) or ``lora_te1_`` / ``lora_te2_`` (SDXL), dots turned into
underscores, with ``.lora_down.weight``, ``.lora_up.weight`` and a 0-d ``.alpha``. UNet paths
keep diffusers' block names for both families (``down_blocks_1_attentions_0_…``): it is what
kohya writes for SD 1.x, and diffusers, ComfyUI and A1111 all map it for SDXL, where kohya itself
writes the original model's ``input_blocks_…``, whose numbering depends on the UNet's config.
Text encoder paths always start ``text_model_``, as kohya writes them. Its header has sd-scripts'
``ss_*`` training facts and the two hashes sd-scripts precomputes for WebUIs' LoRA indexes
(``sshs_model_hash``, ``sshs_legacy_hash``; see :func:`sshs_hashes`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from studio.errors import StudioError
from studio.families import BASE_FAMILIES
from studio.fileio import atomic_write_bytes, atomic_write_text
from studio.models.catalog import ModelSet
from studio.training.types import LoraMetadata

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
METADATA_NAME = "lora.json"
FORMAT = "diffusers"
SCHEMA = 1
"""Version of ``lora.json``; bump it when its meaning changes."""

ADAPTER_NAME = "default"
ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base's header key
STUDIO_METADATA_KEY = "studio.lora"

_DIFFUSERS_KEY = re.compile(
    r"(?P<part>unet|text_encoder|text_encoder_2)\.(?P<module>.+)"
    r"\.(?:lora|lora_linear_layer)\.(?P<role>down|up)\.weight"
)


class LoraFileError(StudioError):
    """A LoRA file or its ``lora.json`` is missing, unreadable, or does not fit the model."""


def lora_state_dict(
    unet: torch.nn.Module,
    text_encoders: Sequence[torch.nn.Module] = (),
    *,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """The adapters' weights in diffusers' LoRA file layout: copies, contiguous, on the CPU."""
    return {
        f"{part}.{name}": tensor.detach().to(device="cpu", dtype=dtype, copy=True).contiguous()
        for part, module in _parts(unet, text_encoders)
        for name, (_, tensor) in _weights(module).items()
    }


def save_lora(
    out_dir: Path,
    unet: torch.nn.Module,
    text_encoders: Sequence[torch.nn.Module],
    metadata: LoraMetadata,
) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` and ``lora.json`` into ``out_dir``.

    Each file is written atomically; returns the weights' path.
    """
    adapter_configs = {
        f"{part}.{key}": value
        for part, module in _parts(unet, text_encoders)
        for key, value in _config(module).items()
    }
    header = {
        "format": "pt",
        ADAPTER_METADATA_KEY: json.dumps(adapter_configs, sort_keys=True),
        STUDIO_METADATA_KEY: json.dumps(asdict(metadata)),
        "modelspec.trigger_phrase": metadata.instance_prompt,
    }
    weights = atomic_write_bytes(
        Path(out_dir) / WEIGHTS_NAME, save(lora_state_dict(unet, text_encoders), header)
    )
    record = {"format": FORMAT, "schema": SCHEMA, "weights": WEIGHTS_NAME, **asdict(metadata)}
    atomic_write_text(Path(out_dir) / METADATA_NAME, json.dumps(record, indent=2) + "\n")
    return weights


def load_lora(
    path_or_dir: Path,
    unet: torch.nn.Module,
    text_encoders: Sequence[torch.nn.Module] = (),
) -> LoraMetadata | None:
    """Load weights that :func:`save_lora` wrote into models that already have the adapter.

    Every key and shape must match: a missing, surplus or differently shaped weight is an error
    that names it. Returns the folder's ``lora.json`` metadata, or ``None`` when there is none.
    """
    from peft.utils import set_peft_model_state_dict

    path = Path(path_or_dir)
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    found = _read(weights)
    plan = []
    for part, module in _parts(unet, text_encoders):
        expected = _weights(module)
        problems = []
        for name, (_, tensor) in expected.items():
            key = f"{part}.{name}"
            if key not in found:
                problems.append(f"{key} is missing")
            elif found[key].shape != tensor.shape:
                problems.append(
                    f"{key}: expected shape {tuple(tensor.shape)}, found {tuple(found[key].shape)}"
                )
        if problems:
            raise LoraFileError(_mismatch(weights, problems))
        plan.append((module, {peft: found.pop(f"{part}.{n}") for n, (peft, _) in expected.items()}))
    if found:
        raise LoraFileError(_mismatch(weights, [f"{k} is not in the model" for k in found]))
    for module, state in plan:
        result = set_peft_model_state_dict(module, state, adapter_name=ADAPTER_NAME)
        if result.unexpected_keys:  # validated above; a change in peft's naming would land here
            raise LoraFileError(
                _mismatch(weights, [f"{k} was not loaded" for k in result.unexpected_keys])
            )
    folder = weights.parent
    return read_metadata(folder) if (folder / METADATA_NAME).is_file() else None


def read_metadata(folder: Path) -> LoraMetadata:
    """The :class:`LoraMetadata` in ``folder/lora.json``."""
    path = Path(folder) / METADATA_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LoraFileError(
            f"{path} not found; a LoRA folder needs the lora.json that training writes"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoraFileError(f"{path} cannot be read ({exc}); train or export it again") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise LoraFileError(f"{path} is not a Portrait Studio lora.json (no format {FORMAT!r})")
    if not isinstance(data.get("schema"), int) or data["schema"] > SCHEMA:
        raise LoraFileError(
            f"{path} has schema {data.get('schema')!r}; this Portrait Studio reads schema "
            f"{SCHEMA} or older: upgrade Portrait Studio"
        )
    names = {f.name for f in fields(LoraMetadata)}
    try:
        return LoraMetadata(**{k: v for k, v in data.items() if k in names})
    except TypeError as exc:
        raise LoraFileError(f"{path} lacks a field ({exc}); train or export it again") from exc


def base_model_name(model_set: ModelSet) -> str:
    """The base model as sd-scripts' ``ss_sd_model_name`` names it: a hub repository's id, a
    local folder's name, or (the tiny sets) the builder's."""
    base = model_set.component("base")
    if base.source == "local":
        return Path(base.path).name
    return base.repo or base.builder or base.name


def export_kohya(
    weights: Path,
    out_file: Path,
    metadata: LoraMetadata,
    *,
    base_model: str,
    num_train_images: int,
) -> Path:
    """Write the diffusers-layout ``weights`` as a kohya-ss LoRA file; returns ``out_file``.

    ``base_model`` (see :func:`base_model_name`) and ``num_train_images`` go into the header as
    ``ss_sd_model_name`` and ``ss_num_train_images``.
    """
    if metadata.family not in BASE_FAMILIES:
        raise LoraFileError(
            f"no kohya export for model family {metadata.family!r}; "
            f"known: {', '.join(BASE_FAMILIES)}"
        )
    state = _read(Path(weights))
    family = BASE_FAMILIES[metadata.family]
    prefixes = {"unet": "lora_unet_", **family.kohya_text_encoder_prefixes}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = _DIFFUSERS_KEY.fullmatch(key)
        if match is None or match["part"] not in prefixes:
            raise LoraFileError(
                f"{weights}: {key} has no kohya-ss name for a {metadata.family} LoRA"
            )
        module = match["module"]
        if match["part"] != "unet" and not module.startswith("text_model."):
            module = f"text_model.{module}"
        name = prefixes[match["part"]] + module.replace(".", "_")
        if match["role"] == "down" and tensor.shape[0] != metadata.rank:
            raise LoraFileError(
                f"{weights}: {key} has rank {tensor.shape[0]}, but its metadata says "
                f"{metadata.rank}"
            )
        out[f"{name}.lora_{match['role']}.weight"] = tensor.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(metadata.alpha))
    out_file = Path(out_file)
    header = _kohya_header(out_file.stem, metadata, base_model, num_train_images)
    model_hash, legacy_hash = sshs_hashes(out, header)
    header.update(sshs_model_hash=model_hash, sshs_legacy_hash=legacy_hash)
    return atomic_write_bytes(out_file, save(out, header))


def sshs_hashes(tensors: dict[str, torch.Tensor], header: dict[str, str]) -> tuple[str, str]:
    """sd-scripts' ``(sshs_model_hash, sshs_legacy_hash)`` of a LoRA file about to be written.

    Both hash the file as it would be with only the ``ss_*`` keys in its header, so that editing
    other metadata leaves them valid: the model hash is the SHA-256 of everything after the
    header (the tensor bytes), the legacy hash the first 8 hex digits of the SHA-256 of the
    64 KiB at offset 1 MiB (``train_util.precalculate_safetensors_hashes``).
    """
    data = save(tensors, {k: v for k, v in header.items() if k.startswith("ss_")})
    tensors_at = 8 + int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[tensors_at:]).hexdigest()
    legacy_hash = hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    return model_hash, legacy_hash


def _kohya_header(
    title: str, metadata: LoraMetadata, base_model: str, num_train_images: int
) -> dict[str, str]:
    """sd-scripts' ``ss_*`` keys and the SAI model spec's ``modelspec.*`` keys."""
    resolution = metadata.resolution
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(metadata.rank),
        "ss_network_alpha": f"{metadata.alpha:g}",
        "ss_network_train_unet_only": str(not metadata.text_encoder),
        "ss_base_model_version": BASE_FAMILIES[metadata.family].kohya_base_version,
        "ss_v2": "False",
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_max_train_steps": str(metadata.steps),
        "ss_output_name": title,
        "ss_sd_model_name": base_model,
        "ss_num_train_images": str(num_train_images),
        "ss_clip_skip": "None",  # sd-scripts writes str(args.clip_skip); the studio never skips
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": BASE_FAMILIES[metadata.family].modelspec_architecture,
        "modelspec.implementation": "diffusers",
        "modelspec.title": title,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "modelspec.trigger_phrase": metadata.instance_prompt,
        "modelspec.usage_hint": f"Put '{metadata.instance_prompt}' in the prompt",
        STUDIO_METADATA_KEY: json.dumps(asdict(metadata)),
    }


def _parts(
    unet: torch.nn.Module, text_encoders: Sequence[torch.nn.Module]
) -> Iterator[tuple[str, torch.nn.Module]]:
    """``(file prefix, module)`` pairs: ``unet``, ``text_encoder``, ``text_encoder_2``."""
    if len(text_encoders) > 2:
        raise ValueError(f"at most two text encoders have LoRA files, got {len(text_encoders)}")
    yield "unet", unet
    for i, encoder in enumerate(text_encoders):
        yield ("text_encoder" if i == 0 else f"text_encoder_{i + 1}"), encoder


def _config(module: torch.nn.Module) -> dict[str, Any]:
    """The adapter's peft config as JSON-ready values (as diffusers' training scripts store it)."""
    configs = getattr(module, "peft_config", None) or {}
    if ADAPTER_NAME not in configs:
        raise ValueError(f"{type(module).__name__} has no LoRA adapter {ADAPTER_NAME!r}")
    return {
        key: sorted(value) if isinstance(value, set) else value
        for key, value in configs[ADAPTER_NAME].to_dict().items()
    }


def _weights(module: torch.nn.Module) -> dict[str, tuple[str, torch.Tensor]]:
    """The adapter's weights by diffusers file name: ``(peft name, tensor)``, not copied."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    _config(module)  # fails clearly when the module has no adapter
    state = get_peft_model_state_dict(module, adapter_name=ADAPTER_NAME)
    names = convert_state_dict_to_diffusers({name: name for name in state})
    return {name: (peft, state[peft]) for name, peft in names.items()}


def _read(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, or a :class:`LoraFileError` that says what is wrong."""
    if not path.is_file():
        raise LoraFileError(f"LoRA weights {path} not found; check the path or train it again")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise LoraFileError(
            f"LoRA weights {path} cannot be read ({exc}); the file is damaged: "
            "train or export it again"
        ) from exc


def _mismatch(path: Path, problems: Sequence[str], shown: int = 5) -> str:
    more = f"; and {len(problems) - shown} more" if len(problems) > shown else ""
    return (
        f"LoRA weights {path} do not fit this model (another rank, family or set of layers): "
        + "; ".join(problems[:shown])
        + more
    )
