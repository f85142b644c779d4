"""LoRA files: stock diffusers loads ours, the kohya export gives the same images, exact resume."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from peft import LoraConfig, inject_adapter_in_model
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file

from studio.models.tiny import built_path
from studio.training.export import (
    METADATA_NAME,
    WEIGHTS_NAME,
    LoraFileError,
    export_kohya,
    load_lora,
    lora_state_dict,
    read_metadata,
    save_lora,
)
from studio.training.types import LoraMetadata

FAMILIES = {
    "sd15": ("tiny-sd15", StableDiffusionPipeline),
    "sdxl": ("tiny-sdxl", StableDiffusionXLPipeline),
}
RANK, ALPHA = 4, 8.0  # alpha != rank: a loader that ignores alpha gives other images
UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
KOHYA = {"base_model": "tiny-sd15", "num_train_images": 2}


def _metadata(family: str, **changes: object) -> LoraMetadata:
    metadata = LoraMetadata(
        trigger="ohwx",
        class_word="person",
        family=family,
        model_set=f"tiny-{family}",
        rank=RANK,
        alpha=ALPHA,
        text_encoder=True,
        resolution=64,
        steps=10,
        best_step=8,
        best_similarity=0.5,
    )
    return replace(metadata, **changes)


def _image(pipe: DiffusionPipeline) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(
        "a photo of ohwx person",
        num_inference_steps=2,
        height=64,
        width=64,
        output_type="np",
        generator=generator,
    ).images


def _text_encoders(pipe: DiffusionPipeline) -> list[torch.nn.Module]:
    return [m for m in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if m is not None]


def _add_lora(pipe: DiffusionPipeline, rank: int = RANK, seed: int = 0) -> list[torch.nn.Module]:
    """Add the trainer's adapters with random (nonzero) B matrices; returns the text encoders."""
    torch.manual_seed(seed)
    pipe.unet.add_adapter(
        LoraConfig(
            r=rank, lora_alpha=ALPHA, init_lora_weights="gaussian", target_modules=UNET_TARGETS
        )
    )
    encoders = _text_encoders(pipe)
    for encoder in encoders:
        # What transformers' add_adapter does; in transformers 5.24 it demands peft >= 0.22.
        config = LoraConfig(
            r=rank, lora_alpha=ALPHA, init_lora_weights="gaussian", target_modules=TEXT_TARGETS
        )
        inject_adapter_in_model(config, encoder, adapter_name="default")
    with torch.no_grad():
        for module in (pipe.unet, *encoders):
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.5)
    return encoders


@pytest.fixture(scope="module")
def bases(tiny_models_dir) -> dict[str, DiffusionPipeline]:
    """Each family's base pipeline, loaded once; tests use deep copies."""
    pipes = {}
    for family, (builder, cls) in FAMILIES.items():
        extra = (
            {"safety_checker": None, "requires_safety_checker": False} if family == "sd15" else {}
        )
        pipes[family] = cls.from_pretrained(built_path(tiny_models_dir, builder), **extra)
        pipes[family].set_progress_bar_config(disable=True)
    return pipes


@dataclass(frozen=True)
class Trained:
    """One family's saved LoRA, its export, and the images with and without it."""

    family: str
    base_image: np.ndarray
    image: np.ndarray
    folder: Path
    kohya: Path
    state: dict[str, torch.Tensor]


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request, bases, tmp_path_factory) -> Trained:
    """A pipeline with random LoRAs on the UNet and text encoders, saved and exported."""
    family = request.param
    pipe = copy.deepcopy(bases[family])
    base_image = _image(pipe)
    encoders = _add_lora(pipe)
    folder = tmp_path_factory.mktemp(f"lora-{family}")
    weights = save_lora(folder, pipe.unet, encoders, _metadata(family))
    kohya = export_kohya(
        weights,
        folder / "kohya" / "ohwx.safetensors",
        _metadata(family),
        base_model=FAMILIES[family][0],
        num_train_images=3,
    )
    return Trained(
        family, base_image, _image(pipe), folder, kohya, lora_state_dict(pipe.unet, encoders)
    )


def test_stock_diffusers_loads_the_lora_and_the_kohya_export_gives_the_same_images(trained, bases):
    family = trained.family
    assert {p.name for p in trained.folder.iterdir()} == {METADATA_NAME, WEIGHTS_NAME, "kohya"}

    stock = copy.deepcopy(bases[family])
    stock.load_lora_weights(trained.folder)
    image = _image(stock)
    assert np.abs(image - trained.base_image).max() > 0.05
    np.testing.assert_allclose(image, trained.image, atol=1e-5)  # alpha/rank scale kept
    for encoder in _text_encoders(stock):
        assert any("lora_A" in name for name, _ in encoder.named_parameters())

    kohya = copy.deepcopy(bases[family])
    kohya.load_lora_weights(trained.kohya.parent, weight_name=trained.kohya.name)
    np.testing.assert_allclose(_image(kohya), image, atol=1e-5)


def test_kohya_names_alphas_and_header(trained):
    family = trained.family
    with safe_open(trained.kohya, framework="pt") as fh:
        keys, header = set(fh.keys()), fh.metadata()
        alpha = fh.get_tensor(
            "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0.alpha"
        )
    assert alpha.shape == () and alpha.item() == ALPHA
    unet_keys = {k for k in keys if k.startswith("lora_unet_")}
    assert {
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight",
        "lora_unet_up_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight",
    } <= unet_keys
    te = "self_attn_q_proj.lora_down.weight"
    text_keys = {
        "sd15": {f"lora_te_text_model_encoder_layers_0_{te}"},
        "sdxl": {
            f"lora_te1_text_model_encoder_layers_1_{te}",
            f"lora_te2_text_model_encoder_layers_1_{te}",
        },
    }[family]
    assert text_keys <= keys
    assert len(keys) == len(trained.state) * 3 // 2  # down, up and alpha per layer
    assert header["ss_network_module"] == "networks.lora"
    assert (header["ss_network_dim"], header["ss_network_alpha"]) == ("4", "8")
    assert header["ss_base_model_version"] == {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}[family]
    assert header["ss_output_name"] == header["modelspec.title"] == "ohwx"
    assert header["modelspec.trigger_phrase"] == "ohwx person"
    assert header["ss_sd_model_name"] == FAMILIES[family][0]
    assert (header["ss_num_train_images"], header["ss_clip_skip"]) == ("3", "None")


def _sd_scripts_hashes(path: Path) -> tuple[str, str]:
    """sd-scripts' sshs hashes recomputed from the written file: the SHA-256 of the bytes after
    the header, and of the 64 KiB at 1 MiB of the file saved with its ``ss_*`` header alone."""
    raw = path.read_bytes()
    model_hash = hashlib.sha256(raw[8 + int.from_bytes(raw[:8], "little") :]).hexdigest()
    with safe_open(path, framework="pt") as fh:
        training = {k: v for k, v in fh.metadata().items() if k.startswith("ss_")}
    legacy = hashlib.sha256(save(load_file(path), training)[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy


def test_kohya_export_carries_sd_scripts_hashes(trained, tmp_path):
    with safe_open(trained.kohya, framework="pt") as fh:
        header = fh.metadata()
    assert (header["sshs_model_hash"], header["sshs_legacy_hash"]) == _sd_scripts_hashes(
        trained.kohya
    )
    # Past 1 MiB the legacy hash reads tensor bytes, so it tells files apart.
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.{}.weight"
    big = tmp_path / "big.safetensors"
    state = {
        key.format("down"): torch.randn(RANK, 80_000),
        key.format("up"): torch.randn(80_000, RANK),
    }
    save_file(state, big)
    kohya = export_kohya(
        big,
        tmp_path / "big_kohya.safetensors",
        _metadata("sd15"),
        base_model="b",
        num_train_images=1,
    )
    with safe_open(kohya, framework="pt") as fh:
        header = fh.metadata()
    assert (header["sshs_model_hash"], header["sshs_legacy_hash"]) == _sd_scripts_hashes(kohya)
    assert header["sshs_legacy_hash"] != hashlib.sha256(b"").hexdigest()[:8]


def test_load_lora_restores_the_weights_bit_for_bit(trained, bases):
    family = trained.family
    pipe = copy.deepcopy(bases[family])
    encoders = _add_lora(pipe, seed=1)
    before = lora_state_dict(pipe.unet, encoders)
    assert not all(torch.equal(before[k], v) for k, v in trained.state.items())

    metadata = load_lora(trained.folder, pipe.unet, encoders)

    assert metadata == _metadata(family)
    after = lora_state_dict(pipe.unet, encoders)
    assert after.keys() == trained.state.keys()
    assert all(torch.equal(after[k], v) for k, v in trained.state.items())


def test_lora_state_dict_is_a_contiguous_cpu_copy(bases):
    pipe = copy.deepcopy(bases["sd15"])
    encoders = _add_lora(pipe)
    state = lora_state_dict(pipe.unet, encoders)
    assert {k.split(".")[0] for k in state} == {"unet", "text_encoder"}
    assert all(
        t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu"
        for t in state.values()
    )
    key = next(iter(state))
    state[key].zero_()
    assert lora_state_dict(pipe.unet, encoders)[key].abs().sum() > 0
    half = lora_state_dict(pipe.unet, encoders, dtype=torch.float16)
    assert {t.dtype for t in half.values()} == {torch.float16}


def test_load_lora_names_what_does_not_fit(trained, bases, tmp_path):
    family = trained.family
    pipe = copy.deepcopy(bases[family])
    encoders = _add_lora(pipe, rank=2)
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k.lora.down.weight"
    with pytest.raises(LoraFileError, match=rf"{key}: expected shape \(2, 32\), found \(4, 32\)"):
        load_lora(trained.folder, pipe.unet, encoders)

    unet_only = copy.deepcopy(bases[family])
    _add_lora(unet_only)
    with pytest.raises(LoraFileError, match=r"text_encoder\.\S+ is not in the model"):
        load_lora(trained.folder, unet_only.unet)

    with pytest.raises(LoraFileError, match="not found"):
        load_lora(tmp_path, pipe.unet, encoders)
    damaged = tmp_path / WEIGHTS_NAME
    damaged.write_bytes((trained.folder / WEIGHTS_NAME).read_bytes()[:200])
    with pytest.raises(LoraFileError, match="cannot be read .*damaged"):
        load_lora(damaged, pipe.unet, encoders)


def test_lora_json_round_trips_and_bad_files_are_named(trained, tmp_path):
    family = trained.family
    record = json.loads((trained.folder / METADATA_NAME).read_text())
    assert (record["format"], record["schema"], record["weights"]) == ("diffusers", 1, WEIGHTS_NAME)
    assert read_metadata(trained.folder) == _metadata(family)

    with pytest.raises(LoraFileError, match=r"lora\.json not found"):
        read_metadata(tmp_path)
    path = tmp_path / METADATA_NAME
    for text, message in (
        ("{", "cannot be read"),
        (json.dumps({**record, "format": "kohya"}), "not a Portrait Studio lora.json"),
        (json.dumps({**record, "schema": 99}), "schema 99; .*upgrade Portrait Studio"),
        (json.dumps({k: v for k, v in record.items() if k != "rank"}), "lacks a field .*rank"),
    ):
        path.write_text(text)
        with pytest.raises(LoraFileError, match=message):
            read_metadata(tmp_path)


def test_export_kohya_refuses_metadata_that_does_not_fit(trained, tmp_path):
    weights = trained.folder / WEIGHTS_NAME
    family = trained.family
    with pytest.raises(LoraFileError, match="rank 4, but its metadata says 8"):
        export_kohya(weights, tmp_path / "x.safetensors", _metadata(family, rank=8), **KOHYA)
    with pytest.raises(LoraFileError, match="no kohya export for model family 'flux'"):
        export_kohya(weights, tmp_path / "x.safetensors", _metadata("flux"), **KOHYA)
    assert not (tmp_path / "x.safetensors").exists()
