"""One typed settings object, from flags, environment, an optional config file and defaults.

Precedence, highest first: command-line flags, environment variables (``STUDIO_DATA_DIR``,
``STUDIO_MODELS_DIR``, ``STUDIO_OUTPUT_DIR``, ``STUDIO_DEVICE``, ``STUDIO_DTYPE``,
``STUDIO_FACES_DEVICE``, ``STUDIO_OFFLOAD``, ``STUDIO_COMPILE``, ``STUDIO_OFFLINE`` /
``HF_HUB_OFFLINE``), the TOML config file
(``STUDIO_CONFIG`` or ``<config dir>/config.toml``), then defaults under the user's data and
cache directories.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from studio.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

APP_NAME = "portrait-studio"
DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = ("auto", "float32", "float16", "bfloat16")
#: Speed and memory choices, applied by :mod:`studio.speed`.
OFFLOAD_MODES = ("none", "model", "group")
VAE_TILING_MODES = ("auto", "on", "off")
ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
_TRUE = {"1", "true", "yes", "on"}


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def default_config_path() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / APP_NAME / "config.toml"


@dataclass(frozen=True)
class Settings:
    """Where the studio keeps its files and what hardware it runs on.

    ``faces_device`` is where the ONNX face models run; ``auto`` follows ``device``, ``cpu``
    keeps them off the GPU. Speed and memory (see :mod:`studio.speed`): ``offload`` (``none``,
    ``model``: one model on the GPU at a time, ``group``: blocks streamed from the CPU),
    ``compile`` (regional ``torch.compile`` of the denoiser with ``compile_backend``),
    ``vae_tiling`` (``auto``: above 1024x1024 pixels) and ``attention_backend`` (PyTorch's
    scaled-dot-product kernel; ``auto`` lets PyTorch pick).
    """

    data_dir: Path
    models_dir: Path
    output_dir: Path
    device: str = "auto"
    dtype: str = "auto"
    offline: bool = False
    weights: Mapping[str, Path] = field(default_factory=dict)
    faces_device: str = "auto"
    offload: str = "none"
    compile: bool = False
    compile_backend: str = "inductor"
    vae_tiling: str = "auto"
    attention_backend: str = "auto"

    def __post_init__(self) -> None:
        for key in ("device", "faces_device"):
            value = getattr(self, key)
            if value not in DEVICES and not value.startswith("cuda:"):
                raise ConfigError(
                    f"{key} {value!r} is not supported; use one of {', '.join(DEVICES)} or cuda:N"
                )
        if self.dtype not in DTYPES:
            raise ConfigError(
                f"dtype {self.dtype!r} is not supported; use one of {', '.join(DTYPES)}"
            )
        for key, allowed in (
            ("offload", OFFLOAD_MODES),
            ("vae_tiling", VAE_TILING_MODES),
            ("attention_backend", ATTENTION_BACKENDS),
        ):
            if getattr(self, key) not in allowed:
                raise ConfigError(
                    f"{key} {getattr(self, key)!r} is not supported; use one of "
                    f"{', '.join(allowed)}"
                )

    def torch_device(self) -> str:
        """The concrete device: ``auto`` picks cuda, then mps, then cpu."""
        import torch

        if self.device != "auto":
            return self.device
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"

    def torch_dtype(self):
        """The concrete dtype: ``auto`` is bfloat16 on a CUDA GPU that supports it, else
        float16 on a GPU and float32 on the CPU."""
        import torch

        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        device = self.torch_device()
        if device == "cpu":
            return torch.float32
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    @property
    def profiles_dir(self) -> Path:
        return self.data_dir / "profiles"


def _read_config(path: Path, explicit: bool) -> dict[str, Any]:
    if not path.exists():
        if explicit:
            raise ConfigError(f"config file {path} does not exist; fix STUDIO_CONFIG or --config")
        return {}
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
    known = sorted(f.name for f in fields(Settings))
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return data


def load_settings(
    *,
    config: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    **flags: Any,
) -> Settings:
    """Build settings; ``flags`` whose value is ``None`` do not override anything."""
    env = os.environ if env is None else env
    explicit = config is not None or "STUDIO_CONFIG" in env
    config_path = Path(config or env.get("STUDIO_CONFIG") or default_config_path()).expanduser()
    values: dict[str, Any] = _read_config(config_path, explicit)

    for key, var in (
        ("data_dir", "STUDIO_DATA_DIR"),
        ("models_dir", "STUDIO_MODELS_DIR"),
        ("output_dir", "STUDIO_OUTPUT_DIR"),
        ("device", "STUDIO_DEVICE"),
        ("dtype", "STUDIO_DTYPE"),
        ("faces_device", "STUDIO_FACES_DEVICE"),
        ("offload", "STUDIO_OFFLOAD"),
    ):
        if env.get(var):
            values[key] = env[var]
    if env.get("STUDIO_COMPILE"):
        values["compile"] = env["STUDIO_COMPILE"].lower() in _TRUE
    if any(env.get(var, "").lower() in _TRUE for var in ("STUDIO_OFFLINE", "HF_HUB_OFFLINE")):
        values["offline"] = True
    for key, value in flags.items():
        if value is None:
            continue
        if key == "weights":
            value = {**dict(values.get("weights", {})), **value}
        values[key] = value

    data_home = _xdg("XDG_DATA_HOME", ".local/share") / APP_NAME
    cache_home = _xdg("XDG_CACHE_HOME", ".cache") / APP_NAME
    weights = {str(k): Path(v).expanduser() for k, v in dict(values.get("weights", {})).items()}
    return Settings(
        data_dir=Path(values.get("data_dir", data_home)).expanduser(),
        models_dir=Path(values.get("models_dir", cache_home / "models")).expanduser(),
        output_dir=Path(values.get("output_dir", data_home / "outputs")).expanduser(),
        device=str(values.get("device", "auto")),
        dtype=str(values.get("dtype", "auto")),
        offline=bool(values.get("offline", False)),
        weights=weights,
        faces_device=str(values.get("faces_device", "auto")),
        offload=str(values.get("offload", "none")),
        compile=_flag("compile", values.get("compile", False)),
        compile_backend=str(values.get("compile_backend", "inductor")),
        vae_tiling=str(values.get("vae_tiling", "auto")),
        attention_backend=str(values.get("attention_backend", "auto")),
    )


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value
