"""The published IR-SE50 ``input_layer`` and ``body`` keys and shapes (pSp's ``Backbone(50,
'ir_se')``), written out independently of the code under test; e4e's encoder and the ArcFace
recognizer both start with them."""

from __future__ import annotations


def bn(layout: dict[str, tuple[int, ...]], prefix: str, channels: int) -> None:
    """A ``BatchNorm`` layer's keys at ``prefix``."""
    for name in ("weight", "bias", "running_mean", "running_var"):
        layout[f"{prefix}.{name}"] = (channels,)
    layout[f"{prefix}.num_batches_tracked"] = ()


def ir_se50_stem_and_body_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``input_layer.*`` and ``body.0..23.*``."""
    layout = {"input_layer.0.weight": (64, 3, 3, 3)}
    bn(layout, "input_layer.1", 64)
    layout["input_layer.2.weight"] = (64,)
    unit = 0
    for cin, depth, count in ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3)):
        for k in range(count):
            c = cin if k == 0 else depth
            p = f"body.{unit}"
            if c != depth:
                layout[f"{p}.shortcut_layer.0.weight"] = (depth, c, 1, 1)
                bn(layout, f"{p}.shortcut_layer.1", depth)
            bn(layout, f"{p}.res_layer.0", c)
            layout[f"{p}.res_layer.1.weight"] = (depth, c, 3, 3)
            layout[f"{p}.res_layer.2.weight"] = (depth,)
            layout[f"{p}.res_layer.3.weight"] = (depth, depth, 3, 3)
            bn(layout, f"{p}.res_layer.4", depth)
            layout[f"{p}.res_layer.5.fc1.weight"] = (depth // 16, depth, 1, 1)
            layout[f"{p}.res_layer.5.fc2.weight"] = (depth, depth // 16, 1, 1)
            unit += 1
    return layout
