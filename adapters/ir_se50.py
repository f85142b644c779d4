"""The IR-SE50 face recognizer e4e and pSp train their identity loss with (``model_ir_se50.pth``).

:class:`IRSE50Recognizer` is TreB1eN/InsightFace_Pytorch's ``Backbone(50, mode='ir_se')`` key for
key: ``input_layer`` (conv, BN, PReLU), ``body.0..23`` (the same ``bottleneck_IR_SE`` units as
e4e's encoder body, :func:`~adapters.e4e.ir_se50_stem_and_body`) and ``output_layer`` (BN, dropout,
flatten, ``Linear(512 * 7 * 7, 512)``, BN1d), returning unit embeddings of 112-px faces.

:meth:`IRSE50Recognizer.embed_ffhq` takes FFHQ-aligned crops (256 px, RGB in ``[-1, 1]``) and,
as pSp's ``IDLoss`` does, cuts the face box ``[35:223, 32:220]`` and average-pools it to 112 px.
:func:`load_ir_se50` reads the published file unmodified (a plain state dict) with
``torch.load(weights_only=True)`` and loads it with strict keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from adapters.checkpoint import CheckpointError, load_state_dict
from adapters.e4e import IR_SE50_UNITS, IR_SE50_WIDTHS, check_state_dict, ir_se50_stem_and_body

#: The published file name (pSp/e4e's ``model_paths['ir_se50']``).
IR_SE50_FILE = "model_ir_se50.pth"
#: Side of the recognizer's input; the body reduces it 16x, to the 7 x 7 the linear reads.
ID_INPUT_SIZE = 112
#: pSp's face box in a 256-px FFHQ crop: rows 35:223, columns 32:220.
FFHQ_FACE_BOX = (35, 223, 32, 220)
_FFHQ_SIDE = 256
_FEATURE_SIDE = ID_INPUT_SIZE // 16


@dataclass(frozen=True)
class IRSE50Config:
    """Recognizer shape: the four stage widths and the embedding width (512 published)."""

    widths: tuple[int, int, int, int] = IR_SE50_WIDTHS
    embedding_dim: int = 512

    @classmethod
    def from_state_dict(cls, state: dict) -> IRSE50Config:
        """Read the shape from a ``model_ir_se50.pth`` state dict."""
        starts = [sum(IR_SE50_UNITS[:stage]) for stage in range(len(IR_SE50_UNITS))]
        widths = tuple(int(state[f"body.{i}.res_layer.1.weight"].shape[0]) for i in starts)
        return cls(widths=widths, embedding_dim=int(state["output_layer.3.weight"].shape[0]))


class IRSE50Recognizer(nn.Module):
    """IR-SE50 ArcFace backbone: 112-px faces in ``[-1, 1]`` to unit embeddings."""

    def __init__(self, config: IRSE50Config | None = None):
        super().__init__()
        config = config or IRSE50Config()
        self.config = config
        last = config.widths[-1]
        self.input_layer, self.body = ir_se50_stem_and_body(config.widths)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(last),
            nn.Dropout(0.6),  # pSp's IDLoss setting; inactive in eval
            nn.Flatten(),
            nn.Linear(last * _FEATURE_SIDE**2, config.embedding_dim),
            nn.BatchNorm1d(config.embedding_dim),
        )

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """Faces ``[batch, 3, 112, 112]`` to unit embeddings ``[batch, embedding_dim]``."""
        if faces.ndim != 4 or tuple(faces.shape[1:]) != (3, ID_INPUT_SIZE, ID_INPUT_SIZE):
            raise ValueError(
                f"IR-SE50 takes faces [batch, 3, {ID_INPUT_SIZE}, {ID_INPUT_SIZE}], "
                f"got {list(faces.shape)}; use embed_ffhq for FFHQ crops"
            )
        x = self.output_layer(self.body(self.input_layer(faces)))
        return F.normalize(x, dim=1)

    def embed_ffhq(self, crops: torch.Tensor) -> torch.Tensor:
        """Unit embeddings of FFHQ-aligned crops ``[batch, 3, S, S]`` in ``[-1, 1]`` (S = 256 as
        e4e's input; other sides scale pSp's face box)."""
        if crops.ndim != 4 or crops.shape[1] != 3 or crops.shape[-1] != crops.shape[-2]:
            raise ValueError(f"FFHQ crops must be [batch, 3, S, S], got {list(crops.shape)}")
        side = crops.shape[-1]
        top, bottom, left, right = (round(v * side / _FFHQ_SIDE) for v in FFHQ_FACE_BOX)
        face = crops[:, :, top:bottom, left:right]
        face = F.adaptive_avg_pool2d(face, ID_INPUT_SIZE)
        weight = self.input_layer[0].weight
        return self(face.to(device=weight.device, dtype=weight.dtype))


def load_ir_se50(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> IRSE50Recognizer:
    """The recognizer from ``model_ir_se50.pth`` (or a file of its layout), in eval mode with
    frozen weights. A file of another kind is a :class:`~adapters.checkpoint.CheckpointError`
    naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"face recognizer {path} does not exist; place {IR_SE50_FILE}")
    state = load_state_dict(path)
    if "state_dict" in state or "input_layer.0.weight" not in state:
        found = ", ".join(sorted(state)[:4])
        raise CheckpointError(
            f"{path} is not an IR-SE50 face recognizer ({IR_SE50_FILE}, a plain state dict with "
            f"input_layer.*, body.*, output_layer.*); found keys {found}"
        )
    layout = (
        f"the published IR-SE50 layout ({IR_SE50_FILE} from TreB1eN/InsightFace_Pytorch, as "
        "pSp/e4e use it)"
    )
    try:
        config = IRSE50Config.from_state_dict(state)
    except KeyError as error:
        raise CheckpointError(f"{path} does not match {layout}: no {error}") from error
    with torch.device("meta"):
        model = IRSE50Recognizer(config)
    try:
        fix = f"Use the unmodified {IR_SE50_FILE}"
        check_state_dict(model.state_dict(), state, path, layout, fix)
    except ValueError as error:
        raise CheckpointError(str(error)) from error
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
