"""Profiles and photos become the pipelines' ``identity_embeds`` tensors."""

import numpy as np
import pytest
import torch

from studio.errors import StudioError
from studio.faces.analyzer import FaceAnalyzer
from studio.identity import photo_identity_embeds, profile_identity_embeds
from studio.profiles.library import ProfileLibrary


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer()


def test_profile_embeds_are_the_accepted_photos(tmp_path, analyzer, faces_dir):
    photos = [faces_dir / f"{n}.jpg" for n in ("person_b_1", "person_b_2", "impostor_1")]
    with ProfileLibrary(tmp_path / "profiles", lambda encoders: analyzer) as library:
        profile = library.create("B", photos, consent=True).profile
    embeds = profile_identity_embeds(profile, "sface")
    assert embeds.shape == (2, 128) and embeds.dtype == torch.float32
    torch.testing.assert_close(embeds.norm(dim=1), torch.ones(2))
    expected = [p.embeddings["sface"].vector for p in profile.accepted]
    torch.testing.assert_close(embeds, torch.from_numpy(np.stack(expected)))
    with pytest.raises(StudioError, match="has no arcface embeddings .*--encoder arcface"):
        profile_identity_embeds(profile, "arcface")


def test_photo_embeds_one_row_per_photo_and_clear_errors(analyzer, faces_dir, tmp_path):
    a1, a2 = faces_dir / "person_a_1.jpg", faces_dir / "person_a_2.jpg"
    embeds = photo_identity_embeds(analyzer, [a1, a2], "sface")
    assert embeds.shape == (2, 128)
    assert float(embeds[0] @ embeds[1]) > 0.5
    blank = tmp_path / "wall.png"
    from PIL import Image

    Image.new("RGB", (120, 120), "grey").save(blank)
    with pytest.raises(StudioError, match="wall.png: no face found"):
        photo_identity_embeds(analyzer, [a1, blank], "sface")
    with pytest.raises(StudioError, match="no reference photo"):
        photo_identity_embeds(analyzer, [], "sface")
