"""Plotly figures for the report, built from the bounded series in results.json (never from raw events).

The timeline is already cut into at most ``metrics.MAX_BUCKETS`` buckets, so each
figure has a few hundred points whatever the history's size, and the page stays
quick. Figures are returned as JSON strings for ``Plotly.newPlot`` in the page;
the page loads ``plotly.min.js`` from its own folder (no CDN), copied there by
:func:`copy_plotly_js`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from plotly.utils import PlotlyJSONEncoder

PLOTLY_JS = "plotly.min.js"
COLORS = {"pass": "#1a7f37", "fail": "#cf222e", "unknown": "#9a6700", "error": "#6e7781"}
FAULT_FILL = "rgba(207, 34, 46, 0.12)"


def plotly_js_source() -> Path:
    path = Path(plotly.__file__).parent / "package_data" / PLOTLY_JS
    if not path.is_file():
        raise FileNotFoundError(f"plotly's bundled {PLOTLY_JS} is missing from {path.parent}")
    return path


def copy_plotly_js(folder: Path) -> Path:
    """Put plotly.min.js beside a report (skipped when an identical copy is already there)."""
    src, dst = plotly_js_source(), folder / PLOTLY_JS
    if not dst.exists() or dst.stat().st_size != src.stat().st_size:
        tmp = dst.with_suffix(".tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
    return dst


def to_json(fig: go.Figure) -> str:
    """Figure JSON safe to embed in a <script> element."""
    return json.dumps(fig.to_plotly_json(), cls=PlotlyJSONEncoder, separators=(",", ":")).replace(
        "</", "<\\/"
    )


def timeline_figure(tl: Mapping[str, Any], title: str = "") -> go.Figure:
    """Delivery rate over publish-to-deliver latency (p50, p99), fault windows shaded over both."""
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        row_heights=[0.4, 0.6],
    )
    t = list(tl.get("t", []))
    width = float(tl.get("bucket_s") or 1.0)
    mid = [x + width / 2 for x in t]
    fig.add_trace(
        go.Bar(
            x=mid, y=tl.get("delivery_rate", []), width=width, name="deliveries/s", marker_color="#0969da"
        ),
        row=1,
        col=1,
    )
    lost = [n / width for n in tl.get("lost", [])]
    if any(lost):
        fig.add_trace(
            go.Bar(x=mid, y=lost, width=width, name="never delivered /s", marker_color=COLORS["fail"]),
            row=1,
            col=1,
        )
    for key, color, dash in (("p50_ms", "#8250df", "solid"), ("p99_ms", "#bc4c00", "dot")):
        fig.add_trace(
            go.Scatter(
                x=mid,
                y=tl.get(key, []),
                mode="lines+markers",
                marker={"size": 4},
                line={"color": color, "dash": dash},
                name=key.replace("_ms", ""),
                connectgaps=False,
            ),
            row=2,
            col=1,
        )
    for w in tl.get("faults", []):
        start, end = w.get("start_s"), w.get("end_s")
        if start is None or end is None:
            continue
        fig.add_vrect(
            x0=start,
            x1=max(end, start + width / 4),
            fillcolor=FAULT_FILL,
            line_width=0,
            layer="below",
            row="all",
            col=1,
        )
        fig.add_annotation(
            x=start,
            y=1.0,
            xref="x",
            yref="paper",
            text=str(w.get("name")) + (" (open)" if w.get("open") else ""),
            showarrow=False,
            xanchor="left",
            yanchor="bottom",
            font={"size": 10, "color": COLORS["fail"]},
        )
    fig.update_layout(
        title={"text": title, "font": {"size": 13}} if title else None,
        height=420,
        margin={"l": 60, "r": 20, "t": 40 if title else 24, "b": 40},
        barmode="overlay",
        legend={"orientation": "h", "y": -0.15},
        hovermode="x unified",
        template="plotly_white",
    )
    fig.update_xaxes(title_text="seconds since run start", row=2, col=1)
    fig.update_yaxes(title_text="deliveries/s", row=1, col=1)
    fig.update_yaxes(title_text="latency (ms)", row=2, col=1)
    fig.update_yaxes(rangemode="tozero")
    return fig


def load_figure(load: Mapping[str, Any]) -> go.Figure:
    """A load run over time: deliveries and publishes a second over push latency (p50, p99), fault
    windows shaded (``notes.load`` of a ``fastport-lab load`` scenario: its ``series`` and ``phases``)."""
    series = load.get("series") or {}
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.45, 0.55])
    t = list(series.get("t_s", []))
    step = float(series.get("step_s") or 1.0)
    mid = [x + step / 2 for x in t]
    fig.add_trace(
        go.Scatter(
            x=mid, y=series.get("deliveries_per_s", []), name="deliveries/s", line={"color": "#0969da"}
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(x=mid, y=series.get("publishes_per_s", []), name="publishes/s", line={"color": "#57606a"}),
        row=1,
        col=1,
    )
    for key, color, dash in (("push_p50_ms", "#8250df", "solid"), ("push_p99_ms", "#bc4c00", "dot")):
        fig.add_trace(
            go.Scatter(
                x=mid,
                y=series.get(key, []),
                mode="lines",
                line={"color": color, "dash": dash},
                name=key.replace("push_", "push ").replace("_ms", ""),
                connectgaps=False,
            ),  # fmt: skip
            row=2,
            col=1,
        )
    for ph in load.get("phases", []):
        if ph.get("kind") != "fault":
            continue
        fig.add_vrect(
            x0=ph["start_s"], x1=max(ph["end_s"], ph["start_s"] + step / 4), fillcolor=FAULT_FILL,
            line_width=0, layer="below", row="all", col=1,
        )  # fmt: skip
        fig.add_annotation(
            x=ph["start_s"], y=1.0, xref="x", yref="paper", text=str(ph.get("fault")), showarrow=False,
            xanchor="left", yanchor="bottom", font={"size": 10, "color": COLORS["fail"]},
        )  # fmt: skip
    fig.update_layout(
        height=440,
        margin={"l": 60, "r": 20, "t": 24, "b": 40},
        legend={"orientation": "h", "y": -0.15},
        hovermode="x unified",
        template="plotly_white",
    )
    fig.update_xaxes(title_text="seconds since the load started", row=2, col=1)
    fig.update_yaxes(title_text="per second", row=1, col=1)
    fig.update_yaxes(title_text="push latency (ms)", row=2, col=1, rangemode="tozero")
    return fig


def trend_figure(runs: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Scenarios per status for each past run (oldest left), and the worst fault-window p99."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x = [r["run_id"] for r in runs]
    for status in ("pass", "fail", "unknown"):
        fig.add_trace(
            go.Bar(
                x=x, y=[r["counts"].get(status, 0) for r in runs], name=status, marker_color=COLORS[status]
            ),
            secondary_y=False,
        )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[r.get("worst_fault_p99_ms") for r in runs],
            name="worst fault p99 (ms)",
            mode="lines+markers",
            line={"color": "#0969da"},
        ),
        secondary_y=True,
    )
    fig.update_layout(
        barmode="stack",
        height=320,
        margin={"l": 50, "r": 50, "t": 20, "b": 80},
        template="plotly_white",
        legend={"orientation": "h", "y": -0.35},
    )
    fig.update_yaxes(title_text="scenarios", secondary_y=False)
    fig.update_yaxes(title_text="ms", secondary_y=True, rangemode="tozero")
    fig.update_xaxes(type="category")
    return fig
