"""Adapter architectures as classes behind one protocol: each recognises its own published
layout, names its families as before, and feeds its projection as it was trained."""

from __future__ import annotations

import math

import pytest
import torch

from adapters.formats import ARCHITECTURES, architecture, family_architecture
from adapters.synthetic import FAMILIES, published_layout


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_published_layout_is_recognised_by_its_architecture_only(family, sd15_unet, sdxl_unet):
    name, sdxl = FAMILIES[family]
    layout = published_layout(family, unet=sdxl_unet if sdxl else sd15_unet)["image_proj"]
    first = next(a for a in ARCHITECTURES if a.recognises(layout))
    assert first is architecture(name)
    assert first.family(sdxl=sdxl) == family
    assert family_architecture(family) is first
    assert first.image_proj_layout(first.published_config(64 if sdxl else 32)) == layout


def test_projection_inputs_and_features_per_architecture():
    unit = torch.nn.functional.normalize(torch.randn(1, 512), dim=-1)
    assert torch.equal(architecture("faceid").projection_inputs(unit), unit)
    raw = architecture("instantid").projection_inputs(unit)
    torch.testing.assert_close(raw.norm(), torch.tensor(math.sqrt(512)))
    assert [a.name for a in ARCHITECTURES if a.takes_clip_features] == ["faceid-plusv2"]
    assert [a.published_lora_rank for a in ARCHITECTURES] == [128, None, 128]
    with pytest.raises(ValueError, match="unknown identity adapter architecture 'w-plus'"):
        architecture("w-plus")
    with pytest.raises(ValueError, match="unknown identity adapter family 'faceid-flux'"):
        family_architecture("faceid-flux")
