"""A photo's W+ refined offline: a real portrait, a tiny e4e and IR-SE50 in the published layouts,
and the held-out SFace check."""

from __future__ import annotations

import threading

import pytest
import torch

from adapters.e4e import E4EConfig, load_e4e
from adapters.ir_se50 import IRSE50Config
from adapters.stylegan2 import StyleGAN2Config
from adapters.synthetic_ir_se50 import write_ir_se50_checkpoint
from adapters.synthetic_wplus import write_e4e_checkpoint
from studio.faces.analyzer import FaceAnalyzer
from studio.wplus import e4e_crop, photo_wplus, to_model_input
from studio.wplus_refine import held_out_check, refine_photo_wplus

TINY_DECODER = StyleGAN2Config(size=64, channels=(16, 16, 16, 16, 8), style_dim=16, n_mlp=2)


@pytest.fixture(scope="module")
def e4e(tmp_path_factory):
    path = tmp_path_factory.mktemp("refine") / "e4e_ffhq_encode.pt"
    write_e4e_checkpoint(path, E4EConfig(widths=(8, 8, 16, 16), n_styles=10), TINY_DECODER)
    return load_e4e(path)


@pytest.fixture(scope="module")
def analyzer():
    return FaceAnalyzer(encoders=("sface",), mesher=None)


def test_refines_the_photo_wplus_with_pixel_loss_when_no_identity_model(
    e4e, ffhq_portrait, tmp_path
):
    image, points = ffhq_portrait
    steps = []
    result = refine_photo_wplus(
        e4e,
        image,
        points,
        3,
        recognizer=tmp_path / "model_ir_se50.pth",
        on_progress=lambda step, total, loss: steps.append((step, total)),
    )
    torch.testing.assert_close(result.start, photo_wplus(e4e, image, points))
    assert result.w_plus.shape == (1, 10, 16) and not torch.equal(result.w_plus, result.start)
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert not result.refinement.identity_loss and result.held_out is None
    report = result.report()
    assert "3/3 steps, pixel loss only (model_ir_se50.pth not found at" in report
    assert "held-out identity check: not run" in report


def test_identity_model_file_from_an_existing_wplus_and_stop(e4e, ffhq_portrait, tmp_path):
    image, points = ffhq_portrait
    path = write_ir_se50_checkpoint(
        tmp_path / "model_ir_se50.pth", IRSE50Config(widths=(8, 8, 16, 16), embedding_dim=16)
    )
    start = torch.zeros(1, 10, 16)
    stop = threading.Event()
    result = refine_photo_wplus(
        e4e,
        image,
        points,
        4,
        w_plus=start,
        recognizer=path,
        on_progress=lambda step, total, loss: stop.set(),
        stop=stop,
    )
    assert torch.equal(result.start, start)
    assert result.refinement.identity_loss and result.refinement.steps == 1
    assert "pixel + identity loss (model_ir_se50.pth)" in result.report()
    assert "stopped after 1 of 4 steps" in result.report()
    with pytest.raises(ValueError, match="w_plus must be \\[1, 10, 16\\]"):
        refine_photo_wplus(e4e, image, points, 1, w_plus=torch.zeros(1, 18, 512))


def test_held_out_check_says_when_it_cannot_check(e4e, ffhq_portrait, analyzer):
    image, points = ffhq_portrait
    result = refine_photo_wplus(e4e, image, points, 1, analyzer=analyzer)
    check = result.held_out
    assert check.encoder == "sface" and not check.checked  # random weights render no face
    assert "held-out sface similarity: could not check (no face found in the rendering" in (
        result.report()
    )


def test_held_out_check_compares_photo_and_renderings(ffhq_portrait, analyzer):
    """A stand-in for FFHQ StyleGAN weights (not available here) that renders the photo's crop."""
    image, points = ffhq_portrait
    crop = e4e_crop(image, points).image

    class RendersThePhoto:
        def render(self, w_plus):
            return to_model_input(crop)

    check = held_out_check(RendersThePhoto(), crop, torch.zeros(1), torch.zeros(1), analyzer)
    assert check.checked and check.before == pytest.approx(1.0, abs=1e-3) == check.after
