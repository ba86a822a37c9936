"""A search on a Ray cluster that loses a node (run as a script by tests/test_node_loss.py).

``python tests/node_loss_cluster.py WORKDIR`` starts a head node (1 CPU) and a worker node
(2 CPUs) on this machine with ``ray.cluster_utils.Cluster``, runs searches on them and
removes the worker node (killed, not drained) as soon as a trial runs on it:

- ``a``: 6 trials of 1 CPU: the head can still run them, so the lost ones run again there;
- ``b``: trials of 2 CPUs on a new worker node: none can run on the head, so the search
  must stop with one line and leave its study resumable.

Prints one JSON line (the last line of stdout) with what the test checks. A watchdog ends
the process if anything hangs.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

WATCHDOG_S = 400
WORK = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
MARKS = WORK / "marks"


def _watchdog() -> None:
    print(json.dumps({"error": "watchdog fired"}), flush=True)
    os._exit(3)


def trial_fn(spec, teacher_state):  # runs in a Ray worker: marks where it runs
    import ray

    from slimtune.search.trial import run_trial

    node = ray.get_runtime_context().get_node_id()
    (MARKS / f"{spec.seed}-{time.time_ns()}").write_text(node)
    out = run_trial(spec, teacher_state)
    time.sleep(4.0)  # long enough to be running when the node goes
    return out


def remove_when_used(cluster, node, done: threading.Event) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if any(p.read_text() == node.node_id for p in MARKS.glob("*")):
            time.sleep(1.0)
            cluster.remove_node(node, allow_graceful=False)
            done.set()
            return
        time.sleep(0.1)


def study_state(study) -> list[dict]:
    return [{"number": t.number, "state": t.state.name,
             "retries": t.user_attrs.get("retries"), "retry_of": t.user_attrs.get("retry_of"),
             "interrupted": t.user_attrs.get("interrupted"),
             "error": t.user_attrs.get("error")} for t in study.get_trials(deepcopy=False)]


def search_losing(cluster, node, name: str, **config) -> dict:
    from slimtune.errors import SlimtuneError
    from slimtune.search import SearchConfig, SearchEvents
    from slimtune.search.engine import search
    from slimtune.search.study import open_run

    for p in MARKS.glob("*"):
        p.unlink()
    notes: list[str] = []
    last: dict = {}
    removed = threading.Event()
    threading.Thread(target=remove_when_used, args=(cluster, node, removed),
                     daemon=True).start()
    events = SearchEvents(note=notes.append,
                          trial_done=lambda record, counts: last.update(counts))
    out: dict = {"notes": notes}
    try:
        result = search(SearchConfig(run_dir=WORK / name, address=cluster.address,
                                     epochs=0, teacher_epochs=2, warm_start=False, seed=5,
                                     **config), events, trial_fn=trial_fn)
        out["counts"] = {k: v for k, v in result.counts.items()
                         if isinstance(v, (int, float, str))}
    except SlimtuneError as exc:
        out["error"] = str(exc)
        out["counts"] = {k: v for k, v in last.items() if isinstance(v, (int, float, str))}
    out["removed"] = removed.is_set()
    out["trials"] = study_state(open_run(WORK / name).study)
    return out


def main() -> dict:
    import ray
    from ray.cluster_utils import Cluster

    MARKS.mkdir(parents=True, exist_ok=True)
    # a killed node is declared dead in about a second, not 14 (Ray's default)
    fast = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
            "health_check_timeout_ms": 1000, "health_check_initial_delay_ms": 1000}
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "_system_config": fast})
    try:
        worker = cluster.add_node(num_cpus=2)
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        cluster.wait_for_nodes(timeout=60)
        res = {"a": search_losing(cluster, worker, "a", trials=6)}
        second = cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes(timeout=60)
        res["b"] = search_losing(cluster, second, "b", trials=4, cpus_per_trial=2)
        return res
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    timer = threading.Timer(WATCHDOG_S, _watchdog)
    timer.daemon = True
    timer.start()
    print(json.dumps(main()), flush=True)
    timer.cancel()
