"""The training report: ``report.json`` for tools, ``report.md`` for people, ``curves.svg``.

The chart is hand-written SVG (no plotting library): the loss on top (an EMA line over faint raw
points), the identity similarity of the validation images below, with the best step marked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from studio.errors import StudioError
from studio.fileio import atomic_write_text
from studio.profiles.types import PhotoOutcome
from studio.training.types import LoraMetadata

REPORT_SCHEMA = 1
"""Bumped when ``report.json`` changes incompatibly; :func:`read_report` checks it."""


@dataclass(frozen=True)
class TrainingSummary:
    """Everything the report shows about one training run.

    ``losses`` and ``similarities`` are ``(step, value)`` pairs; ``similarities`` hold the mean
    identity similarity of the validation images. ``score_threshold`` is the scoring encoder's
    same-person threshold, shown for context. ``params`` are the effective settings (JSON-able).
    """

    run_dir: Path
    metadata: LoraMetadata
    params: Mapping[str, Any]
    used: tuple[str, ...]
    rejected: tuple[PhotoOutcome, ...]
    warnings: tuple[str, ...]
    losses: tuple[tuple[int, float], ...]
    similarities: tuple[tuple[int, float], ...]
    best_step: int | None
    best_similarity: float | None
    started: datetime
    duration_s: float
    status: Literal["finished", "interrupted"]
    device: str
    versions: Mapping[str, str]
    score_encoder: str
    score_threshold: float | None


def ema(values: Iterable[float], alpha: float = 0.1) -> list[float]:
    """Exponential moving average, starting at the first value."""
    smoothed: list[float] = []
    for value in values:
        smoothed.append(value if not smoothed else alpha * value + (1 - alpha) * smoothed[-1])
    return smoothed


def write_report(summary: TrainingSummary, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write ``curves.svg``, ``report.json`` and ``report.md`` atomically; return the last two.

    ``out_dir`` defaults to the run's folder. Non-finite losses and similarities are written as
    ``null`` in the JSON and left out of the chart.
    """
    out = Path(out_dir) if out_dir is not None else Path(summary.run_dir)
    atomic_write_text(out / "curves.svg", _svg(summary))
    text = json.dumps(_json(summary), indent=2, ensure_ascii=False, allow_nan=False, default=str)
    json_path = atomic_write_text(out / "report.json", text + "\n")
    md_path = atomic_write_text(out / "report.md", _markdown(summary))
    return json_path, md_path


def read_report(path: Path) -> dict[str, Any]:
    """Load ``report.json`` (or the one in the folder ``path``) and check its schema number."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StudioError(f"training report {path} is not valid JSON: {exc}") from exc
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema != REPORT_SCHEMA:
        raise StudioError(
            f"training report {path} has schema {schema!r}, which this version of the studio "
            f"does not read (expected {REPORT_SCHEMA})"
        )
    return data


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _json(summary: TrainingSummary) -> dict[str, Any]:
    return {
        "schema": REPORT_SCHEMA,
        "run_dir": str(summary.run_dir),
        "metadata": {
            **asdict(summary.metadata),
            "instance_prompt": summary.metadata.instance_prompt,
        },
        "params": dict(summary.params),
        "used": list(summary.used),
        "rejected": [
            {
                "file": item.file,
                "status": item.status,
                "reasons": list(item.reasons),
                "similarity": _finite(item.similarity),
            }
            for item in summary.rejected
        ],
        "warnings": list(summary.warnings),
        "losses": [{"step": s, "loss": _finite(v)} for s, v in summary.losses],
        "similarities": [{"step": s, "similarity": _finite(v)} for s, v in summary.similarities],
        "best_step": summary.best_step,
        "best_similarity": _finite(summary.best_similarity),
        "started": summary.started.isoformat(),
        "duration_s": summary.duration_s,
        "status": summary.status,
        "device": summary.device,
        "versions": dict(summary.versions),
        "score_encoder": summary.score_encoder,
        "score_threshold": _finite(summary.score_threshold),
    }


# --- Markdown ---------------------------------------------------------------------------------


def _cell(value: object) -> str:
    """Make text safe inside a Markdown table cell or list item."""
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    return "<br>".join(line.strip() for line in text.splitlines())


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


def _score(value: float | None) -> str:
    return "—" if _finite(value) is None else f"{value:.3f}"


def _setting(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _markdown(summary: TrainingSummary) -> str:
    meta = summary.metadata
    best = (
        "—"
        if summary.best_step is None
        else f"{summary.best_step} (similarity {_score(summary.best_similarity)})"
    )
    threshold = f"{_score(summary.score_threshold)} ({summary.score_encoder})"
    lines = [f"# Training report: {_cell(meta.instance_prompt)}", ""]
    lines += _table(
        ("", ""),
        [
            ("Status", summary.status),
            ("Steps", meta.steps),
            ("Best step", best),
            ("Same-person threshold", threshold),
            ("Started", summary.started.isoformat(timespec="seconds")),
            ("Duration", _duration(summary.duration_s)),
            ("Device", summary.device),
            ("Model set", meta.model_set),
            ("Family", meta.family),
            ("LoRA", f"rank {meta.rank}, alpha {meta.alpha:g}, resolution {meta.resolution}"),
            ("Text encoder trained", "yes" if meta.text_encoder else "no"),
        ],
    )
    prompt = f"a portrait photo of {meta.instance_prompt}, natural light, detailed"
    lines += [
        "## How to use",
        "",
        f"Put **{_cell(meta.instance_prompt)}** in the prompt. With diffusers:",
        "",
        "```python",
        f"pipe.load_lora_weights({json.dumps(str(summary.run_dir))})",
        f"image = pipe({json.dumps(prompt)}).images[0]",
        "```",
        "",
        f"## Photos used ({len(summary.used)})",
        "",
        *([f"- {_cell(name)}" for name in summary.used] or ["None."]),
        "",
        f"## Photos left out ({len(summary.rejected)})",
        "",
    ]
    if summary.rejected:
        lines += _table(
            ("File", "Status", "Similarity", "Reasons"),
            [
                (item.file, item.status, _score(item.similarity), "; ".join(item.reasons) or "—")
                for item in summary.rejected
            ],
        )
    else:
        lines += ["None.", ""]
    lines += [
        "## Warnings",
        "",
        *([f"- {_cell(w)}" for w in summary.warnings] or ["None."]),
        "",
        "## Parameters",
        "",
        *_table(("Setting", "Value"), [(k, _setting(v)) for k, v in summary.params.items()]),
        "## Curves",
        "",
        "![curves](curves.svg)",
        "",
        "## Versions",
        "",
        *_table(("Package", "Version"), summary.versions.items()),
    ]
    return "\n".join(lines)


# --- SVG chart --------------------------------------------------------------------------------

_WIDTH, _LEFT, _RIGHT = 640, 60, 20
_PANEL_H, _PLOT_TOP, _PLOT_H = 200, 30, 140
_LOSS_COLOR, _SIM_COLOR, _BEST_COLOR = "#1f77b4", "#2ca02c", "#d62728"


def _points(pairs: Iterable[tuple[int, float]]) -> list[tuple[int, float]]:
    return [(step, value) for step, value in pairs if math.isfinite(value)]


def _range(values: Sequence[float], pad: float = 0.05) -> tuple[float, float]:
    """The span of ``values`` with a margin; never empty or zero-width."""
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    if hi == lo:
        span = abs(lo) * 0.1 or 1.0
        return lo - span, hi + span
    margin = (hi - lo) * pad
    return lo - margin, hi + margin


@dataclass(frozen=True)
class _Panel:
    """One plot area of the chart and its data-to-pixel mapping."""

    index: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    @property
    def top(self) -> float:
        return self.index * _PANEL_H + _PLOT_TOP

    def x(self, step: float) -> float:
        lo, hi = self.x_range
        return _LEFT + (step - lo) / (hi - lo) * (_WIDTH - _LEFT - _RIGHT)

    def y(self, value: float) -> float:
        lo, hi = self.y_range
        return self.top + _PLOT_H - (value - lo) / (hi - lo) * _PLOT_H

    def polyline(self, points: Iterable[tuple[float, float]], attrs: str) -> str:
        coords = " ".join(f"{self.x(s):.1f},{self.y(v):.1f}" for s, v in points)
        return f'<polyline points="{coords}" fill="none" {attrs}/>'

    def axes(self, title: str) -> list[str]:
        """Frame, title, grid lines and tick labels."""
        right, bottom = _WIDTH - _RIGHT, self.top + _PLOT_H
        parts = [
            f'<text x="{_LEFT}" y="{self.top - 10}" font-weight="bold">{title}</text>',
            f'<rect x="{_LEFT}" y="{self.top}" width="{right - _LEFT}" height="{_PLOT_H}" '
            'fill="none" stroke="#999"/>',
        ]
        lo, hi = self.y_range
        for value in (lo, (lo + hi) / 2, hi):
            y = self.y(value)
            parts.append(
                f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eee"/>'
            )
            parts.append(
                f'<text x="{_LEFT - 5}" y="{y + 4:.1f}" text-anchor="end">{value:.3g}</text>'
            )
        lo, hi = self.x_range
        for step in (lo, (lo + hi) / 2, hi):
            parts.append(
                f'<text x="{self.x(step):.1f}" y="{bottom + 15}" text-anchor="middle">'
                f"{step:.0f}</text>"
            )
        return parts

    def empty(self, message: str) -> str:
        x, y = (_LEFT + _WIDTH - _RIGHT) / 2, self.top + _PLOT_H / 2
        return f'<text x="{x:.0f}" y="{y:.0f}" text-anchor="middle" fill="#777">{message}</text>'


def _svg(summary: TrainingSummary) -> str:
    losses, sims = _points(summary.losses), _points(summary.similarities)
    best = _finite(summary.best_similarity)
    has_best = summary.best_step is not None and best is not None and bool(sims)
    steps = [s for s, _ in (*losses, *sims)] + ([summary.best_step] if has_best else [])
    x_range = _range(steps, pad=0.0)

    loss = _Panel(0, x_range, _range([v for _, v in losses]))
    parts = loss.axes("Training loss (line: EMA, dots: raw)")
    if losses:
        parts += [
            f'<circle class="loss-raw" cx="{loss.x(s):.1f}" cy="{loss.y(v):.1f}" r="1.5" '
            f'fill="{_LOSS_COLOR}" fill-opacity="0.25"/>'
            for s, v in losses
        ]
        smooth = zip([s for s, _ in losses], ema(v for _, v in losses), strict=True)
        parts.append(
            loss.polyline(smooth, f'id="loss-ema" stroke="{_LOSS_COLOR}" stroke-width="2"')
        )
    else:
        parts.append(loss.empty("no loss values"))

    threshold = _finite(summary.score_threshold)
    extra = [v for v in (threshold, best if has_best else None) if v is not None]
    sim = _Panel(1, x_range, _range([v for _, v in sims] + extra))
    parts += sim.axes("Identity similarity of validation images")
    if sims:
        if threshold is not None:
            parts.append(
                sim.polyline(
                    [(x_range[0], threshold), (x_range[1], threshold)],
                    'id="threshold" stroke="#999" stroke-dasharray="4 3"',
                )
            )
            parts.append(
                f'<text x="{_WIDTH - _RIGHT - 4}" y="{sim.y(threshold) - 4:.1f}" '
                'text-anchor="end" fill="#777">same-person threshold</text>'
            )
        parts.append(sim.polyline(sims, f'id="similarity" stroke="{_SIM_COLOR}" stroke-width="2"'))
        parts += [
            f'<circle cx="{sim.x(s):.1f}" cy="{sim.y(v):.1f}" r="2.5" fill="{_SIM_COLOR}"/>'
            for s, v in sims
        ]
        if has_best:
            bx, by = sim.x(summary.best_step), sim.y(best)
            left = bx > (_LEFT + _WIDTH - _RIGHT) / 2  # label on the side with room
            parts += [
                f'<line x1="{bx:.1f}" y1="{sim.top}" x2="{bx:.1f}" y2="{sim.top + _PLOT_H}" '
                f'stroke="{_BEST_COLOR}" stroke-dasharray="3 3"/>',
                f'<circle id="best" cx="{bx:.1f}" cy="{by:.1f}" r="4.5" fill="none" '
                f'stroke="{_BEST_COLOR}" stroke-width="2"/>',
                f'<text x="{bx - 6 if left else bx + 6:.1f}" y="{sim.top + 12}" '
                f'text-anchor="{"end" if left else "start"}" fill="{_BEST_COLOR}">'
                f"best: step {summary.best_step}, {best:.3f}</text>",
            ]
    else:
        parts.append(sim.empty("no validation scores"))

    height = 2 * _PANEL_H + 10
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
            f'viewBox="0 0 {_WIDTH} {height}" font-family="sans-serif" font-size="11">',
            f'<rect width="{_WIDTH}" height="{height}" fill="white"/>',
            *parts,
            f'<text x="{_WIDTH - _RIGHT}" y="{height - 2}" text-anchor="end">step</text>',
            "</svg>",
            "",
        ]
    )
