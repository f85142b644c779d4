from pathlib import Path

import pytest

from studio.errors import ConfigError
from studio.settings import load_settings


def test_defaults_live_under_user_dirs_not_cwd(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    s = load_settings(env={"XDG_DATA_HOME": str(tmp_path / "data")})
    assert s.data_dir.is_absolute()
    assert s.models_dir == tmp_path / "cache" / "portrait-studio" / "models"
    assert s.output_dir == tmp_path / "data" / "portrait-studio" / "outputs"
    assert (s.device, s.dtype, s.offline) == ("auto", "auto", False)
    assert not str(s.data_dir).startswith(str(Path.cwd()))


def test_precedence_flag_over_env_over_config(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        'data_dir = "/cfg/data"\nmodels_dir = "/cfg/models"\ndevice = "cpu"\n'
        '[weights]\nfaceid = "/cfg/faceid.bin"\narcface = "/cfg/arc.onnx"\n'
    )
    env = {"STUDIO_CONFIG": str(config), "STUDIO_MODELS_DIR": "/env/models", "HF_HUB_OFFLINE": "1"}
    s = load_settings(env=env, data_dir="/flag/data", weights={"faceid": "/flag/faceid.bin"})
    assert s.data_dir == Path("/flag/data")
    assert s.models_dir == Path("/env/models")
    assert s.device == "cpu"
    assert s.offline is True
    assert s.weights == {"faceid": Path("/flag/faceid.bin"), "arcface": Path("/cfg/arc.onnx")}


def test_auto_device_and_dtype_on_cpu():
    s = load_settings(env={}, device="cpu")
    import torch

    assert s.torch_device() == "cpu"
    assert s.torch_dtype() == torch.float32
    assert load_settings(env={}, device="cpu", dtype="bfloat16").torch_dtype() == torch.bfloat16


@pytest.mark.parametrize(
    ("env", "flags", "message"),
    [
        ({"STUDIO_DEVICE": "tpu"}, {}, "device 'tpu' is not supported"),
        ({}, {"dtype": "int8"}, "dtype 'int8' is not supported"),
        ({"STUDIO_CONFIG": "/nope/config.toml"}, {}, "/nope/config.toml does not exist"),
    ],
)
def test_bad_settings_name_the_value(env, flags, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(env=env, **flags)


def test_config_file_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("data_dir = [")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(env={"STUDIO_CONFIG": str(bad)})
    typo = tmp_path / "typo.toml"
    typo.write_text('modles_dir = "/x"\n')
    with pytest.raises(ConfigError, match="unknown key.*modles_dir"):
        load_settings(env={"STUDIO_CONFIG": str(typo)})
