"""Style presets: the shipped files, the user folder on top, and validation errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from studio.errors import ConfigError
from studio.models.clip_vocab import build_clip_tokenizer
from studio.settings import Settings
from studio.shipped import asset_path
from studio.styles import (
    StyleLora,
    StylePreset,
    get_style,
    load_style_file,
    load_styles,
    user_styles_dir,
)

SHIPPED = load_styles()
SUBJECT = "ohwx person"
# The portrait uses the issue names; each is covered by a preset id or a tag.
USES = {
    "studio headshot": "studio-headshot",
    "business": "business",
    "passport-style": "passport",
    "film noir": "film-noir",
    "watercolor": "watercolor",
    "anime": "anime",
    "oil painting": "oil-painting",
    "cyberpunk": "cyberpunk",
    "vintage": "vintage",
    "outdoor natural light": "outdoor-natural-light",
    "wedding": "wedding",
    "fantasy": "fantasy",
}


def valid_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": 1,
        "title": "Demo",
        "description": "A test look.",
        "prompt": "portrait photo of {subject}, soft light",
        "negative_prompt": "blurry",
        "steps": 20,
        "guidance": 6.0,
        "width": 512,
        "height": 512,
        "identity_scale": 1.0,
        "tags": ["demo"],
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def write(folder: Path, style_id: str, doc: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{style_id}.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_clip_tokenizer(tmp_path_factory.mktemp("clip") / "tokenizer")


# -- the shipped presets ---------------------------------------------------------------


def test_shipped_presets_come_from_assets():
    folder = asset_path("styles")
    assert {p.stem for p in folder.glob("*.json")} == set(SHIPPED)
    assert all(s.source == folder / f"{s.id}.json" for s in SHIPPED.values())


def test_at_least_twelve_presets_cover_the_named_uses():
    assert len(SHIPPED) >= 12
    for use, word in USES.items():
        covered = word in SHIPPED or any(word in s.tags for s in SHIPPED.values())
        assert covered, f"no preset for {use!r}"


@pytest.mark.parametrize("style_id", sorted(SHIPPED))
def test_shipped_preset_renders_with_the_subject(style_id):
    style = SHIPPED[style_id]
    assert style.title and style.description and style.tags
    assert style.negative_prompt
    prompt = style.render(SUBJECT)
    assert SUBJECT in prompt and "{" not in prompt
    assert style.render(SUBJECT, "red scarf").endswith(", red scarf")
    assert style.lora is None and style.pose is None
    for family in ("sd15", "sdxl"):
        width, height = style.size_for(family)
        assert width % 8 == 0 and height % 8 == 0
    assert max(style.size_for("sd15")) <= 768
    assert min(style.size_for("sdxl")) >= 768


@pytest.mark.parametrize("style_id", sorted(SHIPPED))
def test_shipped_prompts_fit_the_clip_window(tokenizer, style_id):
    style = SHIPPED[style_id]
    # Leave room for the user's extra words inside the 77-token window.
    assert len(tokenizer(style.render(SUBJECT)).input_ids) <= 62
    assert len(tokenizer(style.negative_prompt).input_ids) <= 77


# -- rendering and sizes -----------------------------------------------------------------


def load_demo(tmp_path: Path, **changes: Any) -> StylePreset:
    return load_style_file(write(tmp_path, "demo", valid_doc(**changes)))


def test_render_fills_subject_and_appends_extra(tmp_path):
    style = load_demo(tmp_path, prompt="{subject} in {{braces}}, photo of {subject}")
    assert style.render("a  woman ") == "a woman in {braces}, photo of a woman"
    assert style.render("ohwx man", " , blue jacket ") == (
        "ohwx man in {braces}, photo of ohwx man, blue jacket"
    )
    assert style.render("{x} person") == "{x} person in {braces}, photo of {x} person"
    with pytest.raises(ValueError, match="subject"):
        style.render("  ")


def test_size_for_family_falls_back_to_width_and_height(tmp_path):
    style = load_demo(tmp_path, width=512, height=640, sizes={"sdxl": [896, 1152]})
    assert style.size_for("sd15") == (512, 640)
    assert style.size_for("sdxl") == (896, 1152)
    with pytest.raises(ConfigError, match="sd3"):
        style.size_for("sd3")


# -- adding and overriding presets ---------------------------------------------------------


def test_adding_a_preset_is_adding_a_file(tmp_path):
    user = tmp_path / "styles"
    write(user, "polaroid", valid_doc(title="Polaroid", prompt="polaroid photo of {subject}"))
    styles = load_styles(user_dir=user)
    assert set(styles) == set(SHIPPED) | {"polaroid"}
    assert styles["polaroid"].render("a man") == "polaroid photo of a man"
    assert list(styles) == sorted(styles)


def test_user_preset_overrides_a_shipped_id(tmp_path):
    user = tmp_path / "styles"
    write(user, "anime", valid_doc(title="My anime", prompt="chibi {subject}"))
    styles = load_styles(user_dir=user)
    assert styles["anime"].title == "My anime"
    assert styles["anime"].source == user / "anime.json"
    assert styles["wedding"] == SHIPPED["wedding"]


def test_missing_user_folder_and_settings_helper(tmp_path):
    assert load_styles(user_dir=tmp_path / "absent") == SHIPPED
    settings = Settings(data_dir=tmp_path, models_dir=tmp_path / "m", output_dir=tmp_path / "o")
    assert user_styles_dir(settings) == tmp_path / "styles"
    (tmp_path / "styles").mkdir()
    (tmp_path / "styles" / "notes.txt").write_text("not a preset")
    assert load_styles(user_dir=user_styles_dir(settings)) == SHIPPED


def test_explicit_folder_replaces_the_shipped_one(tmp_path):
    write(tmp_path, "only", valid_doc())
    assert list(load_styles(tmp_path)) == ["only"]
    with pytest.raises(ConfigError, match="absent"):
        load_styles(tmp_path / "absent")


def test_style_lora_and_pose_resolve_beside_the_file(tmp_path):
    (tmp_path / "poses").mkdir()
    (tmp_path / "poses" / "three-quarter.png").write_bytes(b"png")
    (tmp_path / "ink.safetensors").write_bytes(b"st")
    style = load_demo(
        tmp_path, lora={"path": "ink.safetensors", "scale": 0.7}, pose="three-quarter.png"
    )
    assert style.lora == StyleLora(path=tmp_path / "ink.safetensors", scale=0.7)
    assert style.pose == tmp_path / "poses" / "three-quarter.png"
    hub = load_demo(tmp_path, lora={"repo": "owner/ink", "weight_name": "ink.safetensors"})
    assert hub.lora == StyleLora(repo="owner/ink", weight_name="ink.safetensors", scale=1.0)
    assert hub.lora.origin == "owner/ink: ink.safetensors"


# -- validation ----------------------------------------------------------------------------

BAD = [
    ({"schema": 2}, "'schema'"),
    ({"steps": None}, "'steps'"),
    ({"title": None, "prompt": None}, "'title', 'prompt'"),
    ({"title": " "}, "'title'"),
    ({"prompt": "portrait photo, soft light"}, "'prompt'"),
    ({"prompt": "{subject} in {style}"}, "{style}"),
    ({"prompt": "{subject} and {}"}, "'prompt'"),
    ({"prompt": "{subject!r}"}, "{subject!r}"),
    ({"prompt": "{subject:>9}"}, "'prompt'"),
    ({"prompt": "{subject} {oops"}, "'prompt'"),
    ({"negative_prompt": ["blurry"]}, "'negative_prompt'"),
    ({"steps": 0}, "'steps'"),
    ({"steps": 500}, "'steps'"),
    ({"steps": 20.5}, "'steps'"),
    ({"steps": True}, "'steps'"),
    ({"guidance": -1}, "'guidance'"),
    ({"guidance": "7"}, "'guidance'"),
    ({"width": 500}, "'width'"),
    ({"width": 32}, "'width'"),
    ({"height": 4096}, "'height'"),
    ({"identity_scale": 2.0}, "'identity_scale'"),
    ({"sizes": [512, 512]}, "'sizes'"),
    ({"sizes": {"sd3": [512, 512]}}, "'sizes.sd3'"),
    ({"sizes": {"sdxl": [1024]}}, "'sizes.sdxl'"),
    ({"sizes": {"sdxl": [1001, 1024]}}, "'sizes.sdxl'"),
    ({"seed": 42}, "'seed'"),
    ({"lora": "owner/ink"}, "'lora'"),
    ({"lora": {"repo": "owner/ink", "path": "ink.safetensors"}}, "'lora.repo'"),
    ({"lora": {"weight_name": "ink.safetensors"}}, "'lora.path'"),
    ({"lora": {"repo": "ink"}}, "'lora.repo'"),
    ({"lora": {"repo": "owner/ink", "colour": 1}}, "lora.colour"),
    ({"lora": {"repo": "owner/ink", "scale": 5}}, "'lora.scale'"),
    ({"lora": {"path": "missing.safetensors"}}, "'lora.path'"),
    ({"pose": "missing.png"}, "'pose'"),
    ({"pose": "../demo.json"}, "'pose'"),
    ({"tags": "demo"}, "'tags'"),
    ({"tags": ["ok", ""]}, "'tags'"),
]


@pytest.mark.parametrize(("changes", "key"), BAD, ids=[k for _, k in BAD])
def test_validation_errors_name_the_file_and_key(tmp_path, changes, key):
    path = write(tmp_path, "demo", valid_doc(**changes))
    with pytest.raises(ConfigError) as err:
        load_styles(tmp_path)
    assert str(path) in str(err.value)
    assert key in str(err.value)


@pytest.mark.parametrize(
    ("stem", "text", "needle"),
    [
        ("demo", "{not json", "cannot be read"),
        ("demo", "[1, 2]", "JSON object"),
        ("Film_Noir", json.dumps(valid_doc()), "lowercase-hyphen id"),
    ],
)
def test_unreadable_files_are_named(tmp_path, stem, text, needle):
    path = write(tmp_path, stem, text)
    with pytest.raises(ConfigError, match=needle) as err:
        load_styles(tmp_path)
    assert str(path) in str(err.value)


def test_a_broken_user_file_is_named(tmp_path):
    path = write(tmp_path / "styles", "anime", valid_doc(steps=0))
    with pytest.raises(ConfigError, match="'steps'") as err:
        load_styles(user_dir=tmp_path / "styles")
    assert str(path) in str(err.value)


# -- lookup --------------------------------------------------------------------------------


def test_get_style_returns_the_preset():
    assert get_style(SHIPPED, "film-noir").id == "film-noir"


@pytest.mark.parametrize(("typo", "closest"), [("film-nior", "film-noir"), ("aneme", "anime")])
def test_unknown_id_suggests_the_closest(typo, closest):
    with pytest.raises(ConfigError) as err:
        get_style(SHIPPED, typo)
    message = str(err.value)
    assert f"did you mean {closest!r}" in message
    assert all(style_id in message for style_id in SHIPPED)


def test_unknown_id_without_a_close_match_lists_the_known():
    with pytest.raises(ConfigError, match="Known styles: anime, business") as err:
        get_style(SHIPPED, "zzzzzz")
    assert "did you mean" not in str(err.value)
