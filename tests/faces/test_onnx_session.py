"""ONNX Runtime sessions for the face models: providers from the settings, clear load errors."""

from __future__ import annotations

import pytest

from studio.errors import ConfigError
from studio.faces.detect import yunet_model_path
from studio.faces.onnx_session import (
    COREML,
    CPU,
    CUDA,
    ModelFormatError,
    available_providers,
    create_session,
    face_providers,
    select_providers,
)
from studio.settings import load_settings

GPU_BUILD = ["TensorrtExecutionProvider", CUDA, CPU]
MAC_BUILD = [COREML, "AzureExecutionProvider", CPU]


@pytest.mark.parametrize(
    ("available", "device", "expected"),
    [
        (GPU_BUILD, "auto", [CUDA, CPU]),
        (GPU_BUILD, "cuda", [CUDA, CPU]),
        (GPU_BUILD, "cuda:1", [(CUDA, {"device_id": 1}), CPU]),
        (GPU_BUILD, "cpu", [CPU]),
        (GPU_BUILD, "mps", [CPU]),
        (MAC_BUILD, "auto", [COREML, CPU]),
        (MAC_BUILD, "mps", [COREML, CPU]),
        (MAC_BUILD, "cuda", [CPU]),
        ([CPU], "auto", [CPU]),
        ([CUDA, COREML, CPU], "auto", [CUDA, COREML, CPU]),
    ],
)
def test_accelerated_providers_are_used_when_present_cpu_last(available, device, expected):
    assert select_providers(available, device) == expected


def test_this_install_runs_the_face_models_on_what_it_has():
    import onnxruntime

    providers = available_providers("auto")
    assert providers[-1] == CPU
    assert all(p in onnxruntime.get_available_providers() for p in providers)


def test_faces_device_setting_forces_the_cpu_and_is_checked(studio_env):
    assert load_settings(env={}).faces_device == "auto"
    settings = load_settings(env={"STUDIO_FACES_DEVICE": "cpu", "STUDIO_DEVICE": "cuda"})
    assert (settings.device, settings.faces_device) == ("cuda", "cpu")
    assert face_providers(settings) == [CPU]
    with pytest.raises(ConfigError, match="faces_device 'gpu' is not supported"):
        load_settings(env={"STUDIO_FACES_DEVICE": "gpu"})


def test_sessions_load_rewritten_graphs_and_name_files_they_cannot_load(tmp_path):
    session = create_session(
        yunet_model_path(), label="YuNet", prepare=True, free_io_shapes=True, float_qdq=True
    )
    assert session.get_providers() == [CPU]
    assert session.get_inputs()[0].shape[2:] != [640, 640]  # the fixed input size was freed

    junk = tmp_path / "det_10g.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelFormatError, match=r"SCRFD model .*det_10g\.onnx cannot be loaded"):
        create_session(junk, label="SCRFD")
    with pytest.raises(ModelFormatError, match=r"SFace model .*det_10g\.onnx is not an ONNX file"):
        create_session(junk, label="SFace", prepare=True)
