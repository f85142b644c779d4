"""Style presets: one JSON file per look in ``assets/styles`` (and the user's ``styles`` folder).

A preset is a prompt template with a ``{subject}`` placeholder for the person (a LoRA's
trigger and class word such as ``ohwx person``, or plain ``a person``), a negative prompt,
sampler settings, sizes per model family, a suggested identity-adapter strength and
optionally a style LoRA and a pose reference. Adding a preset is adding a file; a user file
with the id of a shipped one replaces it. ``assets/styles/README.md`` documents the format.
"""

from __future__ import annotations

import difflib
import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from studio.errors import ConfigError
from studio.models.catalog import FAMILIES
from studio.shipped import asset_path

if TYPE_CHECKING:
    from studio.settings import Settings

SCHEMA = 1
REQUIRED = (
    "schema",
    "title",
    "prompt",
    "negative_prompt",
    "steps",
    "guidance",
    "width",
    "height",
    "identity_scale",
)
OPTIONAL = ("description", "sizes", "lora", "pose", "tags")
LORA_KEYS = ("repo", "path", "weight_name", "scale")
STEPS = (1, 150)
GUIDANCE = (0.0, 30.0)
SIZE = (64, 2048)
IDENTITY_SCALE = (0.0, 1.5)
LORA_SCALE = (0.0, 2.0)
POSES_DIR = "poses"
_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


@dataclass(frozen=True)
class StyleLora:
    """A style LoRA: a hub repository or a local file, and the strength to apply it at."""

    repo: str | None = None
    path: Path | None = None
    weight_name: str | None = None
    scale: float = 1.0

    @property
    def origin(self) -> str:
        """Where the weights come from, e.g. ``owner/repo: style.safetensors``."""
        if self.path is not None:
            return str(self.path)
        return f"{self.repo}: {self.weight_name}" if self.weight_name else str(self.repo)


@dataclass(frozen=True)
class StylePreset:
    """One look: prompt template, negative prompt, sampler settings and suggested strengths."""

    id: str
    title: str
    description: str
    prompt: str
    negative_prompt: str
    steps: int
    guidance: float
    width: int
    height: int
    identity_scale: float
    sizes: Mapping[str, tuple[int, int]] = field(default_factory=lambda: MappingProxyType({}))
    lora: StyleLora | None = None
    pose: Path | None = None
    tags: tuple[str, ...] = ()
    source: Path | None = None

    def size_for(self, family: str) -> tuple[int, int]:
        """``(width, height)`` for a model family: its ``sizes`` entry, else width × height."""
        if family not in FAMILIES:
            raise ConfigError(f"unknown model family {family!r}; use one of {', '.join(FAMILIES)}")
        return self.sizes.get(family, (self.width, self.height))

    def render(self, subject: str, extra: str = "") -> str:
        """The prompt with ``{subject}`` filled in and the user's ``extra`` text appended."""
        subject = " ".join(subject.split())
        if not subject:
            raise ValueError("the subject of a style prompt must not be empty")
        text = self.prompt.format(subject=subject)
        extra = " ".join(extra.split()).strip(", ")
        return f"{text}, {extra}" if extra else text


def user_styles_dir(settings: Settings) -> Path:
    """The folder of the user's own presets: ``<data_dir>/styles``."""
    return settings.data_dir / "styles"


def _number(where: str, key: str, value: Any, bounds: tuple[float, float], integer: bool) -> Any:
    low, high = bounds
    kind = "an integer" if integer else "a number"
    ok_type = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or not low <= value <= high:
        raise ConfigError(f"{where}: {key!r} must be {kind} from {low} to {high}, got {value!r}")
    return int(value) if integer else float(value)


def _side(where: str, key: str, value: Any) -> int:
    side = _number(where, key, value, SIZE, integer=True)
    if side % 8:
        raise ConfigError(f"{where}: {key!r} must be a multiple of 8, got {side}")
    return side


def _text(where: str, key: str, value: Any, *, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        need = "a string" if empty else "a non-empty string"
        raise ConfigError(f"{where}: {key!r} must be {need}, got {value!r}")
    return value.strip()


def _template(where: str, value: Any) -> str:
    text = _text(where, "prompt", value, empty=False)
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ConfigError(
            f"{where}: 'prompt' has a stray brace ({exc}); write a literal brace as {{{{ or }}}}"
        ) from None
    found = 0
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name != "subject" or spec or conversion:
            shown = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise ConfigError(
                f"{where}: 'prompt' may only use the placeholder {{subject}}, found {{{shown}}}"
            )
        found += 1
    if not found:
        raise ConfigError(
            f"{where}: 'prompt' must contain {{subject}} where the person goes, "
            f"e.g. 'portrait photo of {{subject}}, ...'"
        )
    return text


def _sizes(where: str, value: Any) -> Mapping[str, tuple[int, int]]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: 'sizes' must be an object like {{\"sdxl\": [896, 1152]}}")
    sizes: dict[str, tuple[int, int]] = {}
    for family, pair in value.items():
        key = f"sizes.{family}"
        if family not in FAMILIES:
            raise ConfigError(f"{where}: {key!r}: family must be one of {', '.join(FAMILIES)}")
        if not isinstance(pair, list) or len(pair) != 2:
            raise ConfigError(f"{where}: {key!r} must be [width, height], got {pair!r}")
        sizes[family] = (_side(where, key, pair[0]), _side(where, key, pair[1]))
    return MappingProxyType(sizes)


def _lora(where: str, value: Any, folder: Path) -> StyleLora:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: 'lora' must be an object with 'repo' or 'path'")
    unknown = sorted(set(value) - set(LORA_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(f'lora.{k}' for k in unknown)}; "
            f"known: {', '.join(LORA_KEYS)}"
        )
    if ("repo" in value) == ("path" in value):
        raise ConfigError(f"{where}: 'lora' needs exactly one of 'lora.repo' or 'lora.path'")
    weight_name = value.get("weight_name")
    if weight_name is not None:
        weight_name = _text(where, "lora.weight_name", weight_name, empty=False)
    scale = _number(where, "lora.scale", value.get("scale", 1.0), LORA_SCALE, integer=False)
    if "repo" in value:
        repo = _text(where, "lora.repo", value["repo"], empty=False)
        if repo.count("/") != 1:
            raise ConfigError(f"{where}: 'lora.repo' must look like 'owner/name', got {repo!r}")
        return StyleLora(repo=repo, weight_name=weight_name, scale=scale)
    path = Path(_text(where, "lora.path", value["path"], empty=False)).expanduser()
    path = path if path.is_absolute() else folder / path
    if not path.exists():
        raise ConfigError(f"{where}: 'lora.path' {path} does not exist")
    return StyleLora(path=path, weight_name=weight_name, scale=scale)


def _pose(where: str, value: Any, folder: Path) -> Path:
    name = _text(where, "pose", value, empty=False)
    if Path(name).name != name or name in (".", ".."):
        raise ConfigError(
            f"{where}: 'pose' must be a file name inside {folder / POSES_DIR}, got {name!r}"
        )
    path = folder / POSES_DIR / name
    if not path.is_file():
        raise ConfigError(f"{where}: 'pose' file {path} does not exist")
    return path


def _tags(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(t, str) and t.strip() for t in value):
        raise ConfigError(f"{where}: 'tags' must be a list of non-empty strings, got {value!r}")
    return tuple(t.strip().lower() for t in value)


def parse_style(style_id: str, data: Any, path: Path) -> StylePreset:
    """Validate one preset document (read from ``path``) into a :class:`StylePreset`."""
    where = f"style preset {path}"
    if not _ID.match(style_id):
        raise ConfigError(
            f"{where}: the file name must be a lowercase-hyphen id such as 'film-noir.json'"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the file must hold a JSON object")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)}")
    unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
            f"known: {', '.join(REQUIRED + OPTIONAL)}"
        )
    if data["schema"] != SCHEMA:
        raise ConfigError(
            f"{where}: 'schema' {data['schema']!r} is not supported (expected {SCHEMA})"
        )
    folder = path.parent
    return StylePreset(
        id=style_id,
        title=_text(where, "title", data["title"], empty=False),
        description=_text(where, "description", data.get("description", "")),
        prompt=_template(where, data["prompt"]),
        negative_prompt=_text(where, "negative_prompt", data["negative_prompt"]),
        steps=_number(where, "steps", data["steps"], STEPS, integer=True),
        guidance=_number(where, "guidance", data["guidance"], GUIDANCE, integer=False),
        width=_side(where, "width", data["width"]),
        height=_side(where, "height", data["height"]),
        identity_scale=_number(
            where, "identity_scale", data["identity_scale"], IDENTITY_SCALE, integer=False
        ),
        sizes=_sizes(where, data["sizes"]) if "sizes" in data else MappingProxyType({}),
        lora=_lora(where, data["lora"], folder) if "lora" in data else None,
        pose=_pose(where, data["pose"], folder) if "pose" in data else None,
        tags=_tags(where, data.get("tags", [])),
        source=path,
    )


def load_style_file(path: Path) -> StylePreset:
    """Read and validate one preset file; its id is the file stem."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"style preset {path} cannot be read: {exc}") from exc
    return parse_style(path.stem, data, path)


def _load_folder(folder: Path) -> dict[str, StylePreset]:
    files = sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))
    return {p.stem: load_style_file(p) for p in files}


def load_styles(folder: Path | None = None, user_dir: Path | None = None) -> dict[str, StylePreset]:
    """All presets by id: ``folder`` (default: the shipped ones), then ``user_dir`` on top.

    ``user_dir`` (usually :func:`user_styles_dir`) is skipped when it does not exist; its
    presets replace shipped ones with the same id.
    """
    folder = Path(folder) if folder is not None else asset_path("styles")
    if not folder.is_dir():
        raise ConfigError(f"style folder {folder} does not exist")
    styles = _load_folder(folder)
    if user_dir is not None and Path(user_dir).is_dir():
        styles.update(_load_folder(Path(user_dir)))
    return dict(sorted(styles.items()))


def get_style(styles: Mapping[str, StylePreset], style_id: str) -> StylePreset:
    """The preset called ``style_id``, or a ConfigError naming the closest known ids."""
    try:
        return styles[style_id]
    except KeyError:
        pass
    close = difflib.get_close_matches(style_id.strip().lower(), list(styles), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else "."
    raise ConfigError(
        f"unknown style {style_id!r}{hint} Known styles: {', '.join(sorted(styles)) or 'none'}"
    )
