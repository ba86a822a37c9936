"""The report's plotly figures: a thin layer over the ``*_info`` data, one function per view.

Every point carries its trial number as ``customdata`` (the page's click handler reads
it), and every view ends with an empty trace named ``selected`` that the page fills with
the selected point (see ``report.js``). Strings from the study (layer names) are
HTML-escaped: plotly renders a subset of HTML in hover text.
"""

from __future__ import annotations

import html
import math
from typing import Any

from slimtune.search.pareto import FrontPoint
from slimtune.viz.front import FrontInfo, plan_summary
from slimtune.viz.history import PHASES, HistoryInfo
from slimtune.viz.plans import PlanInfo

__all__ = ["scatter", "scatter_3d", "history", "plan_heatmap", "AXES"]

#: metric -> axis title (with its unit) and whether the axis is logarithmic
AXES = {
    "accuracy": ("validation accuracy (fraction correct)", False),
    "size_bytes": ("size of the exported file (bytes, log scale)", True),
    "flops": ("effective MACs per image (batch 1, log scale)", True),
    "latency_ms": ("latency (ms per image, batch 1, log scale)", True),
}
_PHASE_COLOURS = {"uniform": "#1f77b4", "guided": "#2ca02c", "one-shot": "#17becf",
                  "warm start": "#1f77b4", "user": "#9467bd", "sampler": "#ff7f0e"}
_TEMPLATE = "plotly_white"


def _hover(info: FrontInfo, p: FrontPoint, plan: bool) -> str:
    t = info.teacher
    lines = [f"<b>trial {p.trial}</b>",
             f"{p.size_bytes:,} B ({info.x_smaller(p):.1f}x smaller"
             + (f", {p.bits_per_weight:.2f} bits a weight)" if p.bits_per_weight is not None
                else ")"),
             f"{p.flops:,} MACs ({info.x_fewer(p):.2f}x fewer)",
             f"accuracy {p.accuracy:.4f} ({p.accuracy / t['accuracy'] * 100:.1f} % of the "
             "teacher)" if t["accuracy"] else f"accuracy {p.accuracy:.4f}"]
    if p.latency_ms is not None:
        lines.append(f"latency {p.latency_ms:.3f} ms")
    if p.trial in info.infeasible:
        lines.append("over a budget (infeasible)")
    if plan:
        lines.append(html.escape(plan_summary(p.plan, "\n")).replace("\n", "<br>"))
    lines.append("click to select")
    return "<br>".join(lines)


def _coordinates(points: list[FrontPoint], keys: list[str]) -> dict[str, Any]:
    """x (y, z) = the metrics ``keys`` of ``points``; customdata = their trial numbers."""
    return {**{"xyz"[i]: [p.metric(k) for p in points] for i, k in enumerate(keys)},
            "customdata": [p.trial for p in points]}


def _traces(info: FrontInfo, keys: list[str], three_d: bool) -> list[Any]:
    import plotly.graph_objects as go

    Scatter = go.Scatter3d if three_d else go.Scatter
    small = 0.7 if three_d else 1.0
    dominated = [p for p in info.others if p.trial not in info.infeasible]
    over = [p for p in info.others if p.trial in info.infeasible]
    front = info.front
    colour_key = "flops" if keys[0] != "flops" else "size_bytes"
    out = []
    for name, pts, marker in (
        ("dominated trials", dominated, dict(color="#9e9e9e", size=7 * small, opacity=0.35)),
        ("over a budget", over, dict(color="#9e9e9e", size=7 * small, opacity=0.35,
                                     symbol="x")),
    ):
        if pts:
            out.append(Scatter(mode="markers", name=name, marker=marker,
                               text=[_hover(info, p, False) for p in pts],
                               hovertemplate="%{text}<extra></extra>",
                               **_coordinates(pts, keys)))
    colours = [math.log10(max(p.metric(colour_key), 1)) for p in front]
    out.append(Scatter(
        mode="markers", name="Pareto front",
        marker=dict(size=11 * small, color=colours, colorscale="Viridis",
                    line=dict(width=1, color="#222"),
                    colorbar=dict(title=dict(text="log10 " + (
                        "MACs" if colour_key == "flops" else "bytes")), thickness=12),
                    showscale=not three_d),
        text=[_hover(info, p, True) for p in front],
        hovertemplate="%{text}<extra></extra>", **_coordinates(front, keys)))
    teacher = {"xyz"[i]: [float(info.teacher.get(k, 0) or 0)] for i, k in enumerate(keys)}
    out.append(Scatter(mode="markers", name="teacher (uncompressed)",
                       marker=dict(symbol="diamond" if three_d else "star", size=16 * small,
                                   color="crimson", line=dict(width=1, color="#222")),
                       hovertemplate="teacher (uncompressed)<br>"
                       f"{int(info.teacher['size_bytes']):,} B, "
                       f"{int(info.teacher['flops']):,} MACs<br>accuracy "
                       f"{info.teacher['accuracy']:.4f}<extra></extra>", **teacher))
    out.append(Scatter(mode="markers", name="selected", showlegend=False, hoverinfo="skip",
                       marker=dict(size=22 * small, color="rgba(0,0,0,0)",
                                   line=dict(width=3, color="#000")),
                       **{a: [] for a in "xyz"[:len(keys)]}))
    return out


def _title(text: str) -> dict[str, Any]:
    return dict(text=text, x=0.01, xanchor="left", font=dict(size=15))


def scatter(info: FrontInfo, x: str, title: str) -> Any:
    """Validation accuracy against ``x`` (a cost metric on a log axis): dominated trials
    faint, the front bold and coloured by the other cost, the teacher a star, the budgets
    that apply as dashed lines."""
    import plotly.graph_objects as go

    fig = go.Figure(_traces(info, [x, "accuracy"], three_d=False))
    limit = {"size_bytes": "max_size", "flops": "max_flops"}.get(x)
    if limit and limit in info.budgets:
        fig.add_vline(x=info.budgets[limit], line=dict(dash="dash", color="#555"),
                      annotation_text=f"--{limit.replace('_', '-')} budget")
    if "min_accuracy" in info.budgets:
        fig.add_hline(y=info.budgets["min_accuracy"], line=dict(dash="dash", color="#555"),
                      annotation_text="--min-accuracy budget")
    fig.update_layout(title=_title(title), template=_TEMPLATE, clickmode="event",
                      xaxis=dict(title=AXES[x][0], type="log" if AXES[x][1] else "linear"),
                      yaxis=dict(title=AXES["accuracy"][0]),
                      legend=dict(orientation="h", y=-0.22), margin=dict(t=50, r=20))
    return fig


def scatter_3d(info: FrontInfo) -> Any:
    """Size, effective MACs and validation accuracy in one rotatable view."""
    import plotly.graph_objects as go

    fig = go.Figure(_traces(info, ["size_bytes", "flops", "accuracy"], three_d=True))
    fig.update_layout(
        title=_title("All three objectives (drag to rotate)"), template=_TEMPLATE,
        scene=dict(xaxis=dict(title="size (bytes)", type="log"),
                   yaxis=dict(title="effective MACs", type="log"),
                   zaxis=dict(title="validation accuracy")),
        legend=dict(orientation="h", y=-0.05), margin=dict(t=50, l=0, r=0, b=0))
    return fig


def history(hist: HistoryInfo) -> Any:
    """The front's hypervolume after every finished job, against jobs finished (left)
    and fine-tune epochs spent (right); each job a marker coloured by its phase."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=("against jobs finished",
                                        "against fine-tune epochs spent"))
    ev = hist.events
    for col, xs in ((1, [e.order for e in ev]), (2, [e.epochs for e in ev])):
        for name, ys, dash in (("hypervolume", [e.hypervolume for e in ev], "solid"),
                               ("hypervolume, size and MACs in decades",
                                [e.hypervolume_log for e in ev], "dash")):
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name,
                                     line=dict(shape="hv", color="#444", width=2, dash=dash),
                                     legendgroup=name, showlegend=col == 1,
                                     hoverinfo="skip"), row=1, col=col)
        for phase in hist.phases:
            mine = [e for e in ev if e.phase == phase]
            fig.add_trace(go.Scatter(
                x=[e.order if col == 1 else e.epochs for e in mine],
                y=[e.hypervolume for e in mine], mode="markers", name=PHASES[phase],
                legendgroup=phase, showlegend=col == 1,
                marker=dict(color=_PHASE_COLOURS[phase], size=7,
                            symbol=[_symbol(e, hist) for e in mine],
                            line=dict(width=1, color="#fff")),
                customdata=[e.trial for e in mine],
                text=[_history_hover(e, hist) for e in mine],
                hovertemplate="%{text}<extra></extra>"), row=1, col=col)
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", name="selected",
                                 showlegend=False, hoverinfo="skip",
                                 marker=dict(size=18, color="rgba(0,0,0,0)",
                                             line=dict(width=3, color="#000"))),
                      row=1, col=col)
    fig.add_hline(y=0.0, line=dict(dash="dot", color="crimson"),
                  annotation_text="teacher alone", annotation_position="top left")
    fig.update_xaxes(title_text="jobs finished", row=1, col=1)
    fig.update_xaxes(title_text="fine-tune epochs spent (all jobs)", row=1, col=2)
    fig.update_yaxes(title_text="hypervolume (1 = a free, perfect model)", row=1, col=1)
    fig.update_layout(title=_title("How the search got there"), template=_TEMPLATE,
                      clickmode="event", legend=dict(orientation="h", y=-0.25),
                      margin=dict(t=70, r=20))
    return fig


def _symbol(e: Any, hist: HistoryInfo) -> str:
    if e.state == "failed":
        return "x"
    if hist.rungs is not None and e.rung is not None:
        top = len(hist.rungs) - 1
        return "circle" if e.rung >= top else ("circle-open" if e.rung == 0 else "diamond")
    return "circle" if e.state == "complete" else "circle-open"


def _history_hover(e: Any, hist: HistoryInfo) -> str:
    who = f"trial {e.trial}" if e.trial is not None else "screened plan (rung 0)"
    lines = [f"<b>{who}</b>", PHASES[e.phase], e.state.replace("_", " ")]
    if hist.rungs is not None and e.rung is not None:
        lines.append(f"rung {e.rung}")
    if e.accuracy is not None:
        lines.append(f"accuracy {e.accuracy:.4f}")
    lines.append(f"hypervolume after it {e.hypervolume:.4f} "
                 f"({e.hypervolume_log:.4f} in decades)")
    lines.append(f"{e.epochs:.1f} fine-tune epochs spent")
    return "<br>".join(lines)


def plan_heatmap(plans: PlanInfo, columns: list[int]) -> Any:
    """One heatmap per knob, stacked: layers (rows) x the teacher and the front points
    ``columns`` (smallest first); colour = compression strength (pale: spared), text =
    the value."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n = len(plans.knobs)
    layers = [html.escape(name) for name in plans.layers]
    fig = make_subplots(rows=n, cols=1, shared_xaxes=True, vertical_spacing=0.3 / n,
                        subplot_titles=[html.escape(label) for label in plans.labels])
    names = ["teacher"] + [f"#{t}" for t in columns]
    pts = [plans.teacher] + [plans.points[t] for t in columns]
    show_text = len(pts) <= 40
    for k, label in enumerate(plans.labels):
        z = [[p.strength[i][k] for p in pts] for i in range(len(layers))]
        text = [[p.text[i][k] for p in pts] for i in range(len(layers))]
        fig.add_trace(go.Heatmap(
            z=z, x=list(range(len(pts))), y=layers, text=text, coloraxis="coloraxis",
            texttemplate="%{text}" if show_text else None, textfont=dict(size=10),
            customdata=[[None] + columns for _ in layers], xgap=1, ygap=1,
            hovertemplate=f"%{{y}}<br>{html.escape(label)} = %{{text}}<extra></extra>"),
            row=k + 1, col=1)
        fig.update_yaxes(autorange="reversed", row=k + 1, col=1)
    fig.update_xaxes(tickvals=list(range(len(pts))), ticktext=names, row=n, col=1)
    fig.update_layout(
        title=_title("What each front point does to each layer (columns: the teacher, then "
                     "the front points, smallest first; click one to select it)"),
        template=_TEMPLATE, clickmode="event",
        coloraxis=dict(colorscale="Blues", cmin=0, cmax=1,
                       colorbar=dict(title=dict(text="compression (0 = the layer spared)",
                                                side="right"), thickness=12)),
        height=90 + n * (40 + 22 * len(layers)), margin=dict(t=70, r=20, b=40))
    return fig
