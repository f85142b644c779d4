"""``python -m studio profile ...``: per-photo lines, the ``show --json`` contract, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from hostile import BROKEN
from PIL import Image, ImageOps

from studio.cli import main


def _folder(tmp_path: Path, faces_dir: Path, *names: str) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in names:
        shutil.copy(faces_dir / f"{name}.jpg", folder)
    return folder


def _library_leftovers(studio_env: Path) -> list[str]:
    """What the profile library folder holds besides its database."""
    root = studio_env / "data" / "profiles"
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("profiles.sqlite3"))


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["profile", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_profile_lifecycle_from_the_command_line(studio_env, faces_dir, tmp_path, capsys):
    folder = _folder(tmp_path, faces_dir, "impostor_1", "person_b_1", "person_b_2")

    code, out, _ = _run(capsys, "create", "Zoë B", "--photos", str(folder), "--consent")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(
        f"{folder / 'impostor_1.jpg'}: rejected: does not match the other photos (similarity 0."
    )
    assert lines[1].startswith(f"{folder / 'person_b_1.jpg'}: accepted (similarity 0.")
    assert lines[3].startswith("created profile 'Zoë B': 2 of 3 photos accepted (")

    code, out, _ = _run(capsys, "show", "zoë b", "--json")
    assert code == 0
    shown = json.loads(out)
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
    assert shown["name"] == "Zoë B"
    assert Path(shown["path"]).parent == studio_env / "data" / "profiles"
    assert shown["consent"]["given"] is True
    assert datetime.fromisoformat(shown["consent"]["at"]).utcoffset().total_seconds() == 0
    assert shown["encoders"] == ["sface"]
    assert shown["counts"] == {"photos": 3, "accepted": 2, "rejected": 1}
    assert shown["loras"] == []
    files = [photo["file"] for photo in shown["photos"]]
    assert files == ["impostor_1.jpg", "person_b_1.jpg", "person_b_2.jpg"]
    impostor, b1, _ = shown["photos"]
    for photo in shown["photos"]:
        assert list(photo) == [
            "file",
            "stored_as",
            "accepted",
            "reasons",
            "similarity",
            "notes",
            "wplus",
        ]
        assert isinstance(photo["similarity"], float)
    assert impostor["file"] == "impostor_1.jpg" and impostor["accepted"] is False
    assert impostor["similarity"] < 0.363
    assert impostor["reasons"] == [
        f"does not match the other photos (similarity {impostor['similarity']:.2f} < 0.363)"
    ]
    assert b1["accepted"] is True and b1["reasons"] == [] and b1["notes"] == []
    assert (Path(shown["path"]) / "photos" / b1["stored_as"]).is_file()

    code, out, _ = _run(capsys, "show", "Zoë B")
    assert code == 0 and f"    rejected  impostor_1.jpg [{impostor['stored_as']}]" in out

    mirrored = tmp_path / "b1_mirrored.jpg"
    ImageOps.mirror(Image.open(faces_dir / "person_b_1.jpg")).save(mirrored, quality=95)
    code, out, _ = _run(capsys, "add", "Zoë B", str(mirrored))
    assert code == 0
    assert out.splitlines()[0].startswith(f"{mirrored}: accepted (similarity 0.")
    assert out.splitlines()[-1].startswith("updated profile 'Zoë B': 3 of 4 photos accepted (")

    code, out, _ = _run(capsys, "remove", "Zoë B", "impostor_1.jpg")
    assert code == 0
    assert out.splitlines()[0] == "impostor_1.jpg: removed"
    assert out.splitlines()[-1].startswith("updated profile 'Zoë B': 3 of 3 photos accepted (")

    code, out, _ = _run(capsys, "list")
    assert code == 0 and out.startswith("Zoë B  3 of 3 photos accepted  created ")

    assert _run(capsys, "delete", "zoë b") == (0, "deleted profile 'Zoë B'\n", "")
    assert _run(capsys, "list")[1].startswith("no profiles yet; create one with")
    assert _run(capsys, "show", "Zoë B") == (
        1,
        "",
        "error: no profile named 'Zoë B'; see `python -m studio profile list`\n",
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["create", "../../etc", "--photos", "x.jpg", "--consent"],
            "error: profile name '../../etc' contains a path separator",
        ),
        (["add", "nobody", "x.jpg"], "error: no profile named 'nobody'"),
        (["remove", "nobody", "x.jpg"], "error: no profile named 'nobody'"),
        (["delete", "nobody"], "error: no profile named 'nobody'"),
    ],
)
def test_user_errors_exit_1_with_the_input_named(studio_env, capsys, argv, message):
    code, out, err = _run(capsys, *argv)
    assert (code, out) == (1, "")
    assert err.startswith(message)


def test_no_usable_photo_lists_every_reason_and_creates_nothing(studio_env, tmp_path, capsys):
    folder = tmp_path / "junk"
    folder.mkdir()
    written = sorted(writer(folder).name for writer in BROKEN.values())

    code, out, err = _run(capsys, "create", "A", "--photos", str(folder), "--consent")

    assert (code, out) == (1, "")
    headline = "error: profile 'A' was not created: no usable photo: "
    assert len(err.splitlines()) == 1 and err.startswith(headline)
    listed = err.removeprefix(headline).split(" | ")
    assert sorted(Path(item.split(": ")[0]).name for item in listed) == written
    assert _run(capsys, "list")[1].startswith("no profiles yet")
    assert _library_leftovers(studio_env) == []


def test_a_separate_process_exits_1_without_a_traceback(studio_env, faces_dir):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "studio",
            "profile",
            "create",
            "A",
            "--photos",
            str(faces_dir / "person_a_1.jpg"),
        ],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("error: profile 'A' was not created: a profile needs your ")
    assert "--consent" in done.stderr and "Traceback" not in done.stderr
    assert _library_leftovers(studio_env) == []
