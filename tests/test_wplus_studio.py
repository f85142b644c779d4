"""W+ in the studio on the tiny set, offline: photos → profile W+ → edits → portrait with the
W+ adapter, from the CLI and Python; the tiny W+ files, the direction registry, profile storage
(intake, lazily, after photo changes, from an old database) and the real set's offline errors."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing

import numpy as np
import pytest
import torch
from PIL import Image

from adapters.e4e import load_e4e
from adapters.wplus import read_wplus_adapter
from pipelines import PortraitPipeline
from studio.cli import main
from studio.directions import DirectionRegistry, user_directions_dir
from studio.errors import ConfigError, StudioError
from studio.models import select_model_set
from studio.models.catalog import parse_catalog
from studio.models.resolver import ModelResolver
from studio.orchestrator import PortraitRequest, Studio
from studio.profiles.errors import PhotoWPlusError, ProfileError
from studio.profiles.library import DATABASE_NAME, ProfileLibrary
from studio.profiles.store import SCHEMA_VERSION
from studio.settings import load_settings

pytestmark = pytest.mark.slow

KEY = "builtin:tiny-e4e-v2"


@pytest.fixture
def studio(tiny_env) -> Studio:
    return Studio(load_settings(), "tiny")


@pytest.fixture
def ada(studio, faces_dir) -> Studio:
    """A studio whose profile 'Ada' got its W+ at intake."""
    with studio.library() as library:
        library.create(
            "Ada", [faces_dir / "person_a_1.jpg", faces_dir / "person_a_2.jpg"], consent=True
        )
    return studio


def _w(latent) -> torch.Tensor:
    return torch.from_numpy(latent)


# The tiny set's W+ files and the directions


def test_tiny_set_has_w_plus_files_in_the_published_layouts(studio):
    models, resolver = studio.model_set, ModelResolver(studio.settings)
    e4e = load_e4e(resolver.resolve(models, "e4e"))
    assert e4e.decoder.config.size == 1024 and tuple(e4e.latent_avg.shape) == (18, 16)
    adapter = read_wplus_adapter(resolver.resolve(models, "wplus_adapter"))
    assert {"proj_0.weight", "proj_3.weight", "norm.weight"} <= set(adapter["w_proj"])
    assert studio.wplus.ready and studio.wplus.key == KEY

    registry = studio.wplus.directions
    assert registry.names() == ("age", "smile", "glasses", "eye_openness")
    w_plus = torch.randn(1, 18, 16)
    glasses = registry.apply(w_plus, [("glasses", 2.0)]) - w_plus
    assert glasses[0, 4:8].abs().sum() > 0  # a per-layer direction moves only its rows
    assert glasses[0, :4].abs().sum() == 0 and glasses[0, 8:].abs().sum() == 0
    age = registry.apply(w_plus, [("age", 1.0)]) - w_plus
    assert torch.allclose(age[0], age[0, :1].expand(18, -1))  # [1, 512]-style: every row
    assert torch.equal(registry.apply(w_plus, [("age", 0.0), ("eye_openness", 0.0)]), w_plus)
    ganspace = registry.apply(w_plus, [("eye_openness", 1.0)]) - w_plus
    assert ganspace[0, 7].abs().sum() > 0 and ganspace[0, 8:].abs().sum() == 0


def test_a_user_adds_a_direction_by_adding_a_file(studio):
    folder = user_directions_dir(studio.settings)
    folder.mkdir(parents=True)
    beard = np.zeros((18, 16), np.float32)
    beard[10:12] = 1.0
    np.save(folder / "beard.npy", beard)
    torch.save(torch.zeros(3, 16), folder / "squashed.pt")
    np.save(folder / "wide.npy", np.zeros((18, 512), np.float32))
    registry = DirectionRegistry(studio.model_set, studio.settings)
    assert {"beard", "squashed", "wide", "age"} <= set(registry.names())

    w_plus = torch.zeros(1, 18, 16)
    moved = registry.apply(w_plus, [("beard", 0.5)])
    assert moved[0, 10:12].eq(0.5).all() and moved[0, :10].eq(0).all()
    with pytest.raises(StudioError, match=r"squashed.pt has shape \[3, 16\]; expected"):
        registry.apply(w_plus, [("squashed", 1.0)])
    with pytest.raises(StudioError, match=r"'wide' \(.*wide.npy\) is 512-d.*makes 16-d W\+"):
        registry.apply(w_plus, [("wide", 1.0)])
    with pytest.raises(StudioError, match=r"unknown edit direction 'gills'.*age, smile"):
        registry.apply(w_plus, [("gills", 1.0)])
    with pytest.raises(StudioError, match="edit age amount 9.0 is out of range"):
        registry.apply(w_plus, [("age", 9.0)])


# Profiles keep W+


def test_profile_wplus_lazily_at_intake_and_after_photo_changes(studio, faces_dir):
    with ProfileLibrary.from_settings(studio.settings) as library:  # no e4e: nothing at intake
        created = library.create("Ada", [faces_dir / "person_a_1.jpg"], consent=True).profile
    assert not created.wplus and not created.photos[0].wplus

    first = studio.profile_wplus("Ada")  # on first use, then stored
    assert first.shape == (1, 18, 16) and first.dtype == torch.float32
    assert not torch.allclose(first.norm(dim=-1), torch.ones(1, 18))  # W+, not an embedding
    with studio.library() as library:
        stored = library.get("Ada")
        assert torch.equal(_w(stored.wplus[KEY].latent), first)
        assert torch.equal(_w(stored.photos[0].wplus[KEY].latent), first)
        added = library.add("Ada", [faces_dir / "person_a_2.jpg"]).profile  # e4e at intake
    second = _w(added.photos[1].wplus[KEY].latent)
    assert added.wplus[KEY].photos == 2 and not torch.equal(second, first)
    assert torch.allclose(_w(added.wplus[KEY].latent), (first + second) / 2)
    assert torch.allclose(studio.profile_wplus("Ada"), (first + second) / 2)

    with studio.library() as library:
        left = library.remove_photos("Ada", ["person_a_1.jpg"]).profile
    assert left.wplus[KEY].photos == 1 and torch.equal(_w(left.wplus[KEY].latent), second)


class Refusing:
    """A W+ encoder that cannot encode the first ``refuse`` photos it sees."""

    key = "stub-e4e"

    def __init__(self, refuse: int):
        self.refuse = refuse

    def encode(self, photo, face_index, face_count):
        if self.refuse:
            self.refuse -= 1
            raise PhotoWPlusError("the face's FFHQ square is 90 px; e4e needs 128")
        return np.full((1, 18, 4), 2.0, np.float32)


def test_a_face_e4e_cannot_encode_keeps_its_reason_and_the_mean_uses_the_others(studio, faces_dir):
    photos = [faces_dir / "person_a_1.jpg", faces_dir / "person_a_2.jpg"]
    root, analyzers = studio.settings.profiles_dir, lambda enc: studio.analyzer(*enc)
    with ProfileLibrary(root, analyzers, Refusing(1)) as library:
        profile = library.create("Ada", photos, consent=True).profile
    first, second = (p.wplus["stub-e4e"] for p in profile.photos)
    assert first.latent is None and "e4e needs 128" in first.reason
    assert profile.wplus["stub-e4e"].photos == 1
    np.testing.assert_array_equal(profile.wplus["stub-e4e"].latent, second.latent)

    with ProfileLibrary(root, analyzers, Refusing(1)) as library:
        library.create("Bo", photos[:1], consent=True)
        with pytest.raises(ProfileError, match="no accepted photo of profile 'Bo' could be"):
            library.ensure_wplus("Bo")


def test_an_old_database_migrates_and_gets_wplus_on_first_use(studio, faces_dir):
    with ProfileLibrary.from_settings(studio.settings) as library:
        library.create("Ada", [faces_dir / "person_a_1.jpg"], consent=True)
    db = studio.settings.profiles_dir / DATABASE_NAME
    with closing(sqlite3.connect(db)) as conn:  # back to the schema before W+
        conn.executescript(
            "DROP TABLE photo_wplus; DROP TABLE profile_wplus; PRAGMA user_version = 2;"
        )
    assert SCHEMA_VERSION == 3
    assert studio.profile_wplus("Ada").shape == (1, 18, 16)
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
        assert conn.execute("SELECT count(*) FROM photo_wplus").fetchone() == (1,)


# Portraits with W+ and edits


def _image(studio: Studio, **kwargs) -> tuple[np.ndarray, dict]:
    result = studio.generate(PortraitRequest("Ada", prompt="a portrait", steps=2, **kwargs))
    path = result.portraits[0].path
    return np.asarray(Image.open(path)), json.loads(path.with_suffix(".json").read_text())


def test_portraits_carry_the_edited_wplus_and_record_it(ada):
    plain, plain_record = _image(ada)
    assert plain_record["wplus"] == {"e4e": KEY, "edits": [], "scale": 1.0, "start": 0.0}
    edited, record = _image(ada, edits=(("age", 2.0), ("smile", -1.0)), wplus_scale=0.8)
    assert record["wplus"]["edits"] == [["age", 2.0], ["smile", -1.0]]
    assert record["wplus"]["scale"] == 0.8
    assert not np.array_equal(plain, edited)
    # At W+ scale 0 the edits cannot show: the image is the one without the adapter's term.
    off, _ = _image(ada, edits=(("age", 2.0),), wplus_scale=0.0)
    off_plain, _ = _image(ada, wplus_scale=0.0)
    assert np.array_equal(off, off_plain) and not np.array_equal(off, plain)

    with pytest.raises(StudioError, match="unknown edit direction 'gills'.*age, smile"):
        _image(ada, edits=(("gills", 1.0),))
    with pytest.raises(StudioError, match="W\\+ scale 2.0 is out of range"):
        _image(ada, wplus_scale=2.0)
    ada.use_models("tiny-xl")
    with pytest.raises(StudioError, match="needs a model set with a W\\+ adapter.*'tiny-xl'"):
        _image(ada, edits=(("age", 1.0),))


def test_python_pipeline_route_with_the_profiles_wplus(ada):
    """The README's Python route: a PortraitPipeline, the W+ adapter, the profile's edited W+."""
    models, resolver = select_model_set("tiny"), ModelResolver(ada.settings)
    pipe = PortraitPipeline.from_pretrained(resolver.resolve(models, "base"), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_wplus_adapter(resolver.resolve(models, "wplus_adapter"))
    wplus = ada.wplus.edited(ada.profile_wplus("Ada"), [("age", 2.0)])

    def run(**kwargs):
        generator = torch.Generator().manual_seed(0)
        call = {"num_inference_steps": 2, "height": 64, "width": 64, "output_type": "np"}
        return pipe("a portrait", generator=generator, **call, **kwargs).images[0]

    assert not np.allclose(run(wplus=wplus), run())
    np.testing.assert_array_equal(run(wplus=wplus, wplus_scale=0.0), run())


# The catalog


def test_real_set_names_the_published_w_plus_files_and_their_licences():
    sd15 = select_model_set("sd15")
    e4e, adapter = sd15.components["e4e"], sd15.components["wplus_adapter"]
    assert e4e.source == adapter.source == "url" and e4e.optional and adapter.optional
    assert e4e.url.endswith("/releases/download/v1/e4e_ffhq_encode.pt")
    assert "MIT" in e4e.licence and "NVIDIA" in e4e.licence and "non-commercial" in e4e.licence
    assert "NTU S-Lab" in adapter.licence and "non-commercial" in adapter.licence
    assert {"direction_age", "direction_smile", "ganspace_pca"} <= set(sd15.components)
    assert "e4e" not in select_model_set("tiny-xl").components
    raw = {"source": "url", "repo": "a/b", "kind": "file", "format": "csv", "licence": "x"}
    with pytest.raises(ConfigError, match="a url component needs 'repo', 'url' and one file"):
        parse_catalog(
            {
                "schema": 1,
                "sets": {
                    "s": {
                        "family": "sd15",
                        "components": {
                            "base": {**raw, "files": ["f"], "url": "https://x/f"},
                            "broken": raw,
                        },
                    }
                },
            }
        )


# The command line


def test_cli_profile_wplus_preview_show_and_portrait_with_edits(tiny_env, faces_dir, capsys):
    photos = [str(faces_dir / f"person_a_{i}.jpg") for i in (1, 2)]
    assert main(["profile", "create", "Ada", "--photos", *photos, "--consent"]) == 0
    assert main(["profile", "show", "Ada"]) == 0
    assert "W+:       none yet" in capsys.readouterr().out

    preview = tiny_env / "preview.png"
    assert main(["profile", "wplus", "Ada", "--edit", "age=+2", "--out", str(preview)]) == 0
    out = capsys.readouterr().out
    assert "person_a_1.jpg: W+" in out and f"profile W+: mean of 2 photos ({KEY})" in out
    assert Image.open(preview).size == (256, 256)
    assert main(["profile", "wplus", "Ada", "--refine", "900"]) == 1
    assert "W+ refinement steps 900 is out of range" in capsys.readouterr().err
    missing = tiny_env / "model_ir_se50.pth"
    refine = ["profile", "wplus", "Ada", "--refine", "1", "--weights", f"ir_se50={missing}"]
    assert main(refine) == 1
    assert f"--weights ir_se50={missing}: no such file" in capsys.readouterr().err
    assert main(["profile", "show", "Ada", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["wplus"][0]["e4e"] == KEY and shown["wplus"][0]["photos"] == 2
    assert all(p["wplus"][0]["ok"] for p in shown["photos"])

    out_dir = tiny_env / "portraits"
    argv = ["portrait", "--profile", "Ada", "--prompt", "x", "--steps", "2", "--out", str(out_dir)]
    assert main([*argv, "--edit", "age=+2", "--edit", "smile=-1", "--wplus-scale", "0.5"]) == 0
    (sidecar,) = out_dir.glob("*.json")
    record = json.loads(sidecar.read_text())["wplus"]
    assert record["edits"] == [["age", 2.0], ["smile", -1.0]] and record["scale"] == 0.5


def test_real_set_offline_names_the_w_plus_files_to_place(tiny_env, faces_dir, capsys):
    assert (
        main(
            ["profile", "create", "Ada", "--photos", str(faces_dir / "person_a_1.jpg"), "--consent"]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["profile", "wplus", "Ada", "--models", "sd15"]) == 1
    err = capsys.readouterr().err
    assert "component 'e4e'" in err and "csxmli2016/w-plus-adapter/e4e_ffhq_encode.pt" in err
    with ProfileLibrary.from_settings(load_settings()) as library:  # nothing stored meanwhile
        assert not library.get("Ada").photos[0].wplus
