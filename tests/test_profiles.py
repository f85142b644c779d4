"""Identity profiles: names, outlier rules, the SQLite store, and the library on real photos."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from hostile import BROKEN
from PIL import Image, ImageOps

from studio.faces.analyzer import FaceAnalyzer
from studio.faces.encoders import SFACE_COSINE_THRESHOLD, IdentityEmbedding
from studio.profiles import intake
from studio.profiles import library as library_module
from studio.profiles.errors import (
    ConsentRequiredError,
    LibraryError,
    NoUsablePhotosError,
    PhotoNotFoundError,
    ProfileError,
    ProfileExistsError,
    ProfileNameError,
    ProfileNotFoundError,
)
from studio.profiles.library import DATABASE_NAME, STALE_STAGING_S, ProfileLibrary
from studio.profiles.names import DIR_NAME_PATTERN, dir_name, name_key, normalize_name
from studio.profiles.selection import judge, pick_face
from studio.profiles.store import MIGRATIONS, SCHEMA_VERSION, Migration, ProfileStore

# Names


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        (".", "means a folder"),
        ("..", "means a folder"),
        ("../../etc", "contains a path separator"),
        ("a/b", "contains a path separator"),
        ("a\\b", "contains a path separator"),
        ("x" * 65, "is 65 characters long; use at most 64"),
        ("a\x00b", "control or invisible formatting characters"),
        ("tab\there", "control or invisible formatting characters"),
        ("evil\u202egnp.exe", "control or invisible formatting characters"),
        ("bad\udcff", "control or invisible formatting characters"),
        (".hidden", "starts with a dot"),
    ],
)
def test_bad_names_are_refused_with_the_name_and_the_rule(raw, rule):
    with pytest.raises(ProfileNameError) as caught:
        normalize_name(raw)
    message = str(caught.value)
    assert rule in message
    assert repr(raw)[:20] in message


def test_names_are_normalised_case_insensitive_and_get_distinct_safe_folders():
    assert normalize_name("  Zoe\u0308 Ng ") == "Zoë Ng"  # NFC, stripped
    assert normalize_name("x" * 64) == "x" * 64
    assert name_key("ZOË") == name_key("zoë") != name_key("Zoe")
    assert dir_name("Zoë B") == "zoe-b-0f9b6ebc85"  # stable across versions: folders depend on it
    assert dir_name("ZOË B") == dir_name("Zoë B") != dir_name("Zoe B")
    assert dir_name("李小龙").startswith("profile-")
    for name in ("Zoë B", "李小龙", "x" * 64, "CON", "-- --"):
        assert DIR_NAME_PATTERN.fullmatch(dir_name(name))


# Outlier rules, on synthetic unit vectors


def _embedding(*values: float) -> IdentityEmbedding:
    return IdentityEmbedding("sface", np.array(values, dtype=np.float32))


def test_judge_leaves_one_out_and_names_the_similarity():
    same = [_embedding(1, 0.1 * i, 0) for i in range(3)]
    verdicts = judge({"a": same[0], "b": same[1], "c": same[2], "x": _embedding(0, 0, 1)}, 0.363)
    assert [verdicts[k].accepted for k in "abcx"] == [True, True, True, False]
    assert verdicts["x"].similarity == pytest.approx(0.0, abs=1e-6)
    assert verdicts["x"].reasons == ("does not match the other photos (similarity 0.00 < 0.363)",)
    assert verdicts["a"].similarity > 0.8 and verdicts["a"].reasons == ()


def test_judge_excludes_worst_first_so_impostors_cannot_push_out_a_genuine_photo():
    genuine = {"g1": _embedding(1, 0.3, *[0] * 5), "g2": _embedding(1, -0.3, *[0] * 5)}
    # Five different strangers: one pass of leave-one-out would judge g1 against the mean of
    # g2 and all five (cosine 0.83 / sqrt(6) = 0.34 < 0.363) and exclude it.
    impostors = {f"i{k}": _embedding(*np.eye(7)[k + 2]) for k in range(5)}
    verdicts = judge({**genuine, **impostors}, 0.363)
    assert verdicts["g1"].accepted and verdicts["g2"].accepted
    assert verdicts["g1"].similarity == pytest.approx(0.83, abs=0.01)
    assert not any(verdicts[k].accepted for k in impostors)
    assert all(verdicts[k].similarity == pytest.approx(0.0, abs=1e-6) for k in impostors)


def test_judge_two_photos_that_disagree_excludes_both_and_one_photo_is_accepted():
    verdicts = judge({"a": _embedding(1, 0), "b": _embedding(0, 1)}, 0.363)
    assert not verdicts["a"].accepted and not verdicts["b"].accepted
    assert "do not match each other (similarity 0.00 < 0.363)" in verdicts["a"].reasons[0]
    agreeing = judge({"a": _embedding(1, 0), "b": _embedding(1, 0.2)}, 0.363)
    assert all(v.accepted and v.similarity > 0.9 for v in agreeing.values())
    alone = judge({"a": _embedding(1, 0)}, 0.363)["a"]
    assert alone.accepted and alone.similarity is None


def test_pick_face_prefers_the_match_and_falls_back_to_the_largest():
    faces = [_embedding(1, 0), _embedding(0, 1)]
    assert pick_face(faces, _embedding(0.5, 1)) == (
        1,
        "2 faces: used the one matching the rest (similarity 0.89)",
    )
    assert pick_face(faces, None) == (
        0,
        "2 faces: used the largest (no other photo to compare with)",
    )
    assert pick_face(faces[:1], None) == (0, None)


# The store: migrations


LATER = Migration(
    "a later schema step",
    (
        """CREATE TABLE later (
            id INTEGER PRIMARY KEY,
            profile_id INTEGER NOT NULL REFERENCES profiles (id) ON DELETE CASCADE
        )""",
    ),
)


def _query(db: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchall()


def test_a_database_is_upgraded_in_order_and_keeps_its_data(library, faces_dir):
    library.create("A", [faces_dir / "person_a_1.jpg"], consent=True)
    library.close()
    db = library.root / DATABASE_NAME
    now, later = SCHEMA_VERSION, SCHEMA_VERSION + 1
    assert SCHEMA_VERSION == 3 and _query(db, "PRAGMA user_version") == [(now,)]

    for _ in range(2):  # the second opening finds nothing to do
        store = ProfileStore(db, (*MIGRATIONS, LATER))
        assert store.version == later
        assert store.find_profile(name_key("a")).name == "A"
        store.close()
    assert _query(db, "PRAGMA user_version") == [(later,)]
    assert _query(db, "SELECT count(*) FROM later") == [(0,)]
    assert _query(db, "SELECT name FROM profiles") == [("A",)]
    assert _query(db, "SELECT count(*) FROM embeddings") == [(1,)]

    with pytest.raises(
        LibraryError, match=f"schema version {later}, newer than .* understands \\({now}\\)"
    ):
        ProfileStore(db)


def test_a_failed_migration_leaves_the_previous_version_intact(tmp_path):
    db = tmp_path / "library.sqlite3"
    ProfileStore(db).close()
    broken = Migration("half done", ("CREATE TABLE half (x)", "CREATE TABLE broken ("))
    now = SCHEMA_VERSION
    with pytest.raises(
        LibraryError, match=f"schema {now + 1} \\(half done\\) failed: .*stays at schema {now}"
    ):
        ProfileStore(db, (*MIGRATIONS, broken))
    assert _query(db, "PRAGMA user_version") == [(now,)]
    assert _query(db, "SELECT name FROM sqlite_master WHERE name = 'half'") == []
    ProfileStore(db).close()


def test_a_damaged_database_is_a_clear_error(tmp_path, analyzer):
    root = tmp_path / "profiles"
    root.mkdir()
    (root / DATABASE_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(LibraryError, match="cannot be read .*move the file away"):
        ProfileLibrary(root, lambda encoders: analyzer)


# The library, on the real portraits with the real models


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer()


@pytest.fixture
def library(tmp_path, analyzer):
    with ProfileLibrary(tmp_path / "profiles", lambda encoders: analyzer) as lib:
        yield lib


def _photos(faces_dir: Path, *names: str) -> list[Path]:
    return [faces_dir / f"{name}.jpg" for name in names]


def _leftovers(root: Path) -> list[str]:
    """Everything in the library folder except the database and its WAL files."""
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(DATABASE_NAME))


def _mirrored(source: Path, folder: Path) -> Path:
    """Another photo of the same person: the portrait flipped left to right."""
    path = folder / f"{source.stem}_mirrored.jpg"
    ImageOps.mirror(Image.open(source)).save(path, quality=95)
    return path


def test_an_impostor_is_flagged_and_the_persons_photos_are_kept(library, faces_dir):
    change = library.create(
        "Zoë B", _photos(faces_dir, "person_b_1", "person_b_2", "impostor_1"), consent=True
    )

    assert [o.status for o in change.photos] == ["accepted", "accepted", "rejected"]
    profile = library.get("zoë b")
    assert profile.name == "Zoë B" and profile.path == library.root / "zoe-b-0f9b6ebc85"
    b1, b2, impostor = profile.photos
    assert (b1.file, b2.file, impostor.file) == (
        "person_b_1.jpg",
        "person_b_2.jpg",
        "impostor_1.jpg",
    )
    assert b1.accepted and b2.accepted and not impostor.accepted
    assert b1.similarity > SFACE_COSINE_THRESHOLD and b2.similarity > SFACE_COSINE_THRESHOLD
    assert impostor.similarity < SFACE_COSINE_THRESHOLD
    assert impostor.reasons == (
        f"does not match the other photos (similarity {impostor.similarity:.2f} < 0.363)",
    )

    # Copies under hash names, 512 px head crops, the mean of the accepted photos only.
    for photo, source in zip(
        profile.photos, _photos(faces_dir, "person_b_1", "person_b_2", "impostor_1"), strict=True
    ):
        assert photo.stored_name == photo.sha256[:16] + ".jpg"
        assert photo.path.read_bytes() == source.read_bytes()
        assert Image.open(photo.crop_path).size == (512, 512)
        assert (photo.face_index, photo.face_count) == (0, 1)
    expected = b1.embeddings["sface"].vector + b2.embeddings["sface"].vector
    mean = profile.means["sface"].vector
    assert np.allclose(mean, expected / np.linalg.norm(expected), atol=1e-6)
    assert [(e.name, e.dim, e.threshold) for e in profile.encoders] == [("sface", 128, 0.363)]

    # Consent is recorded with its UTC time.
    assert profile.consent.given and "consent" in profile.consent.statement
    assert profile.consent.at.utcoffset().total_seconds() == 0
    assert abs(time.time() - profile.consent.at.timestamp()) < 120

    # Embeddings are float32 BLOBs with encoder name and dimension.
    rows = _query(
        library.root / DATABASE_NAME, "SELECT encoder, dim, length(vector) FROM embeddings"
    )
    assert rows == [("sface", 128, 512)] * 3
    assert _leftovers(library.root) == ["zoe-b-0f9b6ebc85"]


def test_add_remove_rejudge_the_whole_profile_and_delete_removes_everything(
    library, faces_dir, tmp_path
):
    library.create("A", _photos(faces_dir, "person_a_1", "person_a_2"), consent=True)
    before = library.get("A").means["sface"].vector

    change = library.add(
        "a", [_mirrored(faces_dir / "person_a_2.jpg", tmp_path), faces_dir / "impostor_2.jpg"]
    )
    assert [o.status for o in change.photos] == ["accepted", "rejected"]
    profile = change.profile
    assert [p.accepted for p in profile.photos] == [True, True, True, False]
    assert not np.allclose(profile.means["sface"].vector, before)

    change = library.remove_photos("A", ["impostor_2.jpg", profile.photos[2].stored_name])
    assert sorted(o.file for o in change.photos) == ["impostor_2.jpg", "person_a_2_mirrored.jpg"]
    assert [p.file for p in change.profile.photos] == ["person_a_1.jpg", "person_a_2.jpg"]
    assert np.allclose(change.profile.means["sface"].vector, before, atol=1e-6)
    kept = {p.stored_name for p in change.profile.photos}
    assert {p.name for p in (profile.path / "photos").iterdir()} == kept

    with pytest.raises(PhotoNotFoundError, match="profile 'A' has no photo named 'nope.jpg'"):
        library.remove_photos("A", ["nope.jpg"])
    with pytest.raises(PhotoNotFoundError, match="would leave profile 'A' empty"):
        library.remove_photos("A", ["person_a_1.jpg", "person_a_2.jpg"])

    library.create("B", _photos(faces_dir, "person_b_1"), consent=True)
    assert [(s.name, s.photos, s.accepted) for s in library.list()] == [("A", 2, 2), ("B", 1, 1)]
    assert library.delete("a") == "A"
    assert [s.name for s in library.list()] == ["B"]
    assert not profile.path.exists()
    with pytest.raises(ProfileNotFoundError):
        library.get("A")


def test_verdicts_of_earlier_photos_change_when_the_set_changes(library, faces_dir):
    library.create("B", _photos(faces_dir, "person_b_1", "person_b_2", "impostor_1"), consent=True)

    # Two photos left that disagree: either could be the stranger, so neither is used.
    change = library.remove_photos("B", ["person_b_2.jpg"])
    assert [(o.file, o.status) for o in change.changed] == [("person_b_1.jpg", "rejected")]
    assert all("do not match each other" in p.reasons[0] for p in change.profile.photos)
    assert not change.profile.accepted and change.profile.means == {}

    # A third photo settles it.
    change = library.add("B", _photos(faces_dir, "person_b_2"))
    assert [(o.file, o.status) for o in change.changed] == [("person_b_1.jpg", "accepted")]
    assert [p.accepted for p in change.profile.photos] == [True, False, True]


def test_two_photos_of_different_people_create_nothing(library, faces_dir):
    with pytest.raises(NoUsablePhotosError) as caught:
        library.create("AB", _photos(faces_dir, "person_a_1", "person_b_1"), consent=True)
    message = str(caught.value)
    assert message.startswith("profile 'AB' was not created: no usable photo:")
    assert "person_a_1.jpg: the two photos do not match each other" in message
    assert "person_b_1.jpg: the two photos do not match each other" in message
    assert library.list() == [] and _leftovers(library.root) == []


def test_consent_is_required(tmp_path, faces_dir):
    def no_analysis(encoders):
        raise AssertionError("nothing may be analysed without consent")

    with ProfileLibrary(tmp_path / "profiles", no_analysis) as library:
        with pytest.raises(ConsentRequiredError, match="--consent") as caught:
            library.create("A", _photos(faces_dir, "person_a_1"), consent=False)
        assert "consent to use them" in str(caught.value)
        assert library.list() == [] and _leftovers(library.root) == []


def test_user_input_errors_name_the_input(library, faces_dir):
    library.create("Zoë", _photos(faces_dir, "person_a_1"), consent=True)
    with pytest.raises(ProfileExistsError, match="a profile named 'Zoë' already exists"):
        library.create("ZOË", _photos(faces_dir, "person_a_2"), consent=True)
    message = "no profile named 'x'; see `python -m studio profile list`"
    for call in (
        lambda: library.get("x"),
        lambda: library.add("x", _photos(faces_dir, "person_a_2")),
        lambda: library.remove_photos("x", ["a.jpg"]),
        lambda: library.delete("x"),
    ):
        with pytest.raises(ProfileNotFoundError) as caught:
            call()
        assert str(caught.value) == message
    with pytest.raises(ProfileNameError, match="'../../etc' contains a path separator"):
        library.create("../../etc", _photos(faces_dir, "person_a_2"), consent=True)


def test_the_same_photo_twice_is_a_skipped_duplicate(library, faces_dir, tmp_path):
    copy = tmp_path / "copy_of_a1.jpg"
    shutil.copy(faces_dir / "person_a_1.jpg", copy)
    change = library.create(
        "A", [*_photos(faces_dir, "person_a_1", "person_a_2"), copy], consent=True
    )
    assert [o.status for o in change.photos] == ["accepted", "accepted", "skipped"]
    assert change.photos[2].reasons == (
        f"same photo as {str(faces_dir / 'person_a_1.jpg')!r}, given earlier",
    )

    with pytest.raises(NoUsablePhotosError) as caught:
        library.add("A", [copy])
    assert str(caught.value) == (
        "nothing was added to profile 'A':\n"
        f"  {copy}: same photo as 'person_a_1.jpg', already in the profile"
    )
    assert len(library.get("A").photos) == 2


def test_a_folder_with_hostile_files_makes_a_profile_from_the_good_ones(
    library, faces_dir, tmp_path
):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("person_b_1", "person_b_2"):
        shutil.copy(faces_dir / f"{name}.jpg", folder)
    broken = {writer(folder).name for writer in BROKEN.values()}
    Image.new("RGB", (320, 240), (90, 140, 200)).save(folder / "sky.png")

    change = library.create("B", [folder], consent=True)

    by_file = {Path(o.file).name: o for o in change.photos}
    assert set(by_file) == broken | {"sky.png", "person_b_1.jpg", "person_b_2.jpg"}
    assert [p.file for p in change.profile.accepted] == ["person_b_1.jpg", "person_b_2.jpg"]
    for name in broken | {"sky.png"}:
        outcome = by_file[name]
        assert outcome.status == "skipped" and len(outcome.reasons) == 1
        assert str(folder) not in outcome.reasons[0]  # one line, without the path twice
    assert by_file["sky.png"].reasons == (
        "no face found; use a photo where the face is clearly visible",
    )
    assert "file is empty" in by_file["empty.jpg"].reasons[0]
    assert "above the limit" in by_file["bomb.png"].reasons[0]


def _side_by_side(faces_dir: Path, small: str, large: str, path: Path) -> Path:
    """One photo of two people; the one named ``large`` has the bigger face."""
    left, right = (Image.open(faces_dir / f"{n}.jpg").convert("RGB") for n in (small, large))
    left = left.resize((left.width * 600 // left.height, 600))
    right = right.resize((right.width * 720 // right.height, 720))
    canvas = Image.new("RGB", (left.width + right.width, 720), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    canvas.save(path, quality=95)
    return path


def test_a_group_photo_uses_the_face_that_matches_the_rest(library, faces_dir, tmp_path):
    group = _side_by_side(faces_dir, "person_b_1", "impostor_1", tmp_path / "group.jpg")

    change = library.create("B", [group, faces_dir / "person_b_2.jpg"], consent=True)

    photo = change.profile.photos[0]
    assert (photo.file, photo.face_count, photo.face_index) == ("group.jpg", 2, 1)
    assert photo.accepted and photo.similarity > SFACE_COSINE_THRESHOLD
    assert photo.notes[-1].startswith("2 faces: used the one matching the rest (similarity 0.")

    alone = library.create("G", [group], consent=True).profile.photos[0]
    assert (alone.face_index, alone.notes) == (
        0,
        ("2 faces: used the largest (no other photo to compare with)",),
    )


# Atomicity


def test_a_failure_while_staging_leaves_no_trace(library, faces_dir, analyzer, monkeypatch):
    real, calls = intake.write_crop, []

    def failing_third(path, rgb):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(path, rgb)

    monkeypatch.setattr(intake, "write_crop", failing_third)
    photos = _photos(faces_dir, "person_b_1", "person_b_2", "impostor_1")
    with pytest.raises(OSError, match="No space left"):
        library.create("B", photos, consent=True)
    assert len(calls) == 3
    assert library.list() == [] and _leftovers(library.root) == []

    monkeypatch.setattr(intake, "write_crop", real)
    with ProfileLibrary(library.root, lambda encoders: analyzer) as reopened:
        assert reopened.create("B", photos, consent=True).profile.name == "B"


def test_a_failure_inside_the_transaction_rolls_back_rows_and_files(
    library, faces_dir, monkeypatch
):
    def broken(*args):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(ProfileStore, "set_mean", broken)
    with pytest.raises(sqlite3.OperationalError):
        library.create("B", _photos(faces_dir, "person_b_1", "person_b_2"), consent=True)
    assert library.list() == [] and _leftovers(library.root) == []
    assert _query(library.root / DATABASE_NAME, "SELECT count(*) FROM photos") == [(0,)]
    monkeypatch.undo()

    library.create("B", _photos(faces_dir, "person_b_1"), consent=True)
    folder = library.get("B").path
    real_rename, renames = os.rename, []

    def rename_fails_third(src, dst):
        renames.append(dst)
        if len(renames) == 3:
            raise OSError(5, "Input/output error")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_fails_third)
    with pytest.raises(OSError, match="Input/output error"):
        library.add("B", _photos(faces_dir, "person_b_2", "impostor_1"))
    monkeypatch.undo()
    profile = library.get("B")
    assert [p.file for p in profile.photos] == ["person_b_1.jpg"] and profile.photos[0].accepted
    for sub in ("photos", "crops"):
        assert len(list((folder / sub).iterdir())) == 1
    assert _leftovers(library.root) == [folder.name]


def test_an_edit_fails_cleanly_when_another_edit_changed_the_profile(
    library, faces_dir, analyzer, monkeypatch
):
    library.create("B", _photos(faces_dir, "person_b_1"), consent=True)
    real_stage = library_module.stage_photos

    def stage_while_another_process_adds(*args, **kwargs):
        monkeypatch.setattr(library_module, "stage_photos", real_stage)
        staged = real_stage(*args, **kwargs)
        with ProfileLibrary(library.root, lambda encoders: analyzer) as other:
            other.add("B", _photos(faces_dir, "person_b_2"))
        return staged

    monkeypatch.setattr(library_module, "stage_photos", stage_while_another_process_adds)
    with pytest.raises(ProfileError, match="'B' was changed by another edit meanwhile"):
        library.add("B", _photos(faces_dir, "impostor_1"))
    profile = library.get("B")
    assert [p.file for p in profile.photos] == ["person_b_1.jpg", "person_b_2.jpg"]
    assert len(list((profile.path / "photos").iterdir())) == 2
    assert _leftovers(library.root) == [profile.path.name]


_KILLED_WHILE_COMMITTING = """
import os, signal, sys
from pathlib import Path
from studio.faces.analyzer import FaceAnalyzer
from studio.profiles.library import ProfileLibrary

real_rename = os.rename
def rename_then_die(src, dst):  # the folder is in place, the transaction not yet committed
    real_rename(src, dst)
    os.kill(os.getpid(), signal.SIGKILL)
os.rename = rename_then_die
analyzer = FaceAnalyzer(mesher=None)
ProfileLibrary(Path(sys.argv[1]), lambda encoders: analyzer).create("B", sys.argv[2:], consent=True)
"""


def test_a_process_killed_mid_create_leaves_no_profile(tmp_path, faces_dir, analyzer):
    root = tmp_path / "profiles"
    photos = [str(p) for p in _photos(faces_dir, "person_b_1", "person_b_2")]
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_WHILE_COMMITTING, str(root), *photos],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -9, done.stderr
    assert _leftovers(root) == [dir_name("B")]  # moved into place, but no row refers to it

    with ProfileLibrary(root, lambda encoders: analyzer) as library:
        assert library.list() == [] and _leftovers(root) == []
        assert library.create("B", photos, consent=True).profile.name == "B"


def test_opening_the_library_removes_what_crashes_left(library, faces_dir, analyzer):
    library.create("B", _photos(faces_dir, "person_b_1"), consent=True)
    library.close()
    root = library.root
    folder = root / dir_name("B")
    (folder / "photos" / "0123456789abcdef.jpg").write_bytes(b"moved in, never committed")
    (root / "ghost-0123456789").mkdir()
    (root / "my notes").mkdir()
    stale, fresh = root / ".staging-stale", root / ".staging-fresh"
    for staging in (stale, fresh):
        (staging / "photos").mkdir(parents=True)
    old = time.time() - STALE_STAGING_S - 60
    for path in (stale, stale / "photos"):
        os.utime(path, (old, old))

    with ProfileLibrary(root, lambda encoders: analyzer) as reopened:
        assert [p.file for p in reopened.get("B").photos] == ["person_b_1.jpg"]
    assert _leftovers(root) == [".staging-fresh", folder.name, "my notes"]
    assert len(list((folder / "photos").iterdir())) == 1
