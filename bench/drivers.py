"""Per-trial overhead with 1, 4 and 8 drivers on one PostgreSQL study.

A real PostgreSQL server (tests/pg_server.py) and one Ray cluster (`ray start --head`, its
own RAY_TMPDIR) are started; then, for each driver count N, N driver processes run
`slimtune.search` on the same study (`--storage`, `--study-name`, every driver with the
same `--trials T`), joined to the cluster, with trials whose work is empty (as
bench/overhead.py) but that return a 7 kB artifact, so the store is written as in a real
search. Ray runs 2 trials at a time (2 CPUs, 1 per trial), whatever N is: the figure is
what coordination costs, not what more machines would add.

Per trial = (the last trial told - the first trial submitted, over all drivers) / T.
Each round runs every N once, in a rotated order; driver start-up (imports, joining Ray,
waiting for the study) is not timed. Prints one JSON line; results/drivers.json keeps it.

    .venv/bin/python bench/drivers.py [--trials 80] [--rounds 3] [--drivers 1,4,8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DRIVER = r"""
import json, sys, time
from pathlib import Path
from slimtune.search import SearchConfig, SearchEvents
from slimtune.search.engine import search

def null_trial(spec, teacher_state):
    layers = list(spec.plan["layers"].values())
    s = sum(lp["sparsity"] for lp in layers) / len(layers)
    bits = sum(lp["bits"] for lp in layers) / len(layers)
    return {"accuracy": 1.0 - 0.5 * s, "size_bytes": int(5000 * (1 - s) * bits) + 1,
            "flops": int(600_000 * (1 - s)) + 1, "dense_flops": 633_728, "bitops": 0,
            "artifact": bytes(7000), "seconds": 0.0}

url, name, trials, run_dir, store, address = sys.argv[1:7]
marks = {}
events = SearchEvents(
    started=lambda n, c: marks.setdefault("t0", time.time()),
    trial_done=lambda t, c: (marks.setdefault("t0", time.time()),
                             marks.__setitem__("t1", time.time()),
                             marks.__setitem__("n", marks.get("n", 0) + 1)))
config = SearchConfig(trials=int(trials), run_dir=Path(run_dir), warm_start=False,
                      cpus_per_trial=1, storage=url, study_name=name, artifact_store=store,
                      address=address, teacher_epochs=2)
search(config, events, trial_fn=null_trial)
print(json.dumps(marks))
"""


def start_ray(tmp: Path) -> tuple[subprocess.Popen, str, dict[str, str]]:
    import secrets

    ray_tmp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))
    # Ray 2.60's `ray start` authenticates with a token: every process of the cluster and
    # every driver gets the same one
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    port = 6400 + os.getpid() % 500
    ray_bin = str(Path(sys.executable).parent / "ray")
    proc = subprocess.Popen([ray_bin, "start", "--head", "--num-cpus", "2", "--port", str(port),
                             "--node-ip-address", "127.0.0.1", "--include-dashboard", "false",
                             "--block"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    address = f"127.0.0.1:{port}"
    import socket  # wait until its GCS port answers (a failed ray.init cannot be retried)

    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:  # leave no cluster behind for other searches
                os.killpg(proc.pid, signal.SIGKILL)
                raise
            time.sleep(0.5)
    time.sleep(3)
    env["_RAY_TMP"] = str(ray_tmp)
    return proc, address, env


def one(n: int, url: str, address: str, env: dict[str, str], tmp: Path, trials: int) -> dict:
    name = f"bench-{n}-{uuid.uuid4().hex[:6]}"
    store = tmp / f"store-{name}"
    procs = []
    for i in range(n):
        procs.append(subprocess.Popen(
            [sys.executable, "-c", DRIVER, url, name, str(trials), str(tmp / f"{name}-d{i}"),
             str(store), address], env=env, cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
        if i == 0:  # the first makes the study; the rest join it (as on other machines)
            time.sleep(1.0)
    marks = []
    for p in procs:
        out, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"a driver failed: {err[-3000:]}")
        marks.append(json.loads(out.strip().splitlines()[-1]))
    ran = [m for m in marks if "t1" in m]
    wall = max(m["t1"] for m in ran) - min(m["t0"] for m in ran)
    import optuna

    study = optuna.load_study(study_name=name, storage=url)
    done = len(study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]))
    return {"drivers": n, "trials": done, "ms_per_trial": round(1000 * wall / done, 1),
            "trials_by_driver": sorted((m.get("n", 0) for m in marks), reverse=True)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--drivers", default="1,4,8")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/drivers.json")
    args = ap.parse_args()
    counts = [int(x) for x in args.drivers.split(",")]
    from tests.pg_server import postgres_server

    runs: list[dict] = []
    with postgres_server() as url, tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        ray_proc, address, env = start_ray(tmp)
        try:
            one(1, url, address, env, tmp, 4)  # warm-up: the teacher, worker processes
            for r in range(args.rounds):
                order = counts[r % len(counts):] + counts[:r % len(counts)]
                for n in order:
                    res = one(n, url, address, env, tmp, args.trials)
                    res["round"] = r
                    runs.append(res)
                    print(json.dumps(res), file=sys.stderr, flush=True)
        finally:
            os.killpg(ray_proc.pid, signal.SIGTERM)
            try:
                ray_proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(ray_proc.pid, signal.SIGKILL)
            shutil.rmtree(env["_RAY_TMP"], ignore_errors=True)
    import optuna
    import ray

    by = {n: [x["ms_per_trial"] for x in runs if x["drivers"] == n] for n in counts}
    base = statistics.median(by[counts[0]])
    result = {
        "trials": args.trials, "rounds": args.rounds, "concurrent": 2,
        "ms_per_trial": {str(n): v for n, v in by.items()},
        "median_ratio_to_1": {str(n): round(statistics.median(v) / base, 2)
                              for n, v in by.items()},
        "runs": runs, "cpus": os.cpu_count(), "python": platform.python_version(),
        "optuna": optuna.__version__, "ray": ray.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}))


if __name__ == "__main__":
    main()
