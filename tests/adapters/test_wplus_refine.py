"""W+ refinement by latent optimisation on a tiny generator, and the IR-SE50 identity model in
the published ``model_ir_se50.pth`` layout."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from published_ir_se import bn, ir_se50_stem_and_body_layout

from adapters.checkpoint import CheckpointError
from adapters.e4e import E4EConfig
from adapters.ir_se50 import IRSE50Config, IRSE50Recognizer, load_ir_se50
from adapters.stylegan2 import StyleGAN2Config, StyleGAN2Generator
from adapters.synthetic_ir_se50 import write_ir_se50_checkpoint
from adapters.synthetic_wplus import write_e4e_checkpoint
from adapters.wplus_refine import RefineSettings, refine_wplus

TINY_DECODER = StyleGAN2Config(size=64, channels=(16, 16, 16, 16, 8), style_dim=16, n_mlp=2)
TINY_RECOGNIZER = IRSE50Config(widths=(8, 8, 16, 16), embedding_dim=16)
FIT = RefineSettings(learning_rate=0.02, start_weight=0.0)


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return StyleGAN2Generator(TINY_DECODER).eval()


@pytest.fixture(scope="module")
def known(generator):
    """A W+ that renders the target, and a start near it (as e4e's guess would be)."""
    g = torch.Generator().manual_seed(1)
    w_true = torch.randn(1, TINY_DECODER.n_latent, TINY_DECODER.style_dim, generator=g)
    with torch.no_grad():
        target = F.interpolate(generator(w_true), size=128, mode="bilinear")
    start = w_true + 0.2 * torch.randn(w_true.shape, generator=g)
    return w_true, start, target


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("id") / "model_ir_se50.pth"
    return load_ir_se50(write_ir_se50_checkpoint(path, TINY_RECOGNIZER))


def test_refinement_moves_toward_the_latent_that_rendered_the_target(generator, known):
    w_true, start, target = known
    run = refine_wplus(generator, start, target, 8, settings=FIT)
    assert run.steps == run.requested == 8 and not run.stopped and not run.identity_loss
    assert run.last_loss < run.first_loss / 2
    assert run.w_plus.shape == start.shape and not run.w_plus.requires_grad
    assert (run.w_plus - w_true).norm() < (start - w_true).norm()
    # The same inputs give the same result, also when they were made under inference mode.
    with torch.inference_mode():
        start_inference, target_inference = start.clone(), target.clone()
    again = refine_wplus(generator, start_inference, target_inference, 8, settings=FIT)
    torch.testing.assert_close(again.w_plus, run.w_plus, rtol=0, atol=0)


def test_generator_weights_stay_frozen_and_unchanged(generator, known):
    _, start, target = known
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    seen = []

    def progress(step, total, loss):
        seen.append([p.grad is None for p in generator.parameters()])

    refine_wplus(generator, start, target, 2, on_progress=progress)
    assert seen and all(all(flags) for flags in seen)
    for key, value in generator.state_dict().items():
        assert torch.equal(value, before[key]), key
    # The caller's flags come back as they were.
    assert all(p.requires_grad for p in generator.parameters())


def test_progress_once_per_step_and_stop_returns_the_partial_result(generator, known):
    _, start, target = known
    stop = threading.Event()
    calls = []

    def progress(step, total, loss):
        calls.append((step, total, loss))
        if step == 2:
            stop.set()

    run = refine_wplus(generator, start, target, 5, on_progress=progress, stop=stop)
    assert [c[:2] for c in calls] == [(1, 5), (2, 5)]
    assert run.stopped and run.steps == 2 and run.requested == 5
    assert [c[2] for c in calls] == list(run.losses)
    two = refine_wplus(generator, start, target, 2)
    torch.testing.assert_close(run.w_plus, two.w_plus, rtol=0, atol=0)
    # Already stopped: the start comes back, no step taken.
    none = refine_wplus(generator, start, target, 5, stop=stop)
    assert none.steps == 0 and none.stopped and torch.equal(none.w_plus, start)


def test_identity_term_contributes(generator, known, recognizer):
    _, start, target = known
    runs = [
        refine_wplus(generator, start, target, 2, recognizer=recognizer, settings=settings)
        for settings in (RefineSettings(id_weight=0.0), RefineSettings(id_weight=1.0))
    ]
    assert all(run.identity_loss for run in runs)
    plain = refine_wplus(generator, start, target, 2, settings=RefineSettings(id_weight=1.0))
    assert not plain.identity_loss
    torch.testing.assert_close(runs[0].w_plus, plain.w_plus)
    assert not torch.allclose(runs[0].w_plus, runs[1].w_plus)
    assert runs[1].first_loss > runs[0].first_loss  # 1 - cos > 0 for a start unlike the target
    assert all(not p.requires_grad and p.grad is None for p in recognizer.parameters())


def test_bad_inputs_are_named(generator, known):
    _, start, target = known
    with pytest.raises(ValueError, match="W\\+ must be"):
        refine_wplus(generator, start[0], target, 1)
    with pytest.raises(ValueError, match="target must be"):
        refine_wplus(generator, start, target[:, :, :64], 1)
    with pytest.raises(ValueError, match="steps"):
        refine_wplus(generator, start, target, -1)
    with pytest.raises(ValueError, match="learning_rate"):
        RefineSettings(learning_rate=0)


def _published_ir_se50_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of TreB1eN's ``Backbone(50, 0.6, 'ir_se')`` (pSp's ``model_irse``)."""
    layout = ir_se50_stem_and_body_layout()
    bn(layout, "output_layer.0", 512)
    layout["output_layer.3.weight"] = (512, 512 * 7 * 7)
    layout["output_layer.3.bias"] = (512,)
    bn(layout, "output_layer.4", 512)
    return layout


def test_recognizer_has_the_published_layout_and_embeds_ffhq_crops(recognizer):
    with torch.device("meta"):
        full = IRSE50Recognizer()
    found = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    assert found == _published_ir_se50_layout()
    crops = torch.rand(2, 3, 256, 256) * 2 - 1
    embeddings = recognizer.embed_ffhq(crops)
    assert embeddings.shape == (2, 16)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2))
    # Only pSp's face box [35:223, 32:220] counts.
    outside = crops.clone()
    outside[:, :, :35] = 0
    outside[:, :, :, 220:] = 0
    torch.testing.assert_close(recognizer.embed_ffhq(outside), embeddings)
    with pytest.raises(ValueError, match="112"):
        recognizer(crops)


def test_recognizer_file_loads_strictly_and_wrong_files_are_named(tmp_path, recognizer):
    path = write_ir_se50_checkpoint(tmp_path / "model_ir_se50.pth", TINY_RECOGNIZER)
    state = torch.load(path, weights_only=True)
    loaded = load_ir_se50(path)
    assert loaded.config == TINY_RECOGNIZER and not loaded.training
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key

    e4e = write_e4e_checkpoint(
        tmp_path / "e4e.pt", E4EConfig(widths=(8, 8, 16, 16), n_styles=10), TINY_DECODER
    )
    with pytest.raises(CheckpointError, match="e4e.pt is not an IR-SE50 face recognizer"):
        load_ir_se50(e4e)
    del state["output_layer.4.running_var"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="cut.pth does not match the published IR-SE50"):
        load_ir_se50(tmp_path / "cut.pth")
    with pytest.raises(FileNotFoundError, match="model_ir_se50.pth"):
        load_ir_se50(tmp_path / "absent.pth")
