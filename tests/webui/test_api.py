"""The launched app through ``gradio_client``, its safety defaults, and the shared GPU queue."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import gradio as gr
import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import app
from studio import webui
from studio.models.resolver import ModelResolver


@pytest.fixture(scope="module")
def client(served) -> Client:
    return Client(served, verbose=False)


def test_profile_and_generate_endpoints(client, studio, faces_dir):
    photos = [handle_file(str(faces_dir / f"person_b_{i}.jpg")) for i in (1, 2)]
    summary, verdicts, crops, *_ = client.predict("Fay", photos, True, api_name="/create_profile")
    assert summary.startswith("Created profile **Fay**")
    assert [row[:2] for row in verdicts["data"]] == [
        ["person_b_1.jpg", "yes"],
        ["person_b_2.jpg", "yes"],
    ]
    assert len(crops) == 2
    with pytest.raises(AppError, match="consent"):
        client.predict("Gus", photos, False, api_name="/create_profile")
    assert "Gus" not in webui.profile_names(studio)

    gallery, files, notes, report, foundations = client.predict(
        "Fay", "passport", "", None, 1.0, 2, 7, 2, api_name="/generate"
    )
    assert report == "" and foundations == []  # repair is off by default
    assert sorted(int(re.search(r"seed (\d+)", i["caption"])[1]) for i in gallery) == [7, 8]
    assert len(files) == 2 and all(Path(f).read_bytes()[:4] == b"\x89PNG" for f in files)
    assert "Likeness by" in notes
    with pytest.raises(AppError, match="choose a style or write a prompt"):
        client.predict("Fay", "", "", None, 1.0, 1, 0, 2, api_name="/generate")


@pytest.mark.slow
def test_eight_simultaneous_generations_all_finish(client, studio, ada):
    before = {item.path for item in studio.history(1000)}
    jobs = [
        client.submit(ada, "", "{subject}, test", None, 1.0, 1, 100 + i, 1, api_name="/generate")
        for i in range(8)
    ]
    results = [job.result(timeout=240) for job in jobs]
    seeds = sorted(
        int(re.search(r"seed (\d+)", gallery[0]["caption"])[1]) for gallery, *_ in results
    )
    assert seeds == list(range(100, 108))
    new = [item for item in studio.history(1000) if item.path not in before]
    assert len(new) == 8 and len({item.path for item in new}) == 8
    assert sorted(item.record["seed"] for item in new) == seeds


def test_safety_defaults_upload_limit_and_served_folders(served, ui_settings, studio, ada):
    options = app.launch_options(ui_settings)
    assert options["server_name"] == "127.0.0.1" and options["auth"] is None
    assert options["max_file_size"] == webui.UPLOAD_LIMIT
    assert options["allowed_paths"] == [str(ui_settings.output_dir), str(ui_settings.data_dir)]
    listening = app.launch_options(ui_settings, port=8000, listen=True, auth=("ada", "pw"))
    assert (listening["server_name"], listening["auth"]) == ("0.0.0.0", ("ada", "pw"))

    too_big = 25 * gr.FileSize.MB + 1  # UPLOAD_LIMIT is 25mb
    upload = httpx.post(
        f"{served}/gradio_api/upload", files={"files": ("big.jpg", b"\0" * too_big)}, timeout=60
    )
    assert upload.status_code == 413
    database = ui_settings.profiles_dir / "profiles.sqlite3"
    assert database.is_file() and str(database) in options["blocked_paths"]
    for private in ("/etc/hostname", database, Path(app.__file__).resolve()):
        assert httpx.get(f"{served}/gradio_api/file={private}").status_code == 403
    studio.settings.output_dir.mkdir(parents=True, exist_ok=True)
    own = studio.settings.output_dir / "served.txt"
    own.write_text("ok")
    assert httpx.get(f"{served}/gradio_api/file={own}").text == "ok"


def test_command_line(tiny_env, monkeypatch, capsys):
    assert app.parse_auth("ada:pa:ss") == ("ada", "pa:ss")
    for bad in ("ada", ":pw", "ada:"):
        with pytest.raises(argparse.ArgumentTypeError, match="user:pass"):
            app.parse_auth(bad)
    with pytest.raises(SystemExit):
        app.parse_args(["--auth", "nopassword"])
    assert "is not user:pass" in capsys.readouterr().err
    args = app.parse_args([])
    assert (args.port, args.models, args.listen, args.auth) == (7860, "auto", False, None)

    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.update(kw))
    app.main(["--listen", "--port", "7999"])
    assert "--listen without --auth" in capsys.readouterr().err
    assert (launched["server_name"], launched["server_port"]) == ("0.0.0.0", 7999)
    app.main(["--auth", "ada:pw"])
    assert (launched["server_name"], launched["auth"]) == ("127.0.0.1", ("ada", "pw"))
    assert capsys.readouterr().err == ""


def test_auto_models_pick_sd15_only_when_its_weights_are_local(ui_settings, tmp_path, monkeypatch):
    assert webui.pick_models(ui_settings) == ("tiny", webui.TINY_BANNER)
    assert "python -m studio models fetch sd15" in webui.TINY_BANNER
    assert webui.pick_models(ui_settings, "sd15") == ("sd15", None)
    monkeypatch.setattr(ModelResolver, "find_local", lambda self, model_set, name: tmp_path)
    assert webui.pick_models(ui_settings) == ("sd15", None)
    with pytest.raises(Exception, match="neither a model set"):
        webui.pick_models(ui_settings, "nonsense")
