"""Test session setup: fully offline, every non-loopback connection is a failure."""

from __future__ import annotations

import os

# Set before anything imports huggingface_hub, which reads it at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import ipaddress
import socket
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"
FACES_DIR = DATA_DIR / "faces"


class NetworkAccessError(AssertionError):
    """Raised when a test tries to reach the network."""


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guarded_connect(self, address):
    if not _is_local(address):
        raise NetworkAccessError(f"test tried to open a network connection to {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_local(address):
        raise NetworkAccessError(f"test tried to open a network connection to {address!r}")
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """The real test portraits (see tests/data/faces/CREDITS.md)."""
    return FACES_DIR


@pytest.fixture
def studio_env(tmp_path, monkeypatch) -> Path:
    """Point every studio directory at a fresh temporary folder."""
    for name in ("DATA", "OUTPUT"):
        monkeypatch.setenv(f"STUDIO_{name}_DIR", str(tmp_path / name.lower()))
    monkeypatch.setenv("STUDIO_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.delenv("STUDIO_CONFIG", raising=False)
    monkeypatch.delenv("STUDIO_DEVICE", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A models dir holding the tiny sets, built once per test session."""
    from studio.models.tiny import build

    models_dir = tmp_path_factory.mktemp("models")
    build(models_dir, "tiny-sd15")
    build(models_dir, "tiny-sdxl")
    return models_dir


@pytest.fixture
def tiny_env(studio_env, tiny_models_dir, monkeypatch) -> Path:
    """Like ``studio_env`` but with the session's prebuilt tiny sets as the models dir."""
    monkeypatch.setenv("STUDIO_MODELS_DIR", str(tiny_models_dir))
    return studio_env


@pytest.fixture
def studio(tiny_env, faces_dir):
    """A studio on the tiny set with the profile "Ada" made of two photos of one person."""
    from studio.orchestrator import Studio
    from studio.settings import load_settings

    studio = Studio(load_settings(), "tiny")
    with studio.library() as library:
        library.create(
            "Ada", [faces_dir / "person_a_1.jpg", faces_dir / "person_a_2.jpg"], consent=True
        )
    return studio


@pytest.fixture(scope="session")
def ffhq_portrait(faces_dir):
    """A real portrait (RGB) and its FFHQ alignment points, as the W+ path finds them."""
    import cv2

    from studio.faces.align import ffhq_points_from_kps
    from studio.faces.detect import YuNetDetector

    image = cv2.cvtColor(cv2.imread(str(faces_dir / "person_b_1.jpg")), cv2.COLOR_BGR2RGB)
    return image, ffhq_points_from_kps(YuNetDetector().detect(image)[0].kps)
