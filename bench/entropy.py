"""Entropy-coded artifacts (issue 18): what they save on real front points, how close they
come to the zeroth-order entropy, and what coding costs in time.

For every front point of each run (and every extra ``.slim`` file given), its artifact as
the search stored it (format 2: each stream entropy-coded where smaller) against the same
file fixed-width (:func:`slimtune.export.artifact.transcode` with ``entropy=False``: the
same codes, scales and masks):

- bytes before (fixed-width) and after (the file), their ratio, bits per stored weight;
- per stream (each weight's sparse index, 2:4 patterns, codes): its symbols' zeroth-order
  entropy ``count x H0`` (the bound a coder with no context approaches) against its
  entropy-coded form (tag, model, table, states and words: everything it costs), whether
  or not the file took that form; the gap to the bound per file sums the streams of at
  least ``--min-count`` symbols (smaller ones pay mostly their table, reported apart);
- time: decoding each file (``slimtune.load``'s work: header checks, the model built, every
  stream decoded), and coding its streams, entropy against fixed-width, in one process,
  alternating, the median of ``--rounds``.

    .venv/bin/python bench/entropy.py RUN_DIR [RUN_DIR ...] [--file F.slim ...]
        [--rounds 5] [--out bench/results/entropy.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from hypervolume import git_commit  # noqa: E402


def file_stats(name: str, data: bytes, model, rounds: int, min_count: int) -> dict:
    from slimtune.codec import rans, streams
    from slimtune.export.artifact import decode, streams_of, transcode
    from slimtune.export.storage import storage

    read = streams_of(data, structure=model)
    header, recs = read.header, read.records
    fixed = transcode(data, entropy=False, structure=model)
    spent = storage(data, model)
    rows, big_coded, big_bound, small_coded, small_bound = [], 0, 0.0, 0, 0.0
    for r in recs:
        if not r.kind.codable or not r.kind.count:
            continue
        coded = 1 + len(rans.encode(r.symbols))
        bound = rans.entropy_bits(r.symbols) / 8
        fixed_len = len(r.kind.fixed(r.symbols))
        rows.append({"weight": r.key, "stream": r.kind.what, "count": r.kind.count,
                     "bits": getattr(r.kind, "bits", None),
                     "stored": r.end - r.start, "fixed": fixed_len, "coded": coded,
                     "entropy": round(bound, 1), "took": "coded" if r.tag == streams.CODED
                     else "fixed"})
        if r.kind.count >= min_count:
            big_coded, big_bound = big_coded + coded, big_bound + bound
        else:
            small_coded, small_bound = small_coded + coded, small_bound + bound
    times: dict[str, list[float]] = {k: [] for k in ("decode", "decode_fixed", "code_entropy",
                                                     "code_fixed")}
    for i in range(rounds):
        order = (("decode", data), ("decode_fixed", fixed))
        for key, blob in order if i % 2 else reversed(order):
            t0 = time.perf_counter()
            decode(blob, structure=model)
            times[key].append(time.perf_counter() - t0)
        for key, entropy in (("code_entropy", True), ("code_fixed", False)):
            t0 = time.perf_counter()
            for r in recs:
                streams.write(r.kind, r.symbols, entropy=entropy)
            times[key].append(time.perf_counter() - t0)
    bits = sorted({lp.get("bits", 32) for lp in header.plan.to_dict()["layers"].values()})
    compressed = [b for b in bits if b < 32]
    return {
        "name": name, "format": header.format, "bytes": len(data), "fixed_bytes": len(fixed),
        "x_fewer_bytes": len(fixed) / len(data), "stored_weights": spent["stored_weights"],
        "bits_per_weight": spent["bits_per_weight"],
        "bits_per_weight_fixed": 8 * len(fixed) / spent["stored_weights"],
        "min_bits": min(compressed) if compressed else 32, "bits": bits,
        "streams_coded_bytes": big_coded, "streams_entropy_bytes": round(big_bound, 1),
        "gap_to_entropy": big_coded / big_bound - 1 if big_bound else None,
        "small_streams_coded_bytes": small_coded,
        "streams_stored_bytes": sum(x["stored"] for x in rows),
        "streams_all_entropy_bytes": round(sum(x["entropy"] for x in rows), 1),
        "small_streams_entropy_bytes": round(small_bound, 1),
        "ms": {k: round(1000 * statistics.median(v), 2) for k, v in times.items()},
        "streams": rows,
    }


def run_stats(run_dir: Path, rounds: int, min_count: int) -> list[dict]:
    from slimtune.export.artifact import decode
    from slimtune.search.pareto import pareto_front
    from slimtune.search.study import open_run

    run = open_run(run_dir)
    out = []
    for p in pareto_front(run.study):
        data = run.artifact_bytes(p.trial)
        model = decode(data)[0]
        rec = file_stats(f"{run_dir.name}#{p.trial}", data, model, rounds, min_count)
        rec.update(trial=p.trial, val_accuracy=p.accuracy,
                   fixed_size_bytes_recorded=p.fixed_size_bytes)
        out.append(rec)
        print(f"[entropy] {rec['name']}: {rec['fixed_bytes']:,} -> {rec['bytes']:,} B "
              f"({rec['x_fewer_bytes']:.3f}x), gap {_pct(rec['gap_to_entropy'])}", flush=True)
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.2f} %"


def table(res: dict) -> str:
    lines = ["| file | bits | accuracy | bytes fixed-width | bytes entropy-coded | x fewer | "
             "bits/weight fixed -> coded | streams >= min: coded / entropy bound (gap) | "
             "small streams: coded / bound | all streams as stored / bound (gap) | "
             "decode ms coded / fixed | code ms entropy / fixed |",
             "|---|---|---:|---:|---:|---:|---|---|---|---|---|---|"]
    for r in res["files"]:
        acc = f"{r['val_accuracy']:.4f}" if "val_accuracy" in r else "-"
        bits = "-".join(str(b) for b in r["bits"])
        lines.append(
            f"| {r['name']} | {bits} | {acc} | {r['fixed_bytes']:,} | {r['bytes']:,} | "
            f"{r['x_fewer_bytes']:.3f} | {r['bits_per_weight_fixed']:.2f} -> "
            f"{r['bits_per_weight']:.2f} | {r['streams_coded_bytes']:,} / "
            f"{r['streams_entropy_bytes']:,.0f} ({_pct(r['gap_to_entropy'])}) | "
            f"{r['small_streams_coded_bytes']:,} / {r['small_streams_entropy_bytes']:,.0f} | "
            f"{r['streams_stored_bytes']:,} / {r['streams_all_entropy_bytes']:,.0f} "
            f"({_pct(r['streams_stored_bytes'] / r['streams_all_entropy_bytes'] - 1)}) | "
            f"{r['ms']['decode']:.1f} / {r['ms']['decode_fixed']:.1f} | "
            f"{r['ms']['code_entropy']:.1f} / {r['ms']['code_fixed']:.1f} |")
    lines += ["", "| codes at | streams | codes | fixed bits/code | entropy (H0) bits/code | "
              "coded bits/code | fixed / H0 |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for b, c in sorted(res["summary"]["codes_by_bits"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {b} | {c['streams']} | {c['codes']:,} | {b} | {c['h0']:.3f} | "
                     f"{c['coded']:.3f} | {int(b) / c['h0']:.3f} |")
    return "\n".join(lines)


def codes_by_bits(files: list[dict], min_count: int) -> dict:
    """Per bit-width, over the codes streams of at least ``min_count`` codes: the
    zeroth-order entropy and the coded size per code (what entropy coding can give)."""
    out: dict[str, dict] = {}
    for f in files:
        for r in f["streams"]:
            if r["stream"] == "codes" and r["count"] >= min_count:
                c = out.setdefault(str(r["bits"]), {"streams": 0, "codes": 0, "h0": 0.0,
                                                    "coded": 0.0})
                c["streams"] += 1
                c["codes"] += r["count"]
                c["h0"] += 8 * r["entropy"]
                c["coded"] += 8 * r["coded"]
    for c in out.values():
        c["h0"] /= c["codes"]
        c["coded"] /= c["codes"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--file", action="append", default=[], type=Path,
                    help="an exported .slim file to measure too")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-count", type=int, default=4096,
                    help="streams with fewer symbols are summed apart (their table dominates)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/entropy.json")
    ap.add_argument("--table", action="store_true", help="print --out's table and exit")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return
    from slimtune.export.artifact import decode

    files = []
    for run_dir in args.runs:
        files += run_stats(run_dir, args.rounds, args.min_count)
    for f in args.file:
        data = f.read_bytes()
        files.append(file_stats(f.name, data, decode(data)[0], args.rounds, args.min_count))
        print(f"[entropy] {f.name}: {files[-1]['bytes']:,} B", flush=True)
    big = [r for r in files if r["gap_to_entropy"] is not None]
    res = {
        "command": "bench/entropy.py " + " ".join(map(str, sys.argv[1:])),
        "commit": git_commit(), "machine": f"{platform.node()} {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d %H:%M"), "min_count": args.min_count,
        "files": files,
        "summary": {
            "files": len(files),
            "max_gap_to_entropy": max((r["gap_to_entropy"] for r in big), default=None),
            "median_x_fewer_bytes_4bit_plus": float(np.median(
                [r["x_fewer_bytes"] for r in files if r["min_bits"] >= 4] or [np.nan])),
            "codes_by_bits": codes_by_bits(files, args.min_count),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(table(res))
    print(json.dumps(res["summary"]))


if __name__ == "__main__":
    main()
