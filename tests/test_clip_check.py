"""The repair's CLIP check for attributes the face parser cannot see: scores as CLIP's published
preprocessing gives them, the check on real portraits through the mesh parser, and where the
weights come from (a tiny random-weight CLIP built here stands in for ViT-L/14)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from studio.clip_check import CAPTION, ClipScorer, clip_scorer_for
from studio.errors import ModelUnavailableError
from studio.models.catalog import load_catalog
from studio.repair import FOUND, REPAIRED, UNCHECKED, AttributeChecker


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random-weight ``CLIPModel`` folder with the real vocabulary size (32 px images)."""
    from transformers import CLIPConfig, CLIPModel

    layers = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2}
    config = CLIPConfig(
        text_config={**layers, "vocab_size": 49408, "num_attention_heads": 4},
        vision_config={**layers, "image_size": 32, "patch_size": 8, "num_attention_heads": 4},
        projection_dim=16,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def scorer(tiny_clip):
    return ClipScorer(tiny_clip)


def test_scores_are_the_cosines_of_clips_projected_embeddings(scorer, faces_dir):
    from transformers import CLIPImageProcessor

    photo = np.asarray(Image.open(faces_dir / "person_a_1.jpg").convert("RGB"))
    photos = [photo, np.asarray(Image.fromarray(photo).resize((50, 90)))]  # portrait aspect
    text = CAPTION.format(words="round glasses")
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    pixels = processor(images=photos, return_tensors="pt").pixel_values
    tokens = scorer.tokenizer([text], padding="max_length", return_tensors="pt")
    with torch.no_grad():
        image = scorer.model.get_image_features(pixel_values=pixels)
        words = scorer.model.get_text_features(input_ids=tokens.input_ids)
    image = getattr(image, "pooler_output", image)
    words = getattr(words, "pooler_output", words)
    expected = torch.nn.functional.cosine_similarity(image, words).numpy()
    scores = scorer.scores(photos, text)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert scores[0] != scores[1]  # the two crops differ
    np.testing.assert_allclose(scorer.scores([photo, photo], text), scores[[0, 0]], atol=1e-6)


def test_the_checker_asks_clip_what_the_mesh_parser_cannot_see(studio, faces_dir, scorer):
    photo = np.asarray(Image.open(faces_dir / "person_a_1.jpg").convert("RGB"))
    changed = np.ascontiguousarray(photo[..., ::-1])  # channels swapped: the mesh still fits
    analyzer = studio.analyzer(studio.scoring_encoder())
    words = {"glasses": "round glasses"}

    blind = AttributeChecker(analyzer.analyze, studio.face_parser)
    blind([photo], [photo], ("glasses",))
    assert blind.checks[0]["glasses"].status == UNCHECKED  # the mesh has no eye_g class

    checker = AttributeChecker(analyzer.analyze, studio.face_parser, clip=scorer, words=words)
    assert checker([photo], [photo], ("glasses", "hair")) == [{}]
    glasses = checker.checks[0]["glasses"]
    assert glasses.status == FOUND
    assert glasses.detail.startswith("CLIP ") and "'a photo of a person with round glasses'" in (
        glasses.detail
    )
    assert checker.checks[0]["hair"].detail.startswith("area")  # the parser's own classes

    # the portrait scoring lower than the foundation by more than the margin lacks it
    low, high = np.argsort(scorer.scores([photo, changed], CAPTION.format(words="round glasses")))
    images = [photo, changed]
    strict = replace_margin(checker, 0.0)
    masks = strict([images[low]], [images[high]], ("glasses",))
    assert strict.checks[0]["glasses"].status == REPAIRED
    assert masks == [{"glasses": None}]  # no parser mask: repaired on the attention map
    loose = replace_margin(checker, 2.0)  # cosines differ by at most 2
    loose([images[low]], [images[high]], ("glasses",))
    assert loose.checks[0]["glasses"].status == FOUND

    # a face found but too blurred for a mesh: could not check, with the reason, no crash
    blurred = np.asarray(Image.fromarray(photo).filter(ImageFilter.GaussianBlur(6)))
    checker([blurred], [photo], ("hair", "glasses"))
    assert checker.checks[0]["hair"].status == UNCHECKED
    assert checker.checks[0]["hair"].detail.startswith("the face in the portrait could not be")
    assert checker.checks[0]["glasses"].detail.startswith("CLIP ")  # CLIP needs no parsing


def replace_margin(checker: AttributeChecker, margin: float) -> AttributeChecker:
    return AttributeChecker(
        checker.faces, checker.parser, clip=checker.clip, words=checker.words, clip_margin=margin
    )


def test_clip_weights_come_from_the_catalog_or_an_override(tiny_env, tiny_clip, tmp_path):
    from studio.settings import load_settings

    settings = load_settings()
    tiny = load_catalog()["tiny"]
    assert clip_scorer_for(settings, tiny) is None  # sd15's clip is not on this machine
    assert load_catalog()["sd15"].component("clip").repo == "openai/clip-vit-large-patch14"
    given = replace(settings, weights={"clip": tiny_clip})
    assert isinstance(clip_scorer_for(given, tiny), ClipScorer)
    with pytest.raises(ModelUnavailableError, match="--weights clip=.*not a CLIP model folder"):
        clip_scorer_for(replace(settings, weights={"clip": tmp_path}), tiny)
