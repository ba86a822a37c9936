"""The report of a run: one self-contained HTML file (plotly.js inlined once, no network)
with linked views of the front, how the search got there, the per-layer plan of every
front point and the export command of any point you click.

:func:`report_info` gathers the data (plain ``*_info`` functions, tested without a
browser); :func:`write_report` lays it out (``figures.py`` draws, ``report.js`` links the
views, ``report.css`` styles the page). Everything the study holds is escaped: a run
someone sent cannot put markup or script into the page.
"""

from __future__ import annotations

import html
import json
import shlex
import time
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from slimtune import __version__
from slimtune.search.study import Run
from slimtune.units import bits_per_weight, fmt_bytes, fmt_count
from slimtune.viz import figures
from slimtune.viz.front import FrontInfo, as_run, front_info, number, suggested
from slimtune.viz.history import HistoryInfo, history_info
from slimtune.viz.plans import PlanInfo, plan_info
from slimtune.viz.table import (
    FrontRow,
    HeldOutAccuracy,
    command_of,
    held_out_accuracies,
    rows_of,
)

__all__ = ["ReportInfo", "report_info", "write_report", "REPORT_NAME", "read_cards"]

#: the report's file name in the run directory
REPORT_NAME = "report.html"


class ReportInfo(NamedTuple):
    front: FrontInfo
    history: HistoryInfo
    plans: PlanInfo
    table: list[FrontRow]
    tests: dict[int, HeldOutAccuracy]
    #: the point selected when the page opens (the suggested export), or None
    selected: int | None
    suggested_why: str | None


def read_cards(paths: list[str | Path], run_dir: Path) -> list[dict[str, Any]]:
    """Model cards (``PATH.json`` beside an exported ``PATH``, or the ``.json`` itself)
    of files exported from the run in ``run_dir``; a card of another run is refused."""
    from slimtune.errors import RunDirError
    from slimtune.export.card import read_card

    cards = []
    for p in map(Path, paths):
        card = read_card(p.with_suffix(".slim") if p.suffix == ".json" else p)
        if not card:
            raise RunDirError(f"`--card {p}`: no model card there (export writes one "
                              "beside the file: PATH.json)")
        src = card.get("run_dir")
        if not isinstance(src, str) or Path(src).resolve() != Path(run_dir).resolve():
            raise RunDirError(f"`--card {p}` is the card of a file from run {src!r:.200}, "
                              f"not from {run_dir}")
        cards.append(card)
    return cards


def report_info(run: str | Path | Run, cards: list[dict[str, Any]] = ()  # type: ignore[assignment]
                ) -> ReportInfo:
    """Everything the report shows, as plain data."""
    run = as_run(run)
    front = front_info(run)
    tests = held_out_accuracies(run.study.user_attrs.get("finetuned"), list(cards))
    pick = suggested(front)
    return ReportInfo(front, history_info(run, front), plan_info(run, front),
                      rows_of(front, tests), tests,
                      pick["trial"] if pick else None, pick["why"] if pick else None)


# -- the page -------------------------------------------------------------------------------

def _json(obj: Any) -> str:
    """JSON safe inside a <script> element: no ``<``, ``>`` or ``&`` outside escapes."""
    return (json.dumps(obj, separators=(",", ":"), allow_nan=False)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _fig_json(fig: Any) -> Any:
    return json.loads(fig.to_json())


def _views(info: ReportInfo) -> list[dict[str, Any]]:
    """The figures, each with what the page needs to mark the selected point in it."""
    f = info.front
    order = [p.trial for p in f.front]  # the heatmap's columns: smallest first
    views = [
        {"id": "fig-size", "keys": ["size_bytes", "accuracy"], "wide": False,
         "figure": figures.scatter(f, "size_bytes", "Accuracy against size on disk")},
        {"id": "fig-macs", "keys": ["flops", "accuracy"], "wide": False,
         "figure": figures.scatter(f, "flops", "Accuracy against effective MACs")},
        {"id": "fig-3d", "keys": ["size_bytes", "flops", "accuracy"],
         "wide": not f.has_latency, "figure": figures.scatter_3d(f)},
    ]
    if f.has_latency:
        views.append({"id": "fig-latency", "keys": ["latency_ms", "accuracy"], "wide": False,
                      "figure": figures.scatter(f, "latency_ms", "Accuracy against latency")})
    views.append({"id": "fig-history", "keys": ["history"], "wide": True,
                  "figure": figures.history(info.history)})
    if f.front and info.plans.layers and info.plans.knobs:
        views.append({"id": "fig-plan", "keys": ["plan"], "wide": True, "columns": order,
                      "knobs": len(info.plans.knobs),
                      "figure": figures.plan_heatmap(info.plans, order)})
    return views


def _point_data(info: ReportInfo) -> dict[str, Any]:
    """Per complete trial: what the selection panel prints and where the point lies."""
    f, out = info.front, {}
    on_front = {p.trial for p in f.front}
    rows = {r.trial: r for r in info.table}
    history = {e.trial: [e.order, e.epochs, e.hypervolume] for e in info.history.events
               if e.trial is not None and e.state == "complete"}
    for p in f.points:
        plan = info.plans.points.get(p.trial)
        test = info.tests.get(p.trial)
        out[str(p.trial)] = {
            "trial": p.trial, "front": p.trial in on_front,
            "infeasible": p.trial in f.infeasible,
            "size_bytes": p.size_bytes, "flops": p.flops, "accuracy": p.accuracy,
            "fixed_size_bytes": p.fixed_size_bytes, "bits_per_weight": p.bits_per_weight,
            "latency_ms": p.latency_ms,
            "x_smaller": number(f.x_smaller(p)), "x_fewer": number(f.x_fewer(p)),
            "relative": p.accuracy / f.teacher["accuracy"] if f.teacher["accuracy"] else None,
            "test": [test.accuracy, test.source] if test else None,
            "command": rows[p.trial].command if p.trial in rows else command_of(f, p.trial),
            "plan": plan.text if plan else None,
            "distill": [plan.temperature, plan.alpha] if plan else None,
            "history": history.get(p.trial),
        }
    return out


def _table_html(info: ReportInfo) -> str:
    f = info.front
    head = ("<tr><th>trial</th><th>size</th><th>bits / weight</th><th>× smaller</th>"
            "<th>effective MACs</th>"
            "<th>× fewer MACs</th><th>validation accuracy</th><th>of the teacher's</th>"
            "<th>test accuracy</th><th>export command</th></tr>")
    t = f.teacher
    rows = [f"<tr class='teacher'><td>teacher</td><td>{fmt_bytes(t['size_bytes'])}</td>"
            f"<td>{_bits(bits_per_weight(t['size_bytes'], t.get('stored_weights')))}</td>"
            f"<td>1.0</td><td>{fmt_count(t['flops'])}</td><td>1.00</td>"
            f"<td>{t['accuracy']:.4f}</td><td>100.0 %</td>"
            f"<td>{t['test_accuracy']:.4f} <span class='src'>(the uncompressed model)</span>"
            "</td><td></td></tr>"]
    for r in info.table:
        test = (f"{r.test.accuracy:.4f} <span class='src'>({html.escape(r.test.source)})"
                "</span>" if r.test else "<span class='src'>not measured</span>")
        rel = f"{r.val_relative * 100:.1f} %" if r.val_relative is not None else "-"
        cmd = html.escape(r.command)
        rows.append(
            f"<tr data-trial='{r.trial}'><td>{r.trial}</td><td>{fmt_bytes(r.size_bytes)}</td>"
            f"<td>{_bits(r.bits_per_weight)}</td><td>{r.x_smaller:.1f}</td><td>{fmt_count(r.flops)}</td><td>{r.x_fewer:.2f}</td>"
            f"<td>{r.val_accuracy:.4f}</td><td>{rel}</td><td>{test}</td>"
            f"<td><code>{cmd}</code> <button class='copy' data-copy='{cmd}'>copy</button>"
            "</td></tr>")
    return f"<table id='front-table'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _bits(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def _summary_html(info: ReportInfo) -> str:
    f = info.front
    t = f.teacher
    c = f.counts
    return (
        f"<p>Teacher (uncompressed): validation accuracy <b>{t['accuracy']:.4f}</b>, test "
        f"{t['test_accuracy']:.4f}, {fmt_bytes(t['size_bytes'])} on disk, "
        f"{fmt_count(t['flops'])} MACs. Trials: {c['complete']} complete, {c['pruned']} "
        f"stopped or not promoted, {c['failed']} failed"
        + (f", {c['running']} running" if c["running"] else "")
        + f". Front: <b>{len(f.front)}</b> points, hypervolume <b>{f.hypervolume:.4f}</b> "
        f"(1 = a free, perfect model). {info.history.epochs:.1f} fine-tune epochs spent.</p>"
        "<p class='note'>Accuracy is measured on the validation split the search ranks by; "
        "size is the byte length of each trial's exported file; MACs are effective "
        "multiply-accumulates at batch 1 (pruned weights skipped). Click any point, heatmap "
        "column or table row to select it in every view.</p>")


def _footer_html(f: FrontInfo) -> str:
    """How to open the same study in Optuna's own tools."""
    from slimtune.search.storage import storage_url

    if f.shared_storage:
        url = "URL"
    else:  # read-only: the dashboard can neither write to the study nor leave files
        url = shlex.quote(storage_url(f.run_dir.resolve(), read_only=True))
    name = "" if f.study_name == "slimtune" else f" (study {html.escape(f.study_name)})"
    return ("<p>The same study in Optuna's own tools" + name + ": "
            f"<code>optuna-dashboard {html.escape(url)}</code> (read-only; install it with "
            "the Optuna version of this run) or "
            "<code>optuna.visualization.plot_pareto_front(study)</code>; see the README."
            "</p>")


def page(info: ReportInfo) -> str:
    """The report as one HTML document."""
    import plotly.offline

    f = info.front
    views = _views(info)
    data = {
        "views": [{"id": v["id"], "keys": v["keys"], "columns": v.get("columns"),
                   "knobs": v.get("knobs"), "figure": _fig_json(v["figure"])} for v in views],
        "points": _point_data(info),
        "layers": info.plans.layers,
        "knobs": info.plans.labels,
        "selected": info.selected,
        "suggested_why": info.suggested_why,
    }
    divs = "".join(f"<div class='view{' wide' if v['wide'] else ''}' id='{v['id']}'></div>"
                   for v in views)
    title = html.escape(f"slimtune report: {f.model} on {f.dataset}")
    css = resources.files("slimtune.viz").joinpath("report.css").read_text()
    js = resources.files("slimtune.viz").joinpath("report.js").read_text()
    plotly_js = plotly.offline.get_plotlyjs().replace("</script", "<\\/script")
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>{css}</style>
<script>{plotly_js}</script>
</head><body>
<header><h1>{title}</h1>
<p class="where">run <code>{html.escape(str(f.run_dir))}</code> · written {generated} by
slimtune {html.escape(__version__)}</p>{_summary_html(info)}</header>
<section id="selection" aria-live="polite"><h2>Selected point</h2>
<div id="selection-body"><p>Click a point in any view.</p></div></section>
<main>{divs}</main>
<section id="table"><h2>The Pareto front</h2>{_table_html(info)}</section>
<footer>{_footer_html(f)}</footer>
<script type="application/json" id="slimtune-data">{_json(data)}</script>
<script>{js}</script>
</body></html>
"""


def write_report(info: ReportInfo, path: str | Path | None = None) -> Path:
    """Write the report (default ``RUN_DIR/report.html``) atomically; returns its path."""
    from slimtune.files import write_atomic

    out = Path(path) if path else info.front.run_dir / REPORT_NAME
    write_atomic(out, page(info).encode("utf-8"), "the report")
    return out
