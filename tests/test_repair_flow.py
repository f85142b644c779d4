"""Automatic attribute repair through the studio on the tiny set: the CLI's ``--repair``, the
per-attribute report in the sidecar, the foundation image saved and linked, the checker on real
portraits through the mesh parser, and the Python flow through the derived pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.repair import PortraitRepairPipeline
from studio.cli import main
from studio.errors import StudioError
from studio.faces.keywords import attribute_mask
from studio.orchestrator import PortraitRequest
from studio.repair import (
    FOUND,
    MISSING,
    REPAIRED,
    UNCHECKED,
    AttributeChecker,
    attribute_words,
    foundation_prompt_for,
    parse_repair,
    repair_attributes,
)

pytestmark = pytest.mark.slow

PROMPT = "red hair, round glasses"


def portrait_lines(out: str) -> tuple[Path, list[str]]:
    lines = out.strip().splitlines()
    path = next(Path(line.split()[-1]) for line in lines if line.strip().endswith(".png"))
    return path, [line.strip() for line in lines if line.strip().startswith("repair ")]


def test_the_cli_runs_the_loop_and_reports_each_attribute(studio, capsys):
    argv = ["portrait", "--profile", "Ada", "--prompt", PROMPT, "--steps", "2"]
    assert main([*argv, "--repair", "auto"]) == 0
    path, report = portrait_lines(capsys.readouterr().out)
    # the tiny set draws no face: nothing could be checked, so nothing was repaired
    # (checked on the previews at 30 % of the steps: step 1 of 2, and on the final images)
    unchecked = "could not check - no face found in the foundation image (at step 1 and after"
    assert report == [
        f"repair hair: {unchecked} generation)",
        f"repair glasses: {unchecked} generation)",
    ]
    sidecar = json.loads(path.with_suffix(".json").read_text())
    repair = sidecar["repair"]
    assert [a["status"] for a in repair["attributes"]] == [UNCHECKED, UNCHECKED]
    assert repair["foundation_mode"] == "batched" and repair["fasa_start"] is None
    assert repair["check_step"] == 1
    foundation = path.with_name(repair["foundation_image"])
    linked = json.loads(foundation.with_suffix(".json").read_text())
    assert linked["role"] == "foundation" and linked["foundation_of"] == path.name
    assert linked["prompt"] == "a person, red hair, round glasses"
    assert linked["provenance"] and Image.open(foundation).info["parameters"]

    assert main([*argv, "--repair", "hair,glasses"]) == 0
    path, report = portrait_lines(capsys.readouterr().out)
    assert [line.split(" - ")[0] for line in report] == [
        "repair hair: repaired (attention mask)",
        "repair glasses: repaired (attention mask)",
    ]
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["repair"]["fasa_start"] == 0  # named: pass 2 with FASA at every step
    assert sidecar["repair"]["check_step"] is None
    assert set(sidecar["masks"]) == {"repair.hair", "repair.glasses"}
    assert Image.open(path.with_name(sidecar["masks"]["repair.hair"])).mode == "L"

    assert main([*argv, "--repair", "moustache"]) == 1
    assert "--repair: unknown face attribute 'moustache'" in capsys.readouterr().err


def test_the_python_flow_uses_the_derived_pipeline(studio):
    result = studio.generate(PortraitRequest("Ada", prompt=PROMPT, steps=2, repair="hair"))
    assert isinstance(studio.host.derived("repair"), PortraitRepairPipeline)
    assert studio.host.derived("repair").unet is studio.pipeline().unet  # shared weights
    (portrait,) = result.portraits
    assert [c.status for c in portrait.repair.checks] == [REPAIRED]
    assert portrait.foundation.exists()
    assert studio.pipeline().attention_contributions() == ["identity", "fasa", "wplus", "fasa-maps"]


def test_the_checker_on_real_portraits_through_the_mesh_parser(studio, faces_dir):
    photo = np.asarray(Image.open(faces_dir / "person_a_1.jpg").convert("RGB"))
    analyzer = studio.analyzer(studio.scoring_encoder())
    face = analyzer.analyze(photo)[0]
    parsing = studio.face_parser.parse(photo, face)
    hair = attribute_mask(parsing, "hair")
    assert hair.any() and attribute_mask(parsing, "glasses") is None  # mesh: no eye_g class

    recoloured = photo.copy()
    recoloured[hair] = (30, 200, 40)  # the portrait lost the hair colour the prompt asked for
    checker = AttributeChecker(analyzer.analyze, studio.face_parser)
    same = checker([Image.fromarray(photo)], [Image.fromarray(photo)], ("hair", "glasses"))
    assert [c.status for c in checker.checks[0].values()] == [FOUND, UNCHECKED]
    assert same == [{}]
    masks = checker([Image.fromarray(recoloured)], [Image.fromarray(photo)], ("hair",))
    assert checker.checks[0]["hair"].status == REPAIRED
    np.testing.assert_array_equal(masks[0]["hair"], hair)  # repaired on the foundation's hair


def test_the_final_check_completes_the_preview_check(studio, faces_dir):
    """``auto`` decides on the previews and reports with the final images as well."""
    photo = Image.open(faces_dir / "person_a_1.jpg").convert("RGB")
    analyzer = studio.analyzer(studio.scoring_encoder())
    hair = attribute_mask(
        studio.face_parser.parse(np.asarray(photo), analyzer.analyze(np.asarray(photo))[0]), "hair"
    )
    recoloured = np.asarray(photo).copy()
    recoloured[hair] = (30, 200, 40)
    recoloured = Image.fromarray(recoloured)
    blank = Image.new("RGB", photo.size, (128, 128, 128))
    checker = AttributeChecker(analyzer.analyze, studio.face_parser)

    # the previews miss the hair: repaired in the run; the report says how it ended
    checker([recoloured], [photo], ("hair",))
    (after,) = checker.after([photo], [photo], ("hair",), step=9)
    assert after["hair"].status == REPAIRED
    assert after["hair"].detail.startswith("at step 9: area") and "; after: area 1.00" in (
        after["hair"].detail
    )
    # the previews showed it, the final portrait lost it: missing, with the way to repair it
    checker([photo], [photo], ("hair",))
    (after,) = checker.after([recoloured], [photo], ("hair",), step=9)
    assert after["hair"].status == MISSING
    assert after["hair"].detail.endswith("repair it by name (--repair hair)")
    # the previews showed no face; the final images can be compared
    checker([blank], [blank], ("hair",))
    assert checker.checks[0]["hair"].status == UNCHECKED
    (after,) = checker.after([photo], [photo], ("hair",), step=9)
    assert after["hair"].status == FOUND
    assert after["hair"].detail.endswith("at step 9: no face found in the foundation image")


def test_repair_choices_and_prompt_words():
    assert parse_repair("off") == "off" and parse_repair("AUTO") == "auto"
    assert parse_repair("hair, spectacles,hair") == ("hair", "glasses")
    with pytest.raises(StudioError, match="--repair: unknown face attribute 'wings'"):
        parse_repair("wings")
    with pytest.raises(StudioError, match="--repair: unknown face attribute"):
        PortraitRequest("Ada", prompt="x", repair="hair,wings").validate()
    assert repair_attributes("auto", PROMPT) == ("hair", "glasses")
    assert repair_attributes("off", PROMPT) == ()
    assert attribute_words(PROMPT, "hair") == "red hair"
    assert attribute_words("a man wearing spectacles", "glasses") == "wearing spectacles"
    assert attribute_words(PROMPT, "hat") == "hat"
    assert foundation_prompt_for("ohwx person, red hair", "ohwx person", "person") == (
        "person, red hair"
    )
    assert foundation_prompt_for("a person, red hair", "a person", None) == "a person, red hair"
