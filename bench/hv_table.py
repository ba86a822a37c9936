"""Tabulate runs of bench/hypervolume.py (one JSON file per seed) as Markdown.

    .venv/bin/python bench/hv_table.py bench/results/hypervolume-seed*.json

Per arm: the hypervolume of each seed (validation / test), the mean and standard deviation
over seeds, and the paired difference to the search arm on the test split (same seed, same
teacher), which is what the comparison rests on; the best test accuracy each arm's front
offers within a FLOPs or size budget (the point a user shipping under that budget would
pick, by validation accuracy); then the
epochs saved by early stopping.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main(paths: list[str]) -> None:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    runs.sort(key=lambda r: r["command"])
    arms = list(runs[0]["arms"])
    seeds = [r["command"].split("--seed ")[1].split()[0] for r in runs]
    head = "| arm | " + " | ".join(f"seed {s} (val / test)" for s in seeds)
    print(head + " | mean test (sd) | search - arm, test (each seed) |")
    print("|---|" + "---:|" * (len(seeds) + 2))
    for arm in arms:
        cells, tests, diffs = [], [], []
        for r in runs:
            a = r["arms"][arm]
            cells.append(f"{a['hypervolume_val']:.4f} / {a['hypervolume_test']:.4f}")
            tests.append(a["hypervolume_test"])
            diffs.append(r["arms"]["search"]["hypervolume_test"] - a["hypervolume_test"])
        sd = statistics.stdev(tests) if len(tests) > 1 else 0.0
        diff = "-" if arm == "search" else ", ".join(f"{d:+.4f}" for d in diffs)
        print(f"| {arm} | " + " | ".join(cells)
              + f" | {statistics.mean(tests):.4f} ({sd:.4f}) | {diff} |")
    print()
    budgets = [("flops", 0.25), ("flops", 0.1), ("flops", 0.05), ("size", 0.02),
               ("size", 0.01)]
    print("Within a budget, the front point with the best validation accuracy (as a user "
          "would pick it): its test accuracy, each seed ('-': no point that small):")
    print()
    print("| arm | " + " | ".join(f"{k} <= {b:g} x teacher" for k, b in budgets) + " |")
    print("|---|" + "---:|" * len(budgets))
    for arm in arms:
        cells = []
        for key, b in budgets:
            per_seed = []
            for r in runs:
                ok = [p for p in r["arms"][arm]["front"] if p[f"{key}_ratio"] <= b]
                pick = max(ok, key=lambda p: p["val"]) if ok else None  # as a user would
                per_seed.append(f"{pick['test']:.3f}" if pick else "-")
            cells.append(", ".join(per_seed))
        print(f"| {arm} | " + " | ".join(cells) + " |")
    print()
    print("| arm | trials pruned by early stopping | trial epochs saved / trained "
          "(each seed) | search seconds (each seed) |")
    print("|---|---|---|---|")
    for arm in arms:
        pruned = ", ".join(str(r["arms"][arm]["pruned"]) for r in runs)
        saved = ", ".join(f"{r['arms'][arm]['epochs_saved']} / "
                          f"{r['arms'][arm]['epochs_trained']}" for r in runs)
        secs = ", ".join(f"{r['arms'][arm]['seconds']:.0f}" for r in runs)
        print(f"| {arm} | {pruned} | {saved} | {secs} |")


if __name__ == "__main__":
    main(sys.argv[1:])
