"""Model catalog parsing and the resolution order: explicit path, models dir, hub cache, hub."""

from pathlib import Path

import pytest

from studio.errors import ConfigError, ModelUnavailableError
from studio.models import catalog as catalog_mod
from studio.models import resolver as resolver_mod
from studio.models.catalog import load_catalog, parse_catalog
from studio.models.resolver import ModelResolver
from studio.settings import Settings

FACEID = "ip-adapter-faceid_sd15.bin"


def make_set(**component):
    raw = {
        "source": "hub",
        "repo": "h94/IP-Adapter-FaceID",
        "kind": "file",
        "format": "torch-bin",
        "files": [FACEID],
        "licence": "test",
        **component,
    }
    data = {
        "schema": 1,
        "sets": {
            "demo": {
                "family": "sd15",
                "components": {
                    "base": {
                        "source": "builtin",
                        "builder": "tiny-sd15",
                        "kind": "pipeline",
                        "format": "diffusers",
                        "licence": "x",
                    },
                    "faceid": raw,
                },
            }
        },
    }
    return parse_catalog(data)["demo"]


def settings(tmp_path, **kw) -> Settings:
    return Settings(
        data_dir=tmp_path / "d", models_dir=tmp_path / "m", output_dir=tmp_path / "o", **kw
    )


def test_shipped_catalog_names_the_published_weights():
    cat = load_catalog()
    assert {"tiny", "tiny-xl", "sd15", "sdxl"} <= set(cat)
    assert cat["sd15"].component("faceid").repo_paths == (FACEID,)
    assert cat["sd15"].component("faceid").repo == "h94/IP-Adapter-FaceID"
    assert cat["sdxl"].component("instantid_adapter").repo_paths == ("ip-adapter.bin",)
    assert cat["sdxl"].component("instantid_controlnet").repo_paths == (
        "ControlNetModel/config.json",
        "ControlNetModel/diffusion_pytorch_model.safetensors",
    )
    assert cat["sd15"].component("arcface").format == "onnx"
    assert cat["tiny"].family == "sd15" and cat["tiny-xl"].family == "sdxl"
    for model_set in cat.values():
        for comp in model_set.components.values():
            assert comp.licence, f"{model_set.name}.{comp.name} has no licence"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "blob"}, "kind must be one of"),
        ({"files": ["a.bin", "b.bin"]}, "exactly one file"),
        ({"repo": None}, "needs 'repo' and 'files'"),
        ({"format": "ckpt"}, "format must be one of"),
    ],
)
def test_invalid_catalog_entries_are_named(change, message):
    with pytest.raises(ConfigError, match=f"component 'faceid'.*{message}"):
        make_set(**change)


def test_catalog_needs_known_schema_and_base():
    with pytest.raises(ConfigError, match="schema 2"):
        parse_catalog({"schema": 2, "sets": {}})
    with pytest.raises(ConfigError, match="no 'base'"):
        parse_catalog({"schema": 1, "sets": {"x": {"family": "sd15", "components": {}}}})
    with pytest.raises(ConfigError, match="cannot be read"):
        catalog_mod.load_catalog(Path("/nonexistent/catalog.json"))


def _fake_hub_cache(cache: Path, repo: str, filename: str) -> Path:
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text("abc123")
    path = folder / "snapshots" / "abc123" / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"cached")
    return path


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """An empty hub cache and a recording stand-in for the hub download (no network here)."""
    import huggingface_hub
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    calls = []

    def fake_download(repo, filename, revision=None, repo_type=None):
        calls.append((repo, filename, repo_type))
        return str(_fake_hub_cache(cache, repo, filename))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(resolver_mod, "hub_unreachable", lambda: None)
    return cache, calls


def test_resolution_order(tmp_path, hub):
    cache, calls = hub
    model_set = make_set()
    explicit = tmp_path / "mine.bin"
    explicit.write_bytes(b"x")
    in_models_dir = tmp_path / "m" / "h94/IP-Adapter-FaceID" / FACEID
    in_models_dir.parent.mkdir(parents=True)
    in_models_dir.write_bytes(b"x")
    cached = _fake_hub_cache(cache, "h94/IP-Adapter-FaceID", FACEID)

    r = ModelResolver(settings(tmp_path, weights={"faceid": explicit}))
    assert r.resolve(model_set, "faceid") == explicit
    r = ModelResolver(settings(tmp_path))
    assert r.resolve(model_set, "faceid") == in_models_dir
    in_models_dir.unlink()
    assert r.resolve(model_set, "faceid") == cached
    assert calls == []
    cached.unlink()
    downloaded = r.resolve(model_set, "faceid")
    assert calls == [("h94/IP-Adapter-FaceID", FACEID, "model")]
    assert downloaded.read_bytes() == b"cached"


def test_folder_component_resolves_to_its_subfolder(tmp_path, hub):
    _, calls = hub
    model_set = make_set(
        kind="folder",
        repo="InstantX/InstantID",
        subfolder="ControlNetModel",
        files=["config.json", "diffusion_pytorch_model.safetensors"],
    )
    path = ModelResolver(settings(tmp_path)).resolve(model_set, "faceid")
    assert path.name == "ControlNetModel"
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    assert [c[1] for c in calls] == [
        "ControlNetModel/config.json",
        "ControlNetModel/diffusion_pytorch_model.safetensors",
    ]


def test_offline_error_is_immediate_and_says_how_to_fix(tmp_path, hub):
    _, calls = hub
    model_set = make_set()
    with pytest.raises(ModelUnavailableError) as err:
        ModelResolver(settings(tmp_path, offline=True)).resolve(model_set, "faceid")
    text = str(err.value)
    assert calls == []
    assert "'faceid'" in text and "h94/IP-Adapter-FaceID" in text and FACEID in text
    assert str(tmp_path / "m" / "h94/IP-Adapter-FaceID" / FACEID) in text
    assert "--weights faceid=PATH" in text and "offline" in text


def test_no_network_fails_after_one_probe_without_hub_retries(tmp_path, hub, monkeypatch):
    _, calls = hub
    monkeypatch.undo()  # real probe, but the network is down:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: calls.append(a))

    def no_network(address, timeout=None):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(resolver_mod.socket, "create_connection", no_network)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ModelUnavailableError, match="hub is unreachable.*Network is unreachable"):
        ModelResolver(settings(tmp_path)).resolve(make_set(), "faceid")
    assert calls == []


def test_explicit_path_that_does_not_exist_is_named(tmp_path):
    r = ModelResolver(settings(tmp_path, weights={"faceid": tmp_path / "typo.bin"}))
    with pytest.raises(ModelUnavailableError, match="--weights faceid=.*typo.bin: no such file"):
        r.resolve(make_set(), "faceid")


def test_unknown_component_lists_known_ones():
    with pytest.raises(ConfigError, match="no component 'lora'.*base, faceid"):
        make_set().component("lora")
