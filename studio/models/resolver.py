"""Find a component's files: explicit path, then local models dir or hub cache, then download.

Every failure ends in :class:`ModelUnavailableError` naming the component, the repository and
files, and where to put them for offline use. Offline (``HF_HUB_OFFLINE=1`` or
``STUDIO_OFFLINE=1``) the hub is never contacted, so the error comes at once.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from studio.errors import ModelUnavailableError
from studio.models.catalog import Component, ModelSet, load_catalog
from studio.settings import Settings

logger = logging.getLogger(__name__)


HUB_PROBE_TIMEOUT_S = 5.0


def hub_unreachable() -> str | None:
    """Why the hub cannot be reached, or ``None``; one quick TCP probe instead of retries.

    Skipped behind a proxy, where a direct connection says nothing.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"{url.hostname}:{port}: {exc}"
    return None


class ModelResolver:
    """Resolve components of model sets to local paths, per the settings."""

    def __init__(self, settings: Settings):
        self.settings = settings

    # -- locations --------------------------------------------------------------------------
    def local_root(self, comp: Component) -> Path:
        """Where a hub component's files live in the models dir (mirrors the repo layout)."""
        return self.settings.models_dir / (comp.repo or comp.name)

    def _result(self, comp: Component, root: Path) -> Path:
        """The path handed to loaders: the file for ``file`` kinds, else the (sub)folder."""
        if comp.kind == "file":
            return root / comp.repo_paths[0]
        return root / comp.subfolder if comp.subfolder else root

    # -- lookups ----------------------------------------------------------------------------
    def explicit(self, set_name: str, name: str) -> Path | None:
        """The ``--weights [SET.]NAME=PATH`` override of a component; a path that does not exist
        is an error naming it."""
        for key in (f"{set_name}.{name}", name):
            if key in self.settings.weights:
                path = self.settings.weights[key]
                if not path.exists():
                    raise ModelUnavailableError(
                        f"--weights {key}={path}: no such file or folder; fix the path or drop the "
                        "override to use the catalog's files"
                    )
                return path
        return None

    def _in_models_dir(self, comp: Component) -> Path | None:
        root = self.local_root(comp)
        if all((root / p).is_file() for p in comp.repo_paths):
            return self._result(comp, root)
        return None

    def _in_hub_cache(self, comp: Component) -> Path | None:
        from huggingface_hub import try_to_load_from_cache

        if comp.source == "url":
            return None
        found: list[Path] = []
        for repo_path in comp.repo_paths:
            hit = try_to_load_from_cache(
                comp.repo, repo_path, revision=comp.revision, repo_type=comp.repo_type
            )
            if not isinstance(hit, str):
                return None
            found.append(Path(hit))
        snapshot = found[0]
        for _ in Path(comp.repo_paths[0]).parts:
            snapshot = snapshot.parent
        return self._result(comp, snapshot)

    def _download(self, comp: Component) -> Path:
        from huggingface_hub import hf_hub_download

        logger.info("downloading %s", comp.origin)
        if comp.source == "url":
            return self._download_url(comp)
        paths = [
            Path(hf_hub_download(comp.repo, p, revision=comp.revision, repo_type=comp.repo_type))
            for p in comp.repo_paths
        ]
        snapshot = paths[0]
        for _ in Path(comp.repo_paths[0]).parts:
            snapshot = snapshot.parent
        return self._result(comp, snapshot)

    def _download_url(self, comp: Component) -> Path:
        """Fetch a ``url`` component's file into the models dir (temporary name, then rename)."""
        from huggingface_hub.file_download import http_get  # hub's progress bar and retries

        target = self.local_root(comp) / comp.repo_paths[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        with open(partial, "wb") as handle:
            http_get(comp.url, handle, displayed_filename=target.name)
        partial.replace(target)
        return target

    # -- public -----------------------------------------------------------------------------
    def find_local(self, model_set: ModelSet, name: str) -> Path | None:
        """The component's local path, or ``None`` if it would need a download (or a build)."""
        comp = model_set.component(name)
        if comp.source == "local":
            return comp.path
        explicit = self.explicit(model_set.name, comp.name)
        if explicit is not None:
            return explicit
        if comp.source == "builtin":
            from studio.models.tiny import built_path

            path = built_path(self.settings.models_dir, comp.builder)
            return self._result(comp, path) if path.exists() else None
        return self._in_models_dir(comp) or self._in_hub_cache(comp)

    def available(self, model_set: ModelSet, name: str) -> bool:
        """The set has the component and it is on this machine or builds here (the tiny sets):
        :meth:`resolve` needs no download."""
        if name not in model_set.components:
            return False
        if model_set.components[name].source == "builtin":
            return True
        return self.find_local(model_set, name) is not None

    def resolve(self, model_set: ModelSet, name: str, *, download: bool = True) -> Path:
        """The component's local path, building or downloading it if needed."""
        comp = model_set.component(name)
        local = self.find_local(model_set, name)
        if local is not None:
            return local
        if comp.source == "builtin":
            from studio.models.tiny import build

            return self._result(comp, build(self.settings.models_dir, comp.builder))
        if self.settings.offline or not download:
            raise self._unavailable(model_set, comp, "offline mode (HF_HUB_OFFLINE/STUDIO_OFFLINE)")
        unreachable = hub_unreachable()
        if unreachable:
            raise self._unavailable(model_set, comp, f"the hub is unreachable: {unreachable}")
        try:
            return self._download(comp)
        except Exception as exc:
            raise self._unavailable(model_set, comp, f"download failed: {exc}") from exc

    def _unavailable(self, model_set: ModelSet, comp: Component, why: str) -> ModelUnavailableError:
        root = self.local_root(comp)
        if len(comp.repo_paths) > 2:
            places = f"the repository's {len(comp.repo_paths)} files under {root}"
        else:
            places = " and ".join(str(root / p) for p in comp.repo_paths)
        return ModelUnavailableError(
            f"model set {model_set.name!r} needs component {comp.name!r} ({comp.origin}), "
            f"which is not on this machine ({why}); to use it offline, place "
            f"{places}, or pass --weights {comp.name}=PATH, or run "
            f"`python -m studio models fetch {model_set.name}` on a machine with hub access"
        )


def find_optional(
    settings: Settings, model_set: ModelSet, name: str, fallback: str = "sd15"
) -> Path | None:
    """An optional component's local path: a ``--weights NAME=PATH`` override, else the set's
    own component, else the ``fallback`` set's (for sets without it, such as the tiny ones);
    ``None`` when none is on this machine. Nothing is downloaded."""
    resolver = ModelResolver(settings)
    path = resolver.explicit(model_set.name, name)
    if path is not None:
        return path
    owner = model_set
    if name not in model_set.components:
        owner = load_catalog().get(fallback, model_set)
    if name not in owner.components:
        return None
    return resolver.find_local(owner, name)
