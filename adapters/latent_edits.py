"""Semantic edits of a StyleGAN2 W+ (age, smile, pose, glasses ...), from the published files.

Two kinds, as e4e and w-plus-adapter ship them:

- :class:`LatentDirection`: a direction added with an amount, ``w + amount * direction``.
  InterFaceGAN files (``age.pt``: ``[1, 512]``, or ``[1, 18, 512]``) and per-layer directions
  (``glasses.npy``: ``[18, 512]``) load with :func:`load_direction`; a ``[512]`` direction moves
  every row, a per-row one only the rows where it is non-zero.
- :class:`GanSpaceEdit`: GANSpace *sets* a PCA coordinate of the first W+ row to ``strength``
  on a range of rows, from ``ffhq_pca.pt`` (``mean``, ``comp`` ``[80, 1, 512]``, ``std``) and a
  config table of ``name, component, first row, end row, strength`` (:func:`load_ganspace`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

#: W+ rows of the 1024-px FFHQ generator.
N_LATENT = 18


@dataclass(frozen=True, eq=False)
class LatentDirection:
    """A direction in W+, ``[n_latent, dim]``, moved along by an amount."""

    name: str
    direction: torch.Tensor

    def apply(self, w_plus: torch.Tensor, amount: float) -> torch.Tensor:
        """``w_plus + amount * direction`` for W+ ``[batch, n_latent, dim]``."""
        _check_w_plus(w_plus, tuple(self.direction.shape), self.name)
        return w_plus + amount * self.direction.to(w_plus)


@dataclass(frozen=True, eq=False)
class GanSpaceEdit:
    """A GANSpace edit: PCA ``component`` set to ``strength`` on rows ``start:end``."""

    name: str
    component: int
    start: int
    end: int
    strength: float
    mean: torch.Tensor  #: ``[1, dim]`` W mean
    comp: torch.Tensor  #: ``[components, 1, dim]`` unit PCA components
    std: torch.Tensor  #: ``[components]`` their standard deviations

    def apply(self, w_plus: torch.Tensor, strength: float | None = None) -> torch.Tensor:
        """Set each face's coordinate (read from its first row) to ``strength`` on the rows.

        ``strength`` defaults to the table's; the published edit.
        """
        dim = self.comp.shape[-1]
        _check_w_plus(w_plus, (w_plus.shape[1] if w_plus.ndim == 3 else N_LATENT, dim), self.name)
        if not 0 <= self.start < self.end <= w_plus.shape[1]:
            raise ValueError(
                f"GANSpace edit {self.name!r} acts on rows {self.start}:{self.end}, outside this "
                f"W+ of {w_plus.shape[1]} rows"
            )
        target = self.strength if strength is None else strength
        comp = self.comp[self.component].reshape(-1).to(w_plus)
        std = self.std[self.component].to(w_plus)
        coordinate = ((w_plus[:, 0] - self.mean.reshape(-1).to(w_plus)) @ comp) / std
        delta = (target - coordinate)[:, None] * comp * std
        edited = w_plus.clone()
        edited[:, self.start : self.end] += delta[:, None, :]
        return edited


def load_direction(path: str | Path, *, n_latent: int = N_LATENT) -> LatentDirection:
    """A direction file: ``.pt`` (``torch.load(weights_only=True)``) or ``.npy``, of shape
    ``[dim]``, ``[1, dim]`` (every row), ``[n_latent, dim]`` or ``[1, n_latent, dim]``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"direction file {path} does not exist")
    try:
        if path.suffix == ".npy":
            direction = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            direction = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file means the same to the user
        raise ValueError(f"cannot read direction file {path} safely: {error}") from error
    if not isinstance(direction, torch.Tensor):
        raise ValueError(f"direction file {path} holds a {type(direction).__name__}, not a tensor")
    shape = tuple(direction.shape)
    if direction.ndim == 3 and shape[0] == 1:
        direction = direction[0]
    if direction.ndim == 1 or (direction.ndim == 2 and direction.shape[0] == 1):
        direction = direction.reshape(1, -1).expand(n_latent, -1)
    if direction.ndim != 2 or direction.shape[0] != n_latent:
        raise ValueError(
            f"direction file {path} has shape {list(shape)}; expected [512] or [1, 512] (one "
            f"direction for every row), or [{n_latent}, 512] / [1, {n_latent}, 512] (per row)"
        )
    return LatentDirection(name=path.stem, direction=direction.float().contiguous())


def load_ganspace(pca_path: str | Path, config_path: str | Path) -> dict[str, GanSpaceEdit]:
    """GANSpace edits by name from ``ffhq_pca.pt`` and its config table (tab-separated rows
    ``name, component, start, end, strength``, as the published ``ganspace_configs.csv``)."""
    pca_path, config_path = Path(pca_path), Path(config_path)
    try:
        pca = torch.load(pca_path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file means the same to the user
        raise ValueError(f"cannot read GANSpace PCA {pca_path} safely: {error}") from error
    if not isinstance(pca, dict) or not all(k in pca for k in ("mean", "comp", "std")):
        raise ValueError(f"{pca_path} is not a GANSpace PCA: expected 'mean', 'comp' and 'std'")
    edits = {}
    with config_path.open(newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t"), start=1):
            if not row or not row[0].strip():
                continue
            try:
                component, start, end, strength = (int(v) for v in row[1:5])
            except ValueError as error:
                raise ValueError(
                    f"{config_path} line {number}: expected name, component, start, end, "
                    f"strength (tab-separated integers), got {row}"
                ) from error
            if not 0 <= component < len(pca["std"]):
                raise ValueError(
                    f"{config_path} line {number}: component {component} is not among the "
                    f"{len(pca['std'])} of {pca_path.name}"
                )
            name = row[0].strip()
            edits[name] = GanSpaceEdit(
                name, component, start, end, float(strength), pca["mean"], pca["comp"], pca["std"]
            )
    return edits


def _check_w_plus(w_plus: torch.Tensor, rows_dim: tuple[int, int], name: str) -> None:
    if w_plus.ndim != 3 or tuple(w_plus.shape[1:]) != rows_dim:
        raise ValueError(
            f"edit {name!r} needs W+ [batch, {rows_dim[0]}, {rows_dim[1]}], got "
            f"{list(w_plus.shape)}"
        )
