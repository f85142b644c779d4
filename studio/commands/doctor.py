"""``python -m studio doctor``: what this machine offers the studio."""

from __future__ import annotations

import argparse
import importlib.util
from importlib.metadata import PackageNotFoundError, version

from studio.commands.models import set_usable
from studio.faces.onnx_session import face_providers
from studio.models.catalog import load_catalog
from studio.models.resolver import ModelResolver
from studio.settings import Settings

OPTIONAL_PACKAGES = {
    "mediapipe": "face mesh landmarks (extra 'mesh')",
    "dlib": "dlib identity encoder (extra 'dlib')",
    "xformers": "memory-efficient attention (extra 'cuda')",
}


def register(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("doctor", parents=[common], help="check the installation and hardware")
    p.set_defaults(handler=run)


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def run(args: argparse.Namespace, settings: Settings) -> int:
    import onnxruntime
    import torch

    device = settings.torch_device()
    print(f"torch          {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")
    if torch.cuda.is_available():
        print(f"cuda device    {torch.cuda.get_device_name(0)}")
    print(f"device         {device} (setting: {settings.device})")
    print(f"dtype          {str(settings.torch_dtype()).removeprefix('torch.')}")
    print(f"diffusers      {_version('diffusers')}")
    providers = ", ".join(onnxruntime.get_available_providers())
    print(f"onnxruntime    {onnxruntime.__version__}: {providers}")
    chosen = [p if isinstance(p, str) else p[0] for p in face_providers(settings)]
    print(f"face models    {', '.join(chosen)} (setting: {settings.faces_device})")
    for module, use in OPTIONAL_PACKAGES.items():
        found = "available" if importlib.util.find_spec(module) else "not installed"
        print(f"{module:<14} {found} - {use}")
    print(f"offline        {'yes' if settings.offline else 'no'}")
    print(f"data dir       {settings.data_dir}")
    print(f"models dir     {settings.models_dir}")
    print(f"output dir     {settings.output_dir}")
    resolver = ModelResolver(settings)
    for model_set in load_catalog().values():
        state = "usable" if set_usable(resolver, model_set) else "needs weights (see `models list`)"
        print(f"set {model_set.name:<10} {state}")
    return 0
