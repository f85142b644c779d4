"""BiSeNet face parsing: the published file layout, torch and ONNX runners, the studio's choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from adapters.bisenet import load_bisenet
from adapters.checkpoint import CheckpointError
from adapters.synthetic_bisenet import write_synthetic_bisenet
from studio.errors import ModelUnavailableError
from studio.face_parsers import BiSeNetFaceParser, export_bisenet_onnx, face_parser_for
from studio.faces.analyzer import FaceAnalyzer
from studio.faces.bisenet_onnx import OnnxFaceParser
from studio.faces.mesh_parser import MeshFaceParser
from studio.faces.onnx_session import ModelFormatError
from studio.faces.parsing import CLASSES
from studio.images import load_image
from studio.models import select_model_set
from studio.models.catalog import load_catalog
from studio.settings import Settings

CATALOG = Path(__file__).parents[1] / "assets" / "models" / "catalog.json"
"""This checkout's catalog (``studio.assets`` may resolve to another install's copy)."""

# Keys and shapes of the published 79999_iter.pth (zllrunning/face-parsing.PyTorch model.py and
# resnet.py): a sample from every part of the tree.
PUBLISHED = {
    "cp.resnet.conv1.weight": (64, 3, 7, 7),
    "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "cp.resnet.layer4.1.bn2.running_var": (512,),
    "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
    "cp.arm32.conv_atten.weight": (128, 128, 1, 1),
    "cp.arm32.bn_atten.weight": (128,),
    "cp.conv_head32.conv.weight": (128, 128, 3, 3),
    "cp.conv_avg.conv.weight": (128, 512, 1, 1),
    "ffm.convblk.conv.weight": (256, 256, 1, 1),
    "ffm.conv1.weight": (64, 256, 1, 1),
    "ffm.conv2.weight": (256, 64, 1, 1),
    "conv_out.conv.conv.weight": (256, 256, 3, 3),
    "conv_out.conv_out.weight": (19, 256, 1, 1),
    "conv_out16.conv_out.weight": (19, 64, 1, 1),
    "conv_out32.conv.bn.running_mean": (64,),
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_synthetic_bisenet(tmp_path_factory.mktemp("bisenet") / "79999_iter.pth", seed=1)


@pytest.fixture(scope="module")
def portrait(faces_dir):
    image = load_image(faces_dir / "person_b_1.jpg").rgb
    return image, FaceAnalyzer(encoders=(), mesher=None).analyze(image)[0]


def test_synthetic_weights_have_the_published_keys_and_load_strictly(weights):
    state = torch.load(weights, weights_only=True)
    for key, shape in PUBLISHED.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith(("sp.", "module.")) for k in state)  # no spatial path, no DDP
    assert sum(v.numel() for k, v in state.items() if "num_batches" not in k) > 13_000_000
    model = load_bisenet(weights)
    assert not model.training
    assert set(model.state_dict()) == set(state)
    with torch.no_grad():
        heads = model(torch.zeros(1, 3, 64, 96))
    assert [tuple(h.shape) for h in heads] == [(1, 19, 64, 96)] * 3


def test_a_file_of_another_kind_is_refused_naming_it(tmp_path, weights):
    other = tmp_path / "inswapper.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(CheckpointError, match=rf"{other} is not a BiSeNet face-parsing"):
        load_bisenet(other)
    state = torch.load(weights, weights_only=True)
    del state["ffm.conv1.weight"]
    state["conv_out.conv_out.weight"] = torch.zeros(11, 256, 1, 1)
    changed = tmp_path / "79999_iter.pth"
    torch.save(state, changed)
    with pytest.raises(CheckpointError, match=r"missing: ffm.conv1.weight; shape: conv_out"):
        load_bisenet(changed)


def test_the_torch_parser_maps_labels_back_onto_the_photo(weights, portrait):
    image, face = portrait
    parsing = BiSeNetFaceParser(weights).parse(image, face)
    assert parsing.shape == image.shape[:2] and parsing.parser == "bisenet"
    assert parsing.classes == frozenset(CLASSES)
    assert parsing.present("eye_g") is not None  # BiSeNet can check glasses
    x0, y0, x1, y1 = parsing.extent
    x, y, w, h = face.bbox
    assert x0 <= x and y0 <= y and x + w <= x1 and y + h <= y1
    outside = np.ones(parsing.shape, bool)
    outside[y0:y1, x0:x1] = False
    assert (parsing.labels[outside] == 0).all()
    assert len(np.unique(parsing.labels[y0:y1, x0:x1])) > 1  # random weights, varied labels


@pytest.fixture(scope="module")
def exported(tmp_path_factory, weights):
    path = tmp_path_factory.mktemp("bisenet-onnx") / "79999_iter.onnx"
    try:
        return export_bisenet_onnx(load_bisenet(weights), path)
    except (ImportError, RuntimeError) as exc:  # an exporter not installed here
        pytest.skip(f"torch.onnx.export is unavailable: {exc}")


def test_the_onnx_export_parses_like_torch(exported, weights, portrait):
    image, face = portrait
    onnx_parsing = OnnxFaceParser(exported).parse(image, face)
    torch_parsing = BiSeNetFaceParser(weights).parse(image, face)
    assert onnx_parsing.parser == "bisenet-onnx" and onnx_parsing.extent == torch_parsing.extent
    assert (onnx_parsing.labels == torch_parsing.labels).mean() > 0.99


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter
def test_an_onnx_file_of_another_signature_is_refused(tmp_path):
    path = tmp_path / "other.onnx"
    torch.onnx.export(
        torch.nn.Conv2d(3, 19, 1), (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False
    )
    with pytest.raises(ModelFormatError, match=r"other.onnx takes \[\(1, 3, 64, 64\)\]"):
        OnnxFaceParser(path)


def test_the_studio_uses_bisenet_when_its_file_is_present(tmp_path, weights):
    def settings(**weights_override):
        return Settings(
            data_dir=tmp_path / "data",
            models_dir=tmp_path / "models",
            output_dir=tmp_path / "out",
            device="cpu",
            weights=weights_override,
        )

    tiny = select_model_set("tiny")
    assert isinstance(face_parser_for(settings(), tiny), MeshFaceParser)
    chosen = face_parser_for(settings(face_parser=weights), tiny)
    assert isinstance(chosen, BiSeNetFaceParser) and chosen.path == weights
    # The catalog's own place for it (models dir mirroring the hub repository) is found too.
    sd15 = load_catalog(CATALOG)["sd15"]
    component = sd15.component("face_parser")
    assert component.optional and component.licence.startswith("MIT")
    local = tmp_path / "models" / component.repo / component.files[0]
    local.parent.mkdir(parents=True)
    local.write_bytes(weights.read_bytes())
    assert isinstance(face_parser_for(settings(), sd15), BiSeNetFaceParser)
    with pytest.raises(ModelUnavailableError, match="--weights face_parser=.*no such file"):
        face_parser_for(settings(face_parser=tmp_path / "missing.pth"), tiny)


def test_the_studio_runs_an_onnx_export_when_given_one(tmp_path, exported):
    settings = Settings(
        data_dir=tmp_path,
        models_dir=tmp_path,
        output_dir=tmp_path,
        weights={"face_parser": exported},
    )
    chosen = face_parser_for(settings, select_model_set("tiny"))
    assert isinstance(chosen, OnnxFaceParser) and chosen.path == exported
