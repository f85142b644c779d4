"""The model catalog: named model sets and their components, read from ``assets/models``.

The catalog is the one place that names weights. A component is built locally
(``source: builtin``, the tiny random-weight sets), a list of files in a hub repository, or one
file published at a URL (``source: url``, e.g. a GitHub release), kept in the models dir under
``<repo>/<file>`` like a hub file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from studio.errors import ConfigError
from studio.families import BaseFamily, family_names, family_of_folder, get_family
from studio.shipped import asset_path

FAMILIES = family_names()
KINDS = ("pipeline", "folder", "file")
FORMATS = ("diffusers", "safetensors", "torch-bin", "onnx", "numpy", "csv")
SOURCES = ("hub", "builtin", "url")
ENCODERS = ("arcface", "sface", "dlib")
REPO_TYPES = ("model", "space", "dataset")


@dataclass(frozen=True)
class Component:
    """One piece of a model set: where its files come from and how they are stored."""

    name: str
    source: str
    kind: str
    format: str
    licence: str
    repo: str | None = None
    repo_type: str = "model"
    subfolder: str | None = None
    files: tuple[str, ...] = ()
    builder: str | None = None
    revision: str | None = None
    optional: bool = False
    path: Path | None = None
    url: str | None = None

    @property
    def origin(self) -> str:
        """A short human description, e.g. ``h94/IP-Adapter-FaceID: ip-adapter-faceid_sd15.bin``."""
        if self.source == "builtin":
            return f"built locally ({self.builder})"
        if self.source == "local":
            return str(self.path)
        if self.source == "url":
            return f"{self.repo}: {self.url}"
        space = " (space)" if self.repo_type == "space" else ""
        if len(self.files) > 2:
            folder = f"/{self.subfolder}" if self.subfolder else ""
            return f"{self.repo}{space}{folder}: {len(self.files)} files"
        return f"{self.repo}{space}: {', '.join(self.repo_paths)}"

    @property
    def repo_paths(self) -> tuple[str, ...]:
        """File paths inside the repository (subfolder included)."""
        prefix = f"{self.subfolder}/" if self.subfolder else ""
        return tuple(prefix + f for f in self.files)


@dataclass(frozen=True)
class ModelSet:
    """A named, coherent set of components for one base-model family."""

    name: str
    title: str
    family: str
    components: Mapping[str, Component]
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    identity_encoder: str = "arcface"
    """The recognizer whose embeddings the set's identity adapter was trained on."""

    @property
    def base_family(self) -> BaseFamily:
        """The spec of the set's family (``family`` is its name, kept as data)."""
        return get_family(self.family)

    def component(self, name: str) -> Component:
        try:
            return self.components[name]
        except KeyError:
            raise ConfigError(
                f"model set {self.name!r} has no component {name!r}; "
                f"it has: {', '.join(self.components)}"
            ) from None


def _parse_component(set_name: str, name: str, raw: Mapping[str, Any]) -> Component:
    where = f"catalog set {set_name!r}, component {name!r}"
    try:
        comp = Component(
            name=name,
            source=raw["source"],
            kind=raw["kind"],
            format=raw["format"],
            licence=raw["licence"],
            repo=raw.get("repo"),
            repo_type=raw.get("repo_type", "model"),
            subfolder=raw.get("subfolder"),
            files=tuple(raw.get("files", ())),
            builder=raw.get("builder"),
            revision=raw.get("revision"),
            optional=bool(raw.get("optional", False)),
            url=raw.get("url"),
        )
    except KeyError as exc:
        raise ConfigError(f"{where}: missing key {exc.args[0]!r}") from None
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    for attr, allowed in (
        ("source", SOURCES),
        ("kind", KINDS),
        ("format", FORMATS),
        ("repo_type", REPO_TYPES),
    ):
        if getattr(comp, attr) not in allowed:
            raise ConfigError(f"{where}: {attr} must be one of {', '.join(allowed)}")
    if comp.source == "hub" and not (comp.repo and comp.files):
        raise ConfigError(f"{where}: a hub component needs 'repo' and 'files'")
    if comp.source == "url" and not (comp.repo and comp.url and len(comp.files) == 1):
        raise ConfigError(f"{where}: a url component needs 'repo', 'url' and one file")
    if comp.source == "builtin" and not comp.builder:
        raise ConfigError(f"{where}: a builtin component needs 'builder'")
    if comp.kind == "file" and len(comp.files) != 1:
        raise ConfigError(f"{where}: a 'file' component lists exactly one file")
    return comp


def parse_catalog(data: Mapping[str, Any]) -> dict[str, ModelSet]:
    """Validate catalog data (the JSON document) into model sets."""
    if data.get("schema") != 1:
        raise ConfigError(
            f"model catalog schema {data.get('schema')!r} is not supported (expected 1)"
        )
    sets: dict[str, ModelSet] = {}
    for set_name, raw in data.get("sets", {}).items():
        family = raw.get("family")
        if family not in FAMILIES:
            raise ConfigError(
                f"catalog set {set_name!r}: family must be one of {', '.join(FAMILIES)}"
            )
        components = {
            name: _parse_component(set_name, name, comp)
            for name, comp in raw.get("components", {}).items()
        }
        if "base" not in components:
            raise ConfigError(f"catalog set {set_name!r} has no 'base' component")
        sets[set_name] = ModelSet(
            name=set_name,
            title=raw.get("title", set_name),
            family=family,
            components=MappingProxyType(components),
            defaults=MappingProxyType(dict(raw.get("defaults", {}))),
            identity_encoder=raw.get("identity_encoder", "arcface"),
        )
        if sets[set_name].identity_encoder not in ENCODERS:
            raise ConfigError(
                f"catalog set {set_name!r}: identity_encoder must be one of {', '.join(ENCODERS)}"
            )
    return sets


def load_catalog(path: Path | None = None) -> dict[str, ModelSet]:
    """Read and validate the shipped catalog (or the one at ``path``)."""
    path = path or asset_path("models", "catalog.json")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"model catalog {path} cannot be read: {exc}") from exc
    return parse_catalog(data)


def local_model_set(path: Path) -> ModelSet:
    """A model set made of one local diffusers folder (``--models PATH``)."""
    try:
        family = family_of_folder(path)
    except ConfigError as exc:
        raise ConfigError(f"--models {exc}") from exc
    base = Component(
        name="base",
        source="local",
        kind="pipeline",
        format="diffusers",
        licence="see the model's card",
        path=path,
    )
    size = family.default_size
    return ModelSet(
        name=str(path),
        title=f"local {family.title}",
        family=family.name,
        components=MappingProxyType({"base": base}),
        defaults=MappingProxyType({"width": size, "height": size, "steps": 30, "guidance": 7.0}),
    )
