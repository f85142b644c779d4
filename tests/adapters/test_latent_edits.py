"""W+ edits: published direction files and GANSpace tables, each edit only on its rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapters.latent_edits import load_direction, load_ganspace


@pytest.fixture
def w_plus():
    return torch.randn(2, 18, 512, generator=torch.Generator().manual_seed(0))


def test_interfacegan_direction_moves_every_row(tmp_path, w_plus):
    direction = torch.randn(1, 512)
    torch.save(direction, tmp_path / "age.pt")
    age = load_direction(tmp_path / "age.pt")
    assert age.name == "age" and age.direction.shape == (18, 512)
    edited = age.apply(w_plus, 2.0)
    torch.testing.assert_close(edited - w_plus, 2.0 * direction.expand(2, 18, 512))


def test_per_layer_direction_changes_only_its_layers(tmp_path, w_plus):
    direction = np.zeros((18, 512), np.float32)
    direction[4:8] = np.random.default_rng(0).normal(size=(4, 512))
    np.save(tmp_path / "glasses.npy", direction)
    edited = load_direction(tmp_path / "glasses.npy").apply(w_plus, -1.5)
    changed = (edited != w_plus).any(dim=-1).any(dim=0)
    assert changed.nonzero().flatten().tolist() == [4, 5, 6, 7]


def test_ganspace_sets_the_coordinate_on_its_rows(tmp_path, w_plus):
    g = torch.Generator().manual_seed(1)
    comp = torch.nn.functional.normalize(torch.randn(80, 1, 512, generator=g), dim=-1)
    pca = {"mean": torch.randn(1, 512, generator=g), "comp": comp, "std": torch.rand(80) + 0.5}
    torch.save(pca, tmp_path / "ffhq_pca.pt")
    (tmp_path / "ganspace_configs.csv").write_text(
        "smile\t46\t4\t5\t-8\neye_openness\t54\t7\t8\t20\n"
    )
    edits = load_ganspace(tmp_path / "ffhq_pca.pt", tmp_path / "ganspace_configs.csv")
    smile = edits["smile"]
    edited = smile.apply(w_plus)
    changed = (edited != w_plus).any(dim=-1).any(dim=0)
    assert changed.nonzero().flatten().tolist() == [4]
    # On the edited row the coordinate (measured from row 0's centred W) moved to the strength.
    moved = edited[:, 4] - w_plus[:, 4]
    coordinate = (w_plus[:, 0] - pca["mean"]) @ comp[46, 0] / pca["std"][46]
    torch.testing.assert_close(moved @ comp[46, 0], (-8.0 - coordinate) * pca["std"][46])
    assert not torch.equal(smile.apply(w_plus, 3.0), edited)


def test_bad_direction_and_table_files_are_named(tmp_path, w_plus):
    np.save(tmp_path / "wrong.npy", np.zeros((14, 512), np.float32))
    with pytest.raises(ValueError, match=r"wrong.npy has shape \[14, 512\]"):
        load_direction(tmp_path / "wrong.npy")
    torch.save({"mean": torch.zeros(1, 512)}, tmp_path / "pca.pt")
    (tmp_path / "table.csv").write_text("x\t1\t2\t3\t4\n")
    with pytest.raises(ValueError, match="not a GANSpace PCA"):
        load_ganspace(tmp_path / "pca.pt", tmp_path / "table.csv")
    np.save(tmp_path / "ok.npy", np.zeros((512,), np.float32))
    with pytest.raises(ValueError, match=r"\[batch, 18, 512\]"):
        load_direction(tmp_path / "ok.npy").apply(torch.zeros(1, 512), 1.0)
