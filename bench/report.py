"""Issue 14: the HTML report's file size and generation time on a run (by default the
default digits search that ``bash scripts/run.sh`` leaves in ``runs/digits-small_cnn``).

Two timings, alternating over ``--repeats`` rounds:

- ``cli``: ``slimtune report RUN --out TMP`` as a user runs it, a fresh process each
  time (Python start-up and imports included; ``cli_startup`` is ``slimtune --help``,
  what every command pays before its work);
- ``in-process``: the library call split into its steps: opening the study read-only,
  gathering the data (``report_info``: front, hypervolume history, plans, table), laying
  out the page (``page``: the plotly figures and their JSON), writing the file.

Prints one JSON object (medians, min-max, the file's size and what it is made of) and
writes it to ``--out``.

    .venv/bin/python bench/report.py [--run-dir runs/digits-small_cnn --repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _spread(xs: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3),
            "max": round(max(xs), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "digits-small_cnn")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "report.json")
    args = ap.parse_args()
    if not (args.run_dir / "study.db").is_file():
        sys.exit(f"{args.run_dir} holds no finished search: run `bash scripts/run.sh` first")

    import plotly.offline

    from slimtune.files import write_atomic
    from slimtune.search.study import open_run
    from slimtune.viz.report import page, report_info

    slimtune_cli = Path(sys.executable).with_name("slimtune")
    cli, steps = [], {"open": [], "info": [], "page": [], "write": []}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.html"
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            subprocess.run([str(slimtune_cli), "report", str(args.run_dir), "--out", str(out)],
                           check=True, capture_output=True)
            cli.append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            run = open_run(args.run_dir)
            t1 = time.perf_counter()
            info = report_info(run)
            t2 = time.perf_counter()
            html = page(info)
            t3 = time.perf_counter()
            write_atomic(out, html.encode("utf-8"), "the report")  # as write_report does
            t4 = time.perf_counter()
            for k, v in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                steps[k].append(v)
        startup = []
        for _ in range(args.repeats):  # what every slimtune command pays before its work
            t0 = time.perf_counter()
            subprocess.run([str(slimtune_cli), "--help"], check=True, capture_output=True)
            startup.append(time.perf_counter() - t0)
        size = out.stat().st_size

    lib = len(plotly.offline.get_plotlyjs().encode())
    start = html.index('id="slimtune-data">')
    data = len(html[start:html.index("</script>", start)].encode())
    f = info.front
    doc = {
        "command": f"python bench/report.py --run-dir {os.path.relpath(args.run_dir, ROOT)} "
                   f"--repeats {args.repeats}",
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                 capture_output=True, text=True).stdout.strip(),
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
                   f"Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "run": {"trials": sum(f.counts.values()), "complete": f.counts["complete"],
                "front": len(f.front), "layers": len(info.plans.layers),
                "jobs_in_history": len(info.history.events)},
        "file_bytes": size,
        "of_which": {"plotly_js": lib, "data_json": data,
                     "rest": size - lib - data},
        "seconds": {"cli": _spread(cli), "cli_startup": _spread(startup),
                    **{k: _spread(v) for k, v in steps.items()}},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
