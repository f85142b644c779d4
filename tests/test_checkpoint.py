"""Weight files are read without ever running pickled code."""

import pytest
import torch
from safetensors.torch import save_file

from adapters.checkpoint import UnsafeCheckpointError, load_state_dict


class Payload:
    """An object whose unpickling would run code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


class Custom:
    pass


def test_tensor_only_bin_and_safetensors_load(tmp_path):
    weights = {
        "image_proj.proj.weight": torch.randn(4, 3),
        "ip_adapter.1.to_k_ip.weight": torch.ones(2),
    }
    torch.save(
        {"image_proj": {"proj.weight": weights["image_proj.proj.weight"]}}, tmp_path / "a.bin"
    )
    save_file(weights, tmp_path / "a.safetensors")
    nested = load_state_dict(tmp_path / "a.bin")
    assert torch.equal(nested["image_proj"]["proj.weight"], weights["image_proj.proj.weight"])
    flat = load_state_dict(tmp_path / "a.safetensors")
    assert set(flat) == set(weights)


def test_code_running_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.zeros(1), "evil": Payload(marker)}, tmp_path / "evil.bin")
    with pytest.raises(UnsafeCheckpointError, match="pickled Python objects"):
        load_state_dict(tmp_path / "evil.bin")
    assert not marker.exists()


def test_pickle_of_custom_class_is_refused(tmp_path):
    torch.save({"w": torch.zeros(1), "cfg": Custom()}, tmp_path / "custom.pt")
    with pytest.raises(UnsafeCheckpointError, match="custom.pt"):
        load_state_dict(tmp_path / "custom.pt")


def test_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "w.pkl").write_bytes(b"\x80\x04N.")
    with pytest.raises(ValueError, match="unknown format '.pkl'"):
        load_state_dict(tmp_path / "w.pkl")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_state_dict(tmp_path / "nope.safetensors")
