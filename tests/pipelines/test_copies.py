"""The ``# Copied from diffusers.`` blocks of the pipelines still match the installed diffusers."""

from __future__ import annotations

from pathlib import Path

import pytest
from check_copies import PIPELINES, check_files, copied_blocks

SOURCE = "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline"
STEP = """\
    # compute the previous noisy sample x_t -> x_t-1
    latents = self.scheduler.step(
        noise_pred, t, latents, **extra_step_kwargs, return_dict=False
    )[0]
"""


def write(tmp_path: Path, body: str, header: str = f"# Copied from {SOURCE}.__call__") -> Path:
    """A file with one copied block holding ``body`` inside a method."""
    file = tmp_path / "pipeline.py"
    file.write_text(f"def run(self):\n    {header}\n{body}    # End of copy\n    return 1\n")
    return file


def test_every_pipeline_copy_matches_the_installed_diffusers():
    files = sorted(PIPELINES.glob("*.py"))
    assert sum(len(copied_blocks(file)) for file in files) >= 3
    assert check_files(files) == []


def test_a_copy_reformatted_by_ruff_matches(tmp_path):
    # diffusers writes the call on one line of 119 characters; ruff wraps it at 100.
    assert check_files([write(tmp_path, STEP)]) == []


def test_a_tampered_copy_fails(tmp_path):
    tampered = PIPELINES.joinpath("portrait.py").read_text()
    original = "noise_pred_uncond + self.guidance_scale * ("
    assert original in tampered
    file = tmp_path / "portrait.py"
    file.write_text(tampered.replace(original, "noise_pred_uncond + 2 * self.guidance_scale * ("))
    (problem,) = check_files([file])
    assert "noise_pred_uncond + 2 * self.guidance_scale" in problem
    assert "StableDiffusionControlNetPipeline.__call__" in problem


def test_an_unmarked_addition_fails_and_a_marked_one_passes(tmp_path):
    added = STEP + "    latents = latents * 2\n"
    (problem,) = check_files([write(tmp_path, added)])
    assert "`latents = latents * 2` is not in" in problem and "# Portrait:" in problem
    marked = (
        STEP + "    # Portrait: doubled, for the test\n    if t:\n        latents = latents * 2\n"
    )
    assert check_files([write(tmp_path, marked)]) == []


def test_replacements_apply_to_the_source(tmp_path):
    renamed = STEP.replace("latents", "noise")
    header = f"# Copied from {SOURCE}.__call__ with latents->noise"
    assert check_files([write(tmp_path, renamed, header)]) == []
    (problem,) = check_files([write(tmp_path, renamed)])
    assert "`noise = self.scheduler.step(" in problem


def test_a_block_without_end_or_source_is_an_error(tmp_path):
    file = tmp_path / "open.py"
    file.write_text(f"# Copied from {SOURCE}.__call__\nx = 1\n")
    with pytest.raises(ValueError, match="without `# End of copy`"):
        copied_blocks(file)
    file.write_text(f"# Copied from {SOURCE}.no_such_method\nx = 1\n# End of copy\n")
    with pytest.raises(ValueError, match="no_such_method does not exist"):
        check_files([file])
