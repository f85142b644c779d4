"""LoRAs registered with identity profiles: copy, list, remove, atomicity, migration, recovery."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from contextlib import closing, contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from studio.cli import main
from studio.faces.analyzer import FaceAnalyzer
from studio.faces.encoders import IdentityEmbedding
from studio.profiles.errors import ProfileError, ProfileNameError
from studio.profiles.library import DATABASE_NAME, ProfileLibrary
from studio.profiles.names import dir_name, name_key
from studio.profiles.selection import Verdict
from studio.profiles.store import MIGRATIONS, SCHEMA_VERSION, ProfileStore, StoredPhoto
from studio.profiles.types import CONSENT_STATEMENT, Consent, EncoderInfo, LoraRecord
from studio.training.export import METADATA_NAME, WEIGHTS_NAME
from studio.training.types import LoraMetadata

METADATA = LoraMetadata(
    trigger="ohwx",
    class_word="woman",
    family="sd15",
    model_set="sd15-base",
    rank=16,
    alpha=16.0,
    text_encoder=False,
    resolution=512,
    steps=400,
    best_step=300,
    best_similarity=0.61234,
)
WHEN = datetime(2026, 11, 26, 10, 15, tzinfo=timezone.utc)
KEPT = [
    METADATA_NAME,
    "loss.svg",
    "ohwx_kohya.safetensors",
    WEIGHTS_NAME,
    "report.json",
    "report.md",
]


def _query(db: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchall()


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(DATABASE_NAME))


def _lora_folder(folder: Path, *, report: bool = True) -> Path:
    """What a training run leaves: the LoRA, its report, and things a profile does not keep."""
    folder.mkdir(parents=True)
    save_file({"unet.x.lora.down.weight": np.ones((2, 2), np.float32)}, folder / WEIGHTS_NAME)
    (folder / METADATA_NAME).write_text(json.dumps(asdict(METADATA)))
    (folder / "ohwx_kohya.safetensors").write_bytes(b"kohya")
    if report:
        (folder / "report.json").write_text("{}")
        (folder / "report.md").write_text("# report")
        (folder / "loss.svg").write_text("<svg/>")
    (folder / "train.log").write_text("log")
    (folder / ".loss.svg.tmp").write_text("partial")
    (folder / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint-10" / "optimizer.safetensors").write_bytes(b"x")
    return folder


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer()


@pytest.fixture
def library(tmp_path, analyzer, faces_dir):
    """A library holding profile "Zoë B", made from one real photo."""
    with ProfileLibrary(tmp_path / "profiles", lambda encoders: analyzer) as lib:
        lib.create("Zoë B", [faces_dir / "person_b_1.jpg"], consent=True)
        yield lib


def test_a_lora_is_copied_listed_and_removed_and_goes_with_its_profile(library, tmp_path):
    source = _lora_folder(tmp_path / "run")
    profile = library.get("Zoë B")
    assert profile.loras == ()

    lora = library.add_lora("zoë b", source, METADATA, lora_name="First Try")

    assert lora.path == profile.path / "loras" / dir_name("First Try")
    assert sorted(p.name for p in lora.path.iterdir()) == sorted(KEPT)
    for name in KEPT:
        assert (lora.path / name).read_bytes() == (source / name).read_bytes()
    assert (lora.weights, lora.report) == (lora.path / WEIGHTS_NAME, lora.path / "report.json")
    assert (lora.name, lora.trigger, lora.class_word, lora.family) == (
        "First Try",
        "ohwx",
        "woman",
        "sd15",
    )
    assert (lora.model_set, lora.rank, lora.steps) == ("sd15-base", 16, 400)
    assert (lora.best_step, lora.best_similarity) == (300, 0.61234)
    assert lora.created.utcoffset().total_seconds() == 0
    assert library.get("Zoë B").updated >= profile.updated

    plain = library.add_lora("Zoë B", _lora_folder(tmp_path / "plain", report=False), METADATA)
    assert re.fullmatch(r"lora-\d{8}-\d{6}", plain.name) and plain.report is None
    assert library.get("ZOË B").loras == (lora, plain)  # newest last
    assert [(s.name, s.loras) for s in library.list()] == [("Zoë B", 2)]

    with pytest.raises(ProfileError, match="'Zoë B' already has a LoRA named 'First Try'"):
        library.add_lora("Zoë B", source, METADATA, lora_name="first TRY")
    with pytest.raises(ProfileNameError, match="LoRA name '../x' contains a path separator"):
        library.add_lora("Zoë B", source, METADATA, lora_name="../x")
    with pytest.raises(ProfileError, match=f"has no {WEIGHTS_NAME}; give the folder of a"):
        library.add_lora("Zoë B", tmp_path / "run" / "checkpoints", METADATA)
    with pytest.raises(ProfileError, match="LoRA folder .*nowhere not found"):
        library.add_lora("Zoë B", tmp_path / "nowhere", METADATA)
    assert len(library.get("Zoë B").loras) == 2

    assert library.remove_lora("zoë b", "FIRST try") == "First Try"
    assert not lora.path.exists() and plain.path.is_dir()
    assert library.get("Zoë B").loras == (plain,)
    with pytest.raises(ProfileError, match="profile 'Zoë B' has no LoRA named 'First Try'; see"):
        library.remove_lora("Zoë B", "First Try")

    library.delete("Zoë B")
    db = library.root / DATABASE_NAME
    assert _query(db, "SELECT count(*) FROM loras") == [(0,)]
    assert _leftovers(library.root) == []


_real_transaction = ProfileStore.transaction


@contextmanager
def _commit_fails(store: ProfileStore):
    """A transaction whose body runs and whose commit then fails."""
    with _real_transaction(store):
        yield
        raise sqlite3.OperationalError("disk I/O error")


@pytest.mark.parametrize("failure", ["copy", "rename", "commit"])
def test_a_failed_add_leaves_no_row_and_no_folder(library, tmp_path, monkeypatch, failure):
    source = _lora_folder(tmp_path / "run")
    profile = library.get("Zoë B")
    if failure == "copy":  # the second file fails midway
        real_copy, calls = shutil.copyfileobj, []

        def copy_fails_second(src, dst, *args):
            calls.append(dst)
            if len(calls) == 2:
                dst.write(b"half")
                raise OSError(28, "No space left on device")
            return real_copy(src, dst, *args)

        monkeypatch.setattr(shutil, "copyfileobj", copy_fails_second)
    elif failure == "rename":

        def rename_fails(src, dst):
            raise OSError(5, "Input/output error")

        monkeypatch.setattr("os.rename", rename_fails)
    else:  # the folder is in place when the commit fails
        monkeypatch.setattr(ProfileStore, "transaction", _commit_fails)

    with pytest.raises((OSError, sqlite3.Error)):
        library.add_lora("Zoë B", source, METADATA, lora_name="x")
    monkeypatch.undo()

    assert _query(library.root / DATABASE_NAME, "SELECT count(*) FROM loras") == [(0,)]
    assert not (profile.path / "loras" / dir_name("x")).exists()
    assert _leftovers(library.root) == [profile.path.name]
    assert library.add_lora("Zoë B", source, METADATA, lora_name="x").path.is_dir()


def test_opening_the_library_keeps_registered_loras_and_removes_orphans(
    library, tmp_path, analyzer
):
    lora = library.add_lora("Zoë B", _lora_folder(tmp_path / "run"), METADATA, lora_name="kept")
    library.close()
    loras = lora.path.parent
    orphan = loras / dir_name("moved in, never committed")
    orphan.mkdir()
    (orphan / WEIGHTS_NAME).write_bytes(b"x")
    (loras / "my notes").mkdir()

    with ProfileLibrary(library.root, lambda encoders: analyzer) as reopened:
        assert reopened.get("Zoë B").loras == (lora,)
    assert sorted(p.name for p in loras.iterdir()) == sorted([lora.path.name, "my notes"])
    assert sorted(p.name for p in lora.path.iterdir()) == sorted(KEPT)
    assert len(list((lora.path.parents[1] / "photos").iterdir())) == 1


def test_a_v1_library_is_upgraded_and_its_profiles_get_loras(tmp_path):
    root = tmp_path / "profiles"
    root.mkdir()
    store = ProfileStore(root / DATABASE_NAME, MIGRATIONS[:1])
    assert store.version == 1
    encoder = EncoderInfo("sface", 2, 0.363)
    embedding = IdentityEmbedding("sface", np.array([1.0, 0.0], np.float32))
    photo = StoredPhoto("a.jpg", "a.jpg", "a.png", "ab" * 32, WHEN, 0, 1, (), {"sface": embedding})
    with store.transaction():
        profile_id = store.insert_profile(
            name="A",
            name_key=name_key("A"),
            dir_name=dir_name("A"),
            created=WHEN,
            consent=Consent(True, WHEN, CONSENT_STATEMENT),
            encoders=[encoder],
        )
        store.set_verdict(store.insert_photo(profile_id, photo), Verdict(True, None, ()))
        store.set_mean(profile_id, "sface", embedding)
    store.close()
    for sub, name in (("photos", "a.jpg"), ("crops", "a.png")):
        (root / dir_name("A") / sub).mkdir(parents=True)
        (root / dir_name("A") / sub / name).write_bytes(b"image")

    def no_analysis(encoders):
        raise AssertionError("registering a LoRA analyses nothing")

    with ProfileLibrary(root, no_analysis) as library:
        profile = library.get("a")
        assert [(p.file, p.accepted) for p in profile.photos] == [("a.jpg", True)]
        assert profile.path.name == dir_name("A") and profile.loras == ()
        np.testing.assert_array_equal(profile.means["sface"].vector, embedding.vector)
        lora = library.add_lora("A", _lora_folder(tmp_path / "run"), METADATA, lora_name="one")
        assert library.get("A").loras == (lora,)
    assert _query(root / DATABASE_NAME, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert SCHEMA_VERSION == 3
    assert (root / dir_name("A") / "photos" / "a.jpg").read_bytes() == b"image"


def test_profile_show_and_list_name_the_loras(studio_env, faces_dir, tmp_path, capsys):
    assert (
        main(["profile", "create", "B", "--photos", str(faces_dir / "person_b_1.jpg"), "--consent"])
        == 0
    )
    root = studio_env / "data" / "profiles"
    with ProfileLibrary(root, lambda encoders: None) as library:
        lora = library.add_lora("B", _lora_folder(tmp_path / "run"), METADATA, lora_name="v1")
    capsys.readouterr()

    assert main(["profile", "show", "b", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert list(shown) == [
        "name",
        "path",
        "created",
        "updated",
        "consent",
        "encoders",
        "counts",
        "photos",
        "loras",
        "wplus",
    ]
    assert shown["loras"] == [
        {
            "name": "v1",
            "path": str(lora.path),
            "trigger": "ohwx",
            "class_word": "woman",
            "family": "sd15",
            "model_set": "sd15-base",
            "steps": 400,
            "best_step": 300,
            "best_similarity": 0.6123,
            "created": lora.created.isoformat(),
        }
    ]

    assert main(["profile", "show", "B"]) == 0
    out = capsys.readouterr().out
    assert (
        "  loras:    1\n    v1: prompt 'ohwx woman', sd15 (sd15-base), rank 16, 400 steps, " in out
    )
    assert "best at step 300 (similarity 0.61)" in out and str(lora.path) in out

    assert main(["profile", "list"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("(sface)  1 LoRA")


def test_one_lora_record_from_training_through_the_database_to_the_profile(library, tmp_path):
    library.add_lora("Zoë B", _lora_folder(tmp_path / "run"), METADATA, lora_name="one")
    library.close()
    with ProfileLibrary(tmp_path / "profiles", lambda encoders: None) as reopened:
        (lora,) = reopened.get("Zoë B").loras
    assert isinstance(lora, LoraRecord) and isinstance(METADATA, LoraRecord)
    assert lora.record_fields() == METADATA.record_fields()
    assert lora.instance_prompt == METADATA.instance_prompt == "ohwx woman"
