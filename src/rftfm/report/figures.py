"""Plotly figures of a run as plain figure dicts: small multiples with alarm episodes shaded.

Built as JSON-ready dicts rather than through ``plotly.graph_objects``: a figure object validates
every property on every call, which made a long run's report take minutes (one ``add_vline``
per diagnosis per panel). The dicts follow plotly.js' figure schema; plotly.js draws them.

Long series are downsampled for display by keeping each bucket's minimum and maximum (spikes,
NaN bursts and collapses stay visible). plotly-resampler does this for a live Dash server; a
static page needs the points chosen up front, so the few lines are written here.
"""

from __future__ import annotations

import html
import math
from typing import Any, Sequence

import numpy as np

from rftfm.fm.types import Episode

#: At most this many points per series are drawn (the full series is summarised per bucket).
MAX_POINTS = 1200
#: At most this many episodes are shaded per panel (the episode table lists all).
MAX_SPANS = 100
#: An episode's label is drawn on the first panel when there are at most this many episodes.
MAX_LABELS = 12
EPISODE_FILL = "rgba(214,39,40,0.13)"
ONSET_COLOR = "#7f7f7f"
_AXIS = {"gridcolor": "#eee", "zeroline": False, "linecolor": "#ccc"}


def esc(value: Any) -> str:
    """HTML-escape any value for text or attribute context."""
    return html.escape("" if value is None else str(value), quote=True)


def downsample(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of (x, y): each bucket's min and max, in x order (NaN kept as gaps)."""
    n = len(x)
    if n <= max_points:
        return x, y
    buckets = max(1, max_points // 2)
    size = -(-n // buckets)
    grid = np.concatenate([y, np.full(buckets * size - n, np.nan)]).reshape(buckets, size)
    nan = np.isnan(grid)
    base = np.arange(buckets) * size
    lows = base + np.where(nan, np.inf, grid).argmin(axis=1)  # an all-NaN bucket keeps its first point: a gap
    highs = base + np.where(nan, -np.inf, grid).argmax(axis=1)
    idx = np.unique(np.concatenate([lows, highs]))
    gaps = nan.any(axis=1) & ~nan.all(axis=1)  # a gap inside a bucket stays a gap, room permitting
    if gaps.any() and len(idx) + int(gaps.sum()) <= max_points:
        idx = np.unique(np.concatenate([idx, (base + nan.argmax(axis=1))[gaps]]))
    idx = idx[idx < n]
    return x[idx], y[idx]


def _compact(values: np.ndarray) -> list[float | None]:
    """Finite values to 5 significant digits (a small page), NaN / inf as null (a gap)."""
    return [float(f"{v:.5g}") if math.isfinite(v) else None for v in values.tolist()]


def _step_width(steps: np.ndarray) -> float:
    return float(np.median(np.diff(steps))) if len(steps) > 1 else 1.0


def episode_shapes(episodes: Sequence[Episode], steps: np.ndarray, onset_step: int | None) -> list[dict[str, Any]]:
    """Shaded rectangles for episodes (padded by half a logging interval) and the labelled onset line."""
    half = _step_width(steps) / 2
    longest = sorted(episodes, key=lambda e: e.end_step - e.start_step, reverse=True)[:MAX_SPANS]
    shapes: list[dict[str, Any]] = [
        {
            "type": "rect",
            "xref": "x",
            "yref": "paper",
            "x0": e.start_step - half,
            "x1": e.end_step + half,
            "y0": 0,
            "y1": 1,
            "fillcolor": EPISODE_FILL,
            "line": {"width": 0},
            "layer": "below",
        }
        for e in longest
    ]
    if onset_step is not None:
        shapes.append(
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": onset_step,
                "x1": onset_step,
                "y0": 0,
                "y1": 1,
                "line": {"color": ONSET_COLOR, "dash": "longdash", "width": 1},
            }
        )
    return shapes


def episode_labels(episodes: Sequence[Episode], labels: Sequence[str]) -> list[dict[str, Any]]:
    """The diagnosis of each episode, written once at the top of its span (first panel only)."""
    if len(episodes) > MAX_LABELS:
        return []
    return [
        {
            "x": e.start_step,
            "y": 1,
            "xref": "x",
            "yref": "paper",
            "text": esc(label),
            "showarrow": False,
            "xanchor": "left",
            "yanchor": "bottom",
            "font": {"size": 10, "color": "#b22222"},
        }
        for e, label in zip(episodes, labels)
        if label
    ]


def panel(
    name: str,
    steps: np.ndarray,
    values: np.ndarray,
    shapes: list[dict[str, Any]],
    annotations: list[dict[str, Any]] | None = None,
    height: int = 230,
) -> dict[str, Any]:
    """One signal over steps: a line, the episodes shaded behind it."""
    x, y = downsample(steps, values)
    title = esc(name) + (
        f" <span style='font-size:10px'>({len(x)} of {len(steps)} points shown)</span>" if len(x) < len(steps) else ""
    )
    return {
        "data": [
            {
                "type": "scattergl" if len(x) > 2000 else "scatter",
                "mode": "lines+markers" if len(x) <= 200 else "lines",
                "x": x.tolist(),
                "y": _compact(y),
                "name": esc(name),
                "marker": {"size": 4},
                "line": {"width": 1.5},
                "connectgaps": False,
                "hovertemplate": "step %{x}: %{y}<extra></extra>",
            }
        ],
        "layout": {
            "title": {"text": title, "font": {"size": 13}, "x": 0.02},
            "height": height,
            "showlegend": False,
            "margin": {"t": 36, "l": 55, "r": 12, "b": 30},
            "xaxis": _AXIS,
            "yaxis": _AXIS,
            "shapes": shapes,
            "annotations": annotations or [],
            "plot_bgcolor": "#fff",
        },
    }


def box_panel(name: str, boxes: dict[str, list[float]], shapes: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-step distributions from precomputed quartiles (``boxes``: x, q1, median, q3, mean, fences)."""
    return {
        "data": [{"type": "box", "name": esc(name), "boxmean": True, "marker": {"color": "#1f77b4"}, **boxes}],
        "layout": {
            "title": {"text": esc(name), "font": {"size": 13}, "x": 0.02},
            "height": 240,
            "showlegend": False,
            "margin": {"t": 36, "l": 55, "r": 12, "b": 30},
            "xaxis": _AXIS,
            "yaxis": _AXIS,
            "shapes": shapes,
            "plot_bgcolor": "#fff",
        },
    }
