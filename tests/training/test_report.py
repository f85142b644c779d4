"""The training report: JSON round trip, Markdown content and escaping, the SVG chart."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import pytest

from studio.errors import StudioError
from studio.profiles.types import PhotoOutcome
from studio.training.report import TrainingSummary, ema, read_report, write_report
from studio.training.types import LoraMetadata

SVG = "{http://www.w3.org/2000/svg}"


def _summary(run_dir: Path, **changes: object) -> TrainingSummary:
    summary = TrainingSummary(
        run_dir=run_dir,
        metadata=LoraMetadata(
            trigger="ohwx",
            class_word="person",
            family="sd15",
            model_set="sd15-base",
            rank=16,
            alpha=16.0,
            text_encoder=False,
            resolution=512,
            steps=400,
            best_step=300,
            best_similarity=0.61,
        ),
        params={"steps": 400, "lr": 1e-4, "photos": "in/", "flip": True},
        used=("a.jpg", "b.jpg"),
        rejected=(
            PhotoOutcome("blurry.jpg", "rejected", ("too blurry | sharpness 12",), 0.41),
            PhotoOutcome("group.png", "skipped", ("two faces\npick one",)),
        ),
        warnings=("only 2 photos; 10+ recommended",),
        losses=tuple((step, 0.2 - step / 4000) for step in range(10, 410, 10)),
        similarities=((100, 0.35), (200, 0.52), (300, 0.61), (400, 0.58)),
        best_step=300,
        best_similarity=0.61,
        started=datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc),
        duration_s=3723.4,
        status="finished",
        device="cuda (NVIDIA H100)",
        versions={"python": "3.11.9", "diffusers": "0.30.0"},
        score_encoder="sface",
        score_threshold=0.363,
    )
    return dataclasses.replace(summary, **changes)


def _svg(run_dir: Path) -> ET.Element:
    return ET.fromstring((run_dir / "curves.svg").read_text(encoding="utf-8"))


def _polylines(root: ET.Element) -> dict[str, ET.Element]:
    return {line.get("id", ""): line for line in root.iter(f"{SVG}polyline")}


def test_json_round_trip(tmp_path: Path) -> None:
    summary = _summary(tmp_path)
    json_path, md_path = write_report(summary)
    assert (json_path, md_path) == (tmp_path / "report.json", tmp_path / "report.md")

    data = read_report(json_path)
    assert data == read_report(tmp_path)  # a run folder works too
    assert data["schema"] == 1
    assert data["run_dir"] == str(tmp_path)
    assert data["metadata"]["trigger"] == "ohwx"
    assert data["metadata"]["instance_prompt"] == "ohwx person"
    assert data["params"] == dict(summary.params)
    assert data["used"] == ["a.jpg", "b.jpg"]
    assert data["rejected"][0] == {
        "file": "blurry.jpg",
        "status": "rejected",
        "reasons": ["too blurry | sharpness 12"],
        "similarity": 0.41,
    }
    assert data["rejected"][1]["similarity"] is None
    assert data["warnings"] == list(summary.warnings)
    assert data["losses"][0] == {"step": 10, "loss": pytest.approx(0.1975)}
    assert len(data["losses"]) == len(summary.losses)
    assert data["similarities"][2] == {"step": 300, "similarity": 0.61}
    assert (data["best_step"], data["best_similarity"]) == (300, 0.61)
    assert datetime.fromisoformat(data["started"]) == summary.started
    assert data["duration_s"] == 3723.4
    assert data["status"] == "finished"
    assert data["device"] == "cuda (NVIDIA H100)"
    assert data["versions"] == dict(summary.versions)
    assert (data["score_encoder"], data["score_threshold"]) == ("sface", 0.363)


def test_out_dir_overrides_run_dir(tmp_path: Path) -> None:
    out = tmp_path / "elsewhere"
    write_report(_summary(tmp_path / "run"), out)
    assert sorted(p.name for p in out.iterdir()) == ["curves.svg", "report.json", "report.md"]
    assert not (tmp_path / "run").exists()


def test_markdown_content(tmp_path: Path) -> None:
    _, md_path = write_report(_summary(tmp_path))
    text = md_path.read_text(encoding="utf-8")
    assert text.startswith("# Training report: ohwx person")
    assert "| Best step | 300 (similarity 0.610) |" in text
    assert "| Status | finished |" in text
    assert "| Duration | 1 h 02 min 03 s |" in text
    assert f'pipe.load_lora_weights("{tmp_path}")' in text
    assert 'image = pipe("a portrait photo of ohwx person' in text
    assert "- a.jpg" in text
    assert "| blurry.jpg | rejected | 0.410 | too blurry \\| sharpness 12 |" in text
    assert "| group.png | skipped | — | two faces<br>pick one |" in text
    assert "- only 2 photos; 10+ recommended" in text
    assert "| lr | 0.0001 |" in text
    assert "| photos | in/ |" in text
    assert "![curves](curves.svg)" in text
    assert "| diffusers | 0.30.0 |" in text


def test_markdown_rows_keep_their_columns(tmp_path: Path) -> None:
    _, md_path = write_report(_summary(tmp_path))
    lines = md_path.read_text(encoding="utf-8").splitlines()
    start = lines.index("| File | Status | Similarity | Reasons |")
    rows = lines[start + 2 : start + 4]
    assert [row.replace("\\|", "").count("|") for row in rows] == [5, 5]


def test_svg_has_a_line_per_curve_and_the_best_step(tmp_path: Path) -> None:
    write_report(_summary(tmp_path))
    root = _svg(tmp_path)
    lines = _polylines(root)
    assert {"loss-ema", "similarity", "threshold"} <= lines.keys()
    assert len(lines["similarity"].get("points", "").split()) == 4
    raw = [c for c in root.iter(f"{SVG}circle") if c.get("class") == "loss-raw"]
    assert len(raw) == 40
    assert root.find(f".//{SVG}circle[@id='best']") is not None
    assert any("best: step 300" in (t.text or "") for t in root.iter(f"{SVG}text"))


def test_empty_similarities_and_nan_losses(tmp_path: Path) -> None:
    losses = ((10, 0.3), (20, math.nan), (30, 0.25), (40, math.inf))
    summary = _summary(
        tmp_path, losses=losses, similarities=(), best_step=None, best_similarity=None
    )
    json_path, md_path = write_report(summary)
    data = read_report(json_path)
    assert [p["loss"] for p in data["losses"]] == [0.3, None, 0.25, None]
    assert data["similarities"] == []
    assert "| Best step | — |" in md_path.read_text(encoding="utf-8")

    svg_text = (tmp_path / "curves.svg").read_text(encoding="utf-8")
    assert "nan" not in svg_text.lower() and "inf" not in svg_text.lower()
    lines = _polylines(ET.fromstring(svg_text))
    assert "similarity" not in lines
    assert len(lines["loss-ema"].get("points", "").split()) == 2
    assert "no validation scores" in svg_text


@pytest.mark.parametrize(
    ("losses", "similarities"),
    [((), ()), (((5, 0.1),), ((5, 0.4),)), (((5, math.nan),), ((5, 0.4), (5, 0.4)))],
)
def test_degenerate_curves(
    tmp_path: Path,
    losses: tuple[tuple[int, float], ...],
    similarities: tuple[tuple[int, float], ...],
) -> None:
    write_report(
        _summary(
            tmp_path, losses=losses, similarities=similarities, best_step=5, best_similarity=0.4
        )
    )
    root = _svg(tmp_path)
    assert ("similarity" in _polylines(root)) == bool(similarities)
    for element in root.iter():
        for value in element.attrib.values():
            assert "nan" not in value.lower()


def test_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_report(_summary(tmp_path))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["curves.svg", "report.json", "report.md"]

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_report(_summary(tmp_path, status="interrupted"))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_read_report_rejects_other_schemas(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"schema": 99}), encoding="utf-8")
    with pytest.raises(StudioError, match="schema 99"):
        read_report(path)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(StudioError, match="not valid JSON"):
        read_report(path)


def test_ema() -> None:
    assert ema([]) == []
    assert ema([1.0, 0.0], alpha=0.5) == [1.0, 0.5]
