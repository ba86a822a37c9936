"""The front as plain data (``front_info``) and a thin plotly layer over it (``write_html``).

Tests check the info layer; the figure only draws it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from slimtune.knobs import KNOBS
from slimtune.search.pareto import FrontPoint, hypervolume, pareto_front
from slimtune.search.study import Run, open_run

__all__ = ["FrontInfo", "front_info", "figure", "write_html", "plan_summary"]


class FrontInfo(NamedTuple):
    run_dir: Path
    dataset: str
    model: str
    teacher: dict[str, Any]
    front: list[FrontPoint]
    others: list[FrontPoint]  # dominated complete trials
    counts: dict[str, int]

    @property
    def hypervolume(self) -> float:
        return hypervolume(self.front, self.teacher)

    def to_dict(self) -> dict[str, Any]:
        keys = ("accuracy", "size_bytes", "flops", "dense_flops", "bitops", "latency_ms")
        return {
            "teacher": {k: self.teacher[k] for k in keys if k in self.teacher},
            "front": [p.to_dict() for p in self.front],
            "hypervolume": self.hypervolume,
        }

    @property
    def has_latency(self) -> bool:
        return any(p.latency_ms is not None for p in self.front)

    def x_smaller(self, p: FrontPoint) -> float:
        return self.teacher["size_bytes"] / p.size_bytes

    def x_fewer(self, p: FrontPoint) -> float:
        return self.teacher["flops"] / p.flops if p.flops else float("inf")


def front_info(run: str | Path | Run) -> FrontInfo:
    run = run if isinstance(run, Run) else open_run(run)
    front = pareto_front(run.study)
    on_front = {p.trial for p in front}
    others = []
    counts = {"complete": 0, "failed": 0, "pruned": 0, "running": 0, "waiting": 0}
    for t in run.study.get_trials(deepcopy=False):
        key = {"COMPLETE": "complete", "FAIL": "failed", "PRUNED": "pruned",
               "WAITING": "waiting"}.get(t.state.name, "running")
        counts[key] += 1
        if t.state.name == "COMPLETE" and t.number not in on_front:
            others.append(FrontPoint.of(t))
    cfg = run.meta["config"]
    return FrontInfo(run.dir, cfg["data"], cfg["model"], run.teacher, front, others, counts)


def plan_summary(plan: dict[str, Any]) -> str:
    """One line per layer: ``name: s=0.70 k=1.00 r=0.50 b=4`` (every knob of plan version
    1, then any other knob that changes the layer, e.g. ``2:4``)."""
    from slimtune.spaces.plan import LayerPlan

    lines = []
    for n, lp in plan.get("layers", {}).items():
        values = LayerPlan.from_dict(lp)
        parts = [k.summary(values[name]) for name, k in KNOBS.items()
                 if k.always_stored or k.active(values[name])]
        lines.append(f"{n}: {' '.join(parts)}")
    if "temperature" in plan:
        lines.append(f"T={plan['temperature']:.2f} alpha={plan['alpha']:.2f}")
    return "<br>".join(lines)


def figure(info: FrontInfo):  # type: ignore[no-untyped-def]
    import plotly.graph_objects as go

    t = info.teacher
    fig = go.Figure()
    if info.others:
        fig.add_trace(go.Scatter(
            x=[o.size_bytes for o in info.others], y=[o.accuracy for o in info.others],
            mode="markers", name="dominated trials", marker=dict(color="lightgrey", size=7),
            text=[f"trial {o.trial}<br>MACs {o.flops:,}" for o in info.others],
            hovertemplate="%{text}<br>size %{x:,} B<br>accuracy %{y:.4f}<extra></extra>",
        ))
    fig.add_trace(go.Scatter(
        x=[p.size_bytes for p in info.front], y=[p.accuracy for p in info.front],
        mode="markers+lines", line=dict(shape="hv", width=1), name="Pareto front",
        marker=dict(size=11, color=[p.flops for p in info.front], colorscale="Viridis",
                    showscale=True, colorbar=dict(title="effective MACs")),
        text=[
            f"trial {p.trial}<br>{info.x_smaller(p):.1f}x smaller, {info.x_fewer(p):.2f}x fewer "
            f"MACs<br>effective MACs {p.flops:,} (dense {p.dense_flops or 0:,})<br>"
            f"{plan_summary(p.plan)}"
            for p in info.front
        ],
        hovertemplate="%{text}<br>size %{x:,} B<br>accuracy %{y:.4f}<extra></extra>",
    ))
    fig.add_trace(go.Scatter(
        x=[t["size_bytes"]], y=[t["accuracy"]], mode="markers", name="teacher",
        marker=dict(symbol="star", size=16, color="crimson"),
        hovertemplate=f"teacher<br>size %{{x:,}} B<br>accuracy %{{y:.4f}}<br>MACs {t['flops']:,}"
        "<extra></extra>",
    ))
    fig.update_layout(
        title=f"slimtune: {info.model} on {info.dataset} — validation accuracy vs size on disk",
        xaxis=dict(title="size of the exported file (bytes, log scale)", type="log"),
        yaxis=dict(title="validation accuracy"),
        template="plotly_white",
    )
    return fig


def write_html(info: FrontInfo, path: str | Path | None = None) -> Path:
    """Write the interactive front (plotly.js inlined, so it opens offline)."""
    from slimtune.files import write_atomic

    out = Path(path) if path else info.run_dir / "pareto.html"
    fig = figure(info)
    write_atomic(out, b"", "the plot", writer=lambda tmp: fig.write_html(
        tmp, include_plotlyjs=True, full_html=True))
    return out
