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


def _seed(run: dict) -> str:
    return run["command"].split("--seed ")[1].split()[0]


def budget_tables(runs: list[dict]) -> None:
    """Issue 12's tables from ``bench/hypervolume.py --budgets`` runs (one per seed)."""
    # fidelity_first: the multi-fidelity search as first built (crowding, uncapped, rungs
    # 0, E/3, E, no allocator plans in its warm start), kept for the record
    arms = [a for a in ("fidelity", "fidelity_first", "search", "uniform", "random", "moasha",
                        "oneshot") if all(a in r["arms"] for r in runs)]
    seeds = [_seed(r) for r in runs]
    # the budgets every arm of every seed was measured at (the half budget: fidelity only)
    budgets = sorted(set.intersection(*(set(r["arms"][a]["budgets"]) for r in runs
                                        for a in arms)), key=float)
    fid_budgets = sorted(set.intersection(*(set(r["arms"]["fidelity"]["budgets"])
                                            for r in runs)), key=float)

    def hv(r: dict, arm: str, b: str, key: str) -> float:
        return r["arms"][arm]["budgets"][b][key]

    for key, what in (("hypervolume_test", "test hypervolume (linear)"),
                      ("hypervolume_test_log", "test hypervolume (log10 size and FLOPs)")):
        for b in budgets:
            print(f"**{what}, {b} trial epochs**, each seed {', '.join(seeds)}:")
            print()
            print("| arm | each seed | mean (sd) | fidelity - arm, each seed | "
                  "mean diff vs 2 x larger sd |")
            print("|---|---|---:|---|---|")
            fid = [hv(r, "fidelity", b, key) for r in runs]
            for arm in arms:
                vals = [hv(r, arm, b, key) for r in runs]
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                if arm == "fidelity":
                    diff = verdict = "-"
                else:
                    d = [f - v for f, v in zip(fid, vals, strict=True)]
                    diff = ", ".join(f"{x:+.4f}" for x in d)
                    bar = 2 * max(sd, statistics.stdev(fid) if len(fid) > 1 else 0.0)
                    m = statistics.mean(d)
                    verdict = f"{m:+.4f} vs {bar:.4f}: {'met' if m > bar else 'not met'}"
                print(f"| {arm} | {', '.join(f'{v:.4f}' for v in vals)} | "
                      f"{statistics.mean(vals):.4f} ({sd:.4f}) | {diff} | {verdict} |")
            print()
    top = budgets[-1]
    half = [b for b in fid_budgets if float(b) <= float(top) / 2]
    if half and "uniform" in arms:
        h = half[-1]
        print(f"Anytime: fidelity at {h} epochs against the grid at {top} (test, linear): "
              + ", ".join(f"seed {s}: {hv(r, 'fidelity', h, 'hypervolume_test'):.4f} vs "
                          f"{hv(r, 'uniform', top, 'hypervolume_test'):.4f}"
                          for s, r in zip(seeds, runs, strict=True)))
        print()
    limits = [("flops", 0.25), ("flops", 0.1), ("flops", 0.05), ("size", 0.02), ("size", 0.01)]
    for b in budgets:
        print(f"**Best test accuracy within a budget, {b} trial epochs** (the front point "
              "with the best validation accuracy, as a user picks; each seed; '-': none):")
        print()
        print("| arm | " + " | ".join(f"{k} <= {x:g}x" for k, x in limits) + " |")
        print("|---|" + "---:|" * len(limits))
        for arm in arms:
            cells = []
            for key, x in limits:
                per = []
                for r in runs:
                    ok = [p for p in r["arms"][arm]["budgets"][b]["front"]
                          if p[f"{key}_ratio"] <= x]
                    pick = max(ok, key=lambda p: p["val"]) if ok else None
                    per.append(f"{pick['test']:.3f}" if pick else "-")
                cells.append(", ".join(per))
            print(f"| {arm} | " + " | ".join(cells) + " |")
        print()
    print("| arm | plans screened | plans fully trained | plans reaching each rung | "
          "epochs spent | seconds |")
    print("|---|---|---|---|---|---|")
    for arm in arms:
        cs = [r["arms"][arm]["counts"] for r in runs]
        screened = ", ".join(str(c.get("reached", [c.get("done", 0)])[0]) for c in cs)
        full = ", ".join(str(c.get("fully_trained", c.get("done", 0))) for c in cs)
        spent = ", ".join(f"{c.get('epochs_spent', c.get('epochs_trained', 0)):.0f}" for c in cs)
        secs = ", ".join(f"{r['arms'][arm]['seconds']:.0f}" for r in runs)
        rungs = "; ".join("/".join(str(n) for n in c["reached"]) for c in cs
                          if "reached" in c) or "-"
        print(f"| {arm} | {screened} | {full} | {rungs} | {spent} | {secs} |")


def main(paths: list[str]) -> None:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    runs.sort(key=lambda r: r["command"])
    if "budgets" in next(iter(runs[0]["arms"].values())):
        return budget_tables(runs)
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
