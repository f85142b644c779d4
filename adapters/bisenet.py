"""BiSeNet face parsing as published in zllrunning/face-parsing.PyTorch (MIT): ``79999_iter.pth``.

The module tree reproduces the published one, so the unmodified file loads with strict keys:
``cp`` (context path: a ResNet-18 ``cp.resnet.*`` built here, never downloaded, then attention
refinement ``cp.arm16``/``cp.arm32``, ``cp.conv_head16``/``cp.conv_head32``, ``cp.conv_avg``),
``ffm`` (feature fusion of the ResNet's 1/8 features, which stand in for the spatial path as in
the published model, with the context path's), and three heads ``conv_out`` (the parsing),
``conv_out16``/``conv_out32`` (training's auxiliary heads, kept for the keys and the export).
Input ``[N, 3, H, W]`` RGB normalised with ImageNet mean/std (H, W multiples of 32, 512 as
trained); output three ``[N, 19, H, W]`` logit maps, the first being the parsing.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from adapters.checkpoint import CheckpointError, load_state_dict

NUM_CLASSES = 19
"""CelebAMask-HQ's 18 parts and background."""

_KIND_KEYS = ("cp.resnet.conv1.weight", "cp.arm16.conv.conv.weight", "conv_out.conv_out.weight")


class ConvBNReLU(nn.Sequential):
    """``conv`` (no bias), ``bn``, ReLU."""

    def __init__(self, in_chan: int, out_chan: int, ks: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_chan, out_chan, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chan)
        self.relu = nn.ReLU(inplace=True)


class BasicBlock(nn.Module):
    """ResNet basic block; ``downsample`` (1x1 conv + BN) when the shape changes."""

    def __init__(self, in_chan: int, out_chan: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chan, out_chan, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chan)
        self.conv2 = nn.Conv2d(out_chan, out_chan, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chan)
        self.downsample = None
        if in_chan != out_chan or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chan, out_chan, 1, stride, bias=False), nn.BatchNorm2d(out_chan)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def _layer(in_chan: int, out_chan: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_chan, out_chan, stride), BasicBlock(out_chan, out_chan))


class Resnet18(nn.Module):
    """ResNet-18 without its classifier; returns the 1/8, 1/16 and 1/32 feature maps."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _layer(64, 64, 1)
        self.layer2 = _layer(64, 128, 2)
        self.layer3 = _layer(128, 256, 2)
        self.layer4 = _layer(256, 512, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinementModule(nn.Module):
    def __init__(self, in_chan: int, out_chan: int):
        super().__init__()
        self.conv = ConvBNReLU(in_chan, out_chan)
        self.conv_atten = nn.Conv2d(out_chan, out_chan, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_chan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))
        return feat * atten


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = Resnet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(F.adaptive_avg_pool2d(feat32, 1))
        feat32_sum = self.arm32(feat32) + F.interpolate(avg, feat32.shape[2:], mode="nearest")
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, feat16.shape[2:], mode="nearest"))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, feat8.shape[2:], mode="nearest"))
        return feat8, feat16_up, feat32_up


class FeatureFusionModule(nn.Module):
    def __init__(self, in_chan: int, out_chan: int):
        super().__init__()
        self.convblk = ConvBNReLU(in_chan, out_chan, ks=1, padding=0)
        self.conv1 = nn.Conv2d(out_chan, out_chan // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_chan // 4, out_chan, 1, bias=False)

    def forward(self, fsp: torch.Tensor, fcp: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = F.adaptive_avg_pool2d(feat, 1)
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(atten))))
        return feat * atten + feat


class BiSeNetOutput(nn.Module):
    def __init__(self, in_chan: int, mid_chan: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(in_chan, mid_chan)
        self.conv_out = nn.Conv2d(mid_chan, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """The published face parser; ``forward`` returns ``(parsing, aux16, aux32)`` logits at the
    input's size."""

    def __init__(self, n_classes: int = NUM_CLASSES):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, n_classes)
        self.conv_out16 = BiSeNetOutput(128, 64, n_classes)
        self.conv_out32 = BiSeNetOutput(128, 64, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = x.shape[2:]
        feat8, feat_cp8, feat_cp16 = self.cp(x)
        heads = (
            self.conv_out(self.ffm(feat8, feat_cp8)),
            self.conv_out16(feat_cp8),
            self.conv_out32(feat_cp16),
        )
        return tuple(F.interpolate(h, size, mode="bilinear", align_corners=True) for h in heads)


def load_bisenet(path: str | Path, device: str | torch.device = "cpu") -> BiSeNet:
    """The published ``79999_iter.pth`` (or a file in its layout) as an eval-mode :class:`BiSeNet`.

    Read through :func:`adapters.checkpoint.load_state_dict` (``weights_only``); strict keys and
    shapes. A file of another kind, or one with missing, extra or reshaped tensors, is a
    :class:`~adapters.checkpoint.CheckpointError` naming the file and what differs.
    """
    path = Path(path)
    state = load_state_dict(path)
    if not all(key in state for key in _KIND_KEYS):
        sample = ", ".join(list(state)[:3]) or "nothing"
        raise CheckpointError(
            f"{path} is not a BiSeNet face-parsing checkpoint (79999_iter.pth of "
            f"zllrunning/face-parsing.PyTorch): it lacks {', '.join(_KIND_KEYS)} and holds "
            f"{sample} ...; use the file the model catalog's 'face_parser' names"
        )
    model = BiSeNet(NUM_CLASSES)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    reshaped = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or reshaped:
        problems = [
            f"{label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape", reshaped),
            )
            if items
        ]
        raise CheckpointError(
            f"{path} does not fit the published 19-class BiSeNet ({'; '.join(problems)}); use "
            "the unmodified 79999_iter.pth"
        )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval().requires_grad_(False)
