"""Photo to W+ to W+ tokens, offline: a real portrait, a tiny e4e in the published layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapters.e4e import E4EConfig, load_e4e
from adapters.stylegan2 import StyleGAN2Config
from adapters.synthetic_wplus import write_e4e_checkpoint
from adapters.wplus import WProjection
from studio.errors import StudioError
from studio.wplus import e4e_crop, photo_wplus, to_image, to_model_input

# 18 W+ rows as at 1024 px, everything narrow.
TINY_1024 = StyleGAN2Config(size=1024, channels=(8, 8, 8, 8, 4, 4, 4, 4, 4), style_dim=16, n_mlp=1)


@pytest.fixture(scope="module")
def e4e(tmp_path_factory):
    path = tmp_path_factory.mktemp("wplus") / "e4e_ffhq_encode.pt"
    write_e4e_checkpoint(path, E4EConfig(widths=(8, 8, 16, 16), n_styles=18), TINY_1024)
    return load_e4e(path)


def test_photo_to_wplus_to_tokens(e4e, ffhq_portrait):
    image, points = ffhq_portrait
    crop = e4e_crop(image, points)
    assert crop.image.shape == (256, 256, 3)
    model_input = to_model_input(crop.image)
    assert (
        model_input.shape == (1, 3, 256, 256) and -1 <= model_input.min() < model_input.max() <= 1
    )
    w_plus = photo_wplus(e4e, image, points)
    assert w_plus.shape == (1, 18, 16) and torch.isfinite(w_plus).all()
    # Another face, another W+.
    assert not torch.allclose(
        photo_wplus(e4e, image[:, ::-1].copy(), points * [-1, 1] + [image.shape[1] - 1, 0]), w_plus
    )
    tokens = WProjection(cross_attention_dim=32, w_dim=16).encode(w_plus)
    assert tokens.shape == (2, 4, 32)


def test_tiny_face_is_a_user_error_and_previews_are_images(e4e, ffhq_portrait):
    image, points = ffhq_portrait
    centre = points.mean(axis=0)
    with pytest.raises(StudioError, match="too small"):
        e4e_crop(image, (points - centre) * 0.1 + centre)
    preview = to_image(torch.tensor([[[[-1.0, 0.0]], [[1.0, 2.0]], [[0.5, -3.0]]]]))
    np.testing.assert_array_equal(preview, [[[0, 255, 191], [128, 255, 0]]])
