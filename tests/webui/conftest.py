"""Shared fixtures of the web UI tests: one tiny-set studio and one served app per session.

The studio's settings point at session temporary folders by flags (no environment changes), so
the tiny pipeline loads once for all web UI tests.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator

import pytest

from app import build_demo, launch_options
from studio import webui
from studio.orchestrator import Studio
from studio.settings import Settings, load_settings


@pytest.fixture(scope="session")
def ui_settings(tmp_path_factory, tiny_models_dir) -> Settings:
    root = tmp_path_factory.mktemp("webui")
    return load_settings(
        data_dir=root / "data", output_dir=root / "outputs", models_dir=tiny_models_dir
    )


@pytest.fixture(scope="session")
def studio(ui_settings) -> Studio:
    return Studio(ui_settings, "tiny")


@pytest.fixture(scope="session")
def uploads(tmp_path_factory, faces_dir) -> dict[str, str]:
    """The test portraits as Gradio hands uploads over (temp paths), plus two bad "photos"."""
    folder = tmp_path_factory.mktemp("gradio-upload")
    files = {}
    for photo in sorted(faces_dir.glob("*.jpg")):
        files[photo.stem] = str(shutil.copy(photo, folder / photo.name))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    files |= {"empty": str(folder / "empty.jpg"), "notes": str(folder / "notes.jpg")}
    return files


@pytest.fixture(scope="session")
def ada(studio, uploads) -> str:
    """Profile "Ada": two photos of person A."""
    webui.create_profile(studio, "Ada", [uploads["person_a_1"], uploads["person_a_2"]], True)
    return "Ada"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def served(studio, ui_settings) -> Iterator[str]:
    """The app on a free loopback port, as ``python app.py`` serves it; yields its URL."""
    demo = build_demo(studio, banner=webui.TINY_BANNER)
    _, url, _ = demo.launch(
        **launch_options(ui_settings, port=free_port()), prevent_thread_lock=True, quiet=True
    )
    yield url.rstrip("/")
    demo.close()
