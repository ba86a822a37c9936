"""How the read side scales (issue 17): `slimtune front` and `slimtune report` on a study of
N finished trials, wall time and peak memory, N = 1 000 and 5 000 (and the 60 of the run
it starts from, for the fixed cost).

A synthetic run is a copy of a real run directory (``--run-dir``, by default the default
digits run of ``bash scripts/run.sh``) whose study gets N - (its trials) more finished
trials: copies of its completed trials (plans, parameters, attributes) with accuracy, size
and MACs drawn around theirs, so every reader finds what a real trial holds. Each command
runs in its own process under ``/usr/bin/time -v`` (peak resident memory), ``--repeats``
times; the median is reported and the cost per trial above the base run, so growth can be
read as linear or not. Results: ``--out`` (JSON) and a Markdown table on stdout.

    .venv/bin/python bench/read_scale.py [--sizes 1000,5000] [--repeats 3]
        [--out bench/results/read_scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from hypervolume import git_commit  # noqa: E402


def slimtune_bin() -> str:
    return str(Path(sys.executable).with_name("slimtune"))


def synthetic_run(src: Path, n: int, root: Path, seed: int = 0) -> Path:
    """A copy of ``src`` whose study holds ``n`` trials (added as finished copies)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dst = root / f"run-{n}"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report.html", "pareto.html",
                                                            "*.lock"))
    study = optuna.load_study(study_name="slimtune", storage=f"sqlite:///{dst}/study.db")
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    rng = random.Random(seed)
    new = []
    for _ in range(max(0, n - len(study.trials))):
        t = rng.choice(done)
        acc = min(1.0, max(0.0, t.values[0] + rng.gauss(0, 0.02)))
        size = max(100.0, t.values[1] * rng.uniform(0.8, 1.25))
        macs = max(100.0, t.values[2] * rng.uniform(0.8, 1.25))
        attrs = {**t.user_attrs, "val_accuracy": acc, "size_bytes": int(size),
                 "flops": int(macs), "phase": "sampler"}
        new.append(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE, values=[acc, size, macs],
            params=t.params, distributions=t.distributions, user_attrs=attrs))
    study.add_trials(new)
    return dst


def timed(cmd: list[str]) -> tuple[float, int]:
    """(wall seconds, peak resident kB) of ``cmd`` in its own process."""
    t0 = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                         check=True)
    wall = time.perf_counter() - t0
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr)[1])
    return wall, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, default=Path("runs/digits-small_cnn"))
    ap.add_argument("--sizes", default="1000,5000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--root", type=Path, default=Path("/tmp/read-scale"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/read_scale.json"))
    args = ap.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    import optuna

    base = len(optuna.load_study(study_name="slimtune",
                                 storage=f"sqlite:///{args.run_dir}/study.db").trials)
    sizes = [base, *(int(s) for s in args.sizes.split(","))]
    runs = {n: synthetic_run(args.run_dir, n, args.root) for n in sizes}
    commands = {
        "front": lambda d: [slimtune_bin(), "front", str(d), "--json"],
        "report": lambda d: [slimtune_bin(), "report", str(d), "--out", str(d / "r.html")],
    }
    res: dict = {}
    for r in range(args.repeats):  # round-robin: noise hits every size alike
        for n, d in runs.items():
            for name, cmd in commands.items():
                wall, peak = timed(cmd(d))
                res.setdefault(name, {}).setdefault(str(n), []).append([wall, peak])
        print(f"[read-scale] round {r + 1}/{args.repeats}", flush=True)
    out = {"command": "bench/read_scale.py " + " ".join(sys.argv[1:]),
           "commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M"),
           "machine": f"{platform.node()} {os.cpu_count()} CPUs", "base_trials": base,
           "results": res}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(table(out))


def table(out: dict) -> str:
    base = str(out["base_trials"])
    lines = ["| command | trials | wall s (median; low-high) | ms per added trial | "
             "peak RSS MB | kB per added trial |", "|---|---:|---:|---:|---:|---:|"]
    for name, by_n in out["results"].items():
        w0 = statistics.median(x[0] for x in by_n[base])
        m0 = statistics.median(x[1] for x in by_n[base])
        for n, xs in by_n.items():
            w = statistics.median(x[0] for x in xs)
            m = statistics.median(x[1] for x in xs)
            added = int(n) - int(base)
            per = f"{1e3 * (w - w0) / added:.2f}" if added else "-"
            per_m = f"{(m - m0) / added:.1f}" if added else "-"
            lines.append(f"| {name} | {int(n):,} | {w:.2f} ({min(x[0] for x in xs):.2f}-"
                         f"{max(x[0] for x in xs):.2f}) | {per} | {m / 1024:.0f} | {per_m} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
