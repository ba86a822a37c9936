"""ONNX flavours of a front (issue 16): size, ONNX Runtime latency and test accuracy of
each file, for the teacher and three front points.

Steps, each written to ``--out`` as it finishes (a rerun skips finished ones):

1. ``teacher`` (vgg_small only): trained on the full Fashion-MNIST training split
   (``slimtune train``), cached under ``--run-root``/cache.
2. ``search``: the default multi-fidelity search on a training subset, distilling from it.
3. ``finetune``: three front points (bench/headline.py's picks: the fewest MACs and the
   smallest within a few points of the teacher's validation accuracy), each
   ``slimtune finetune``d on the full training split.
4. ``onnx``: for the teacher and each point, ``slimtune export --onnx float,lowbit,qdq``;
   the size of each file, its test accuracy run in ONNX Runtime, and its ONNX Runtime CPU
   latency at batch 1 and 32 (median of repeated runs, all files timed in one process,
   interleaved, so the ratios to the teacher's float32 file compare like with like).

With ``--run-dir`` (e.g. the default digits run of ``bash scripts/run.sh``) steps 1-3 are
skipped: the teacher and three front points of that run are exported as they are.

    .venv/bin/python bench/onnx_formats.py [--teacher-epochs 4 --subset 6000
        --budget-epochs 30 --finetune-epochs 2] [--out bench/results/onnx-vgg.json]
        [--run-root /tmp/onnx-bench]
    .venv/bin/python bench/onnx_formats.py --run-dir runs/digits-small_cnn \
        --out bench/results/onnx-digits.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from headline import candidates, save, slimtune_bin, step_teacher  # noqa: E402
from hypervolume import git_commit  # noqa: E402

FLAVOURS = ("float", "lowbit", "qdq")
BATCHES = (1, 32)


#: --deploy: the search a user shipping to ONNX Runtime would run: channel pruning only
#: (unstructured zeros do not make a dense kernel faster there) and the qdq file's
#: onnxruntime latency as the cost beside size
DEPLOY = {"pruning": "structured", "objectives": ("accuracy", "size", "latency"),
          "latency_runtime": "onnxruntime", "latency_format": "qdq"}


def step_search(args, teacher_pt: Path, root: Path) -> dict:
    from slimtune.search import SearchConfig
    from slimtune.search.engine import search

    run_dir = root / ("search-deploy" if args.deploy else "search")
    shutil.rmtree(run_dir, ignore_errors=True)
    config = SearchConfig(model="vgg_small", data="fashion-mnist", subset=args.subset,
                          epochs=args.epochs, seed=args.seed, checkpoint=teacher_pt,
                          run_dir=run_dir, budget_epochs=args.budget_epochs, trials=10**6,
                          **(DEPLOY if args.deploy else {}))
    t0 = time.perf_counter()
    result = search(config)
    teacher = result.run.teacher
    return {
        "run_dir": str(run_dir), "seconds": round(time.perf_counter() - t0, 1),
        "teacher": {k: teacher[k] for k in ("accuracy", "size_bytes", "flops")},
        "front": [{"trial": p.trial, "val": p.accuracy, "size_bytes": p.size_bytes,
                   "flops": p.flops, "latency_ms": p.latency_ms} for p in result.front],
    }


def deploy_picks(arm: dict) -> list[int]:
    """--deploy: the fastest point within 1, 2 and 3 points of the teacher's validation
    accuracy (the search's, on a subset) and the smallest at >= 98 % of it; the first three
    distinct ones."""
    t = arm["teacher"]["accuracy"]
    front = arm["front"]
    picks = []
    for drop in (0.01, 0.02):
        ok = [p for p in front if p["val"] >= t - drop]
        if ok:
            picks.append(min(ok, key=lambda p: p["latency_ms"])["trial"])
    ok = [p for p in front if p["val"] >= 0.98 * t]
    if ok:
        picks.append(min(ok, key=lambda p: p["size_bytes"])["trial"])
    ok = [p for p in front if p["val"] >= t - 0.03]
    if ok:
        picks.append(min(ok, key=lambda p: p["latency_ms"])["trial"])
    return list(dict.fromkeys(picks))[:3]


def step_finetune(run_dir: str, trial: int, args, env, root: Path) -> dict:
    out = root / ("converged-deploy" if args.deploy else "converged") / f"trial-{trial}.slim"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [slimtune_bin(), "finetune", run_dir, "--trial", str(trial),
           "--epochs", str(args.finetune_epochs), "--out", str(out), "--seed", str(args.seed)]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    return {"trial": trial, "slim": str(out), "command": " ".join(cmd[1:]),
            "wall_seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, help="export this run's front as it is")
    ap.add_argument("--subset", type=int, default=6000)
    ap.add_argument("--budget-epochs", type=float, default=30)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/onnx-vgg.json"))
    ap.add_argument("--run-root", type=Path, default=Path("/tmp/onnx-bench"))
    ap.add_argument("--until", choices=("teacher", "search", "finetune", "onnx"),
                    default="onnx", help="stop after this step")
    ap.add_argument("--repeats", type=int, default=5, help="latency rounds over all files")
    ap.add_argument("--deploy", action="store_true",
                    help="search for ONNX Runtime: " + ", ".join(f"{k}={v}" for k, v in
                                                               DEPLOY.items()))
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--table", action="store_true",
                    help="print the Markdown tables of --out and exit (runs nothing)")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return
    root = args.run_root
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SLIMTUNE_CACHE": str(root / "cache")}
    os.environ["SLIMTUNE_CACHE"] = env["SLIMTUNE_CACHE"]
    out = json.loads(args.out.read_text()) if args.out.exists() else {}
    out.setdefault("commits", {})
    out.update(command="bench/onnx_formats.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k not in ("out", "run_root", "until", "table") and v not in (None, False)),
        machine=f"{platform.node()} {os.cpu_count()} CPUs")

    def done(step: str) -> None:
        out["commits"][step] = git_commit()
        out.setdefault("dates", {})[step] = time.strftime("%Y-%m-%d %H:%M")
        save(out, args.out)
        print(f"[onnx-bench] {step} done", flush=True)

    if args.run_dir is None:
        if "teacher" not in out:
            print(f"[onnx-bench] teacher: {args.teacher_epochs} epochs ...", flush=True)
            out["teacher"] = step_teacher(args, env)
            done("teacher")
        if args.until == "teacher":
            return
        if "search" not in out:
            print(f"[onnx-bench] search: {args.budget_epochs:g} fine-tune epochs ...",
                  flush=True)
            out["search"] = step_search(args, Path(out["teacher"]["path"]), root)
            done("search")
        if args.until == "search":
            return
        picks = (deploy_picks(out["search"]) if args.deploy
                 else [n for _, n in candidates(out["search"])][:3])
        out["picks"] = picks
        ft = out.setdefault("finetune", {})
        for n in picks:
            if str(n) not in ft:
                print(f"[onnx-bench] finetune trial {n} ...", flush=True)
                ft[str(n)] = step_finetune(out["search"]["run_dir"], n, args, env, root)
                done(f"finetune-{n}")
        if args.until == "finetune":
            return
    files = step_files(args, out, root, env, out.get("files", {}))
    if files != out.get("files"):
        out["files"] = files
        done("files")
    out["latency"] = step_latency(out["files"], args)
    out["goal"] = goal(out)
    done("latency")
    print(table(out))


def _teacher_slim(run_dir: Path, root: Path) -> Path:
    """The teacher as an artifact (the empty plan): the reference of every ratio."""
    from slimtune.export.artifact import encode, save
    from slimtune.models import build_model
    from slimtune.models.teacher import _load_state
    from slimtune.search.study import open_run
    from slimtune.spaces import CompressionPlan

    run = open_run(run_dir)
    cfg, meta = run.meta["config"], run.meta
    teacher = build_model(cfg["model"], meta["num_classes"], tuple(meta["input_shape"]))
    _load_state(teacher, run_dir / "teacher.pt")
    path = root / "teacher.slim"
    save(path, encode(teacher.eval(), cfg["model"], meta["num_classes"],
                      tuple(meta["input_shape"]), CompressionPlan()))
    return path


def _onnx_of(slim: Path, run_dir: Path, fmts: tuple[str, ...], full: bool) -> dict:
    """Every ONNX format of the artifact ``slim``, written beside it by the export's own
    path (export/onnx.py's onnx_files: checked on the test split in onnxruntime)."""
    from slimtune.data.datasets import load_dataset
    from slimtune.export.artifact import load_with_header
    from slimtune.export.onnx import onnx_files
    from slimtune.export.onnx_options import OnnxOptions
    from slimtune.search.study import open_run

    cfg = open_run(run_dir).meta["config"]
    ds = load_dataset(cfg["data"], cfg.get("data_dir"), None if full else cfg.get("subset"),
                      None if full else cfg.get("val_subset"))
    model, header = load_with_header(slim)
    return onnx_files(model, header.input_shape, header.plan, OnnxOptions(fmts), slim,
                      train=ds.train, test=ds.test)


def step_files(args, out: dict, root: Path, env, have: dict) -> dict:
    """name -> {slim, bytes, onnx: format -> report} for the teacher and three points
    (those in ``have`` are kept as they are)."""
    if args.run_dir is not None and have:
        return have
    if args.run_dir is not None:  # the points as the search left them (digits: converged)
        run_dir = args.run_dir
        res = subprocess.run([slimtune_bin(), "front", str(run_dir), "--json"], env=env,
                             check=True, capture_output=True, text=True)
        front = json.loads(res.stdout)
        arm = {"teacher": front["teacher"],
               "front": [{"trial": p["trial"], "val": p["accuracy"],
                          "size_bytes": p["size_bytes"], "flops": p["flops"]}
                         for p in front["front"]]}
        out["picks"] = [n for _, n in candidates(arm)][:3]
        slims = {}
        for n in out["picks"]:
            slim = root / f"trial-{n}.slim"
            subprocess.run([slimtune_bin(), "export", str(run_dir), "--trial", str(n),
                            "--out", str(slim)], env=env, check=True)
            slims[f"trial {n}"] = slim
        full = False  # the run's own splits, as `slimtune export` measures
    else:
        run_dir = Path(out["search"]["run_dir"])
        slims = {f"trial {n}": Path(out["finetune"][str(n)]["slim"]) for n in out["picks"]}
        full = True  # converged on the full splits
    beside = Path(next(iter(slims.values()))).parent  # one teacher file per arm
    files = {"teacher": {"slim": str(_teacher_slim(run_dir, beside))}}
    files.update({k: {"slim": str(v)} for k, v in slims.items()})
    files = {k: have.get(k, v) for k, v in files.items()}
    for name, rec in files.items():
        if "onnx" in rec:
            continue
        fmts = ("float", "qdq") if name == "teacher" else FLAVOURS
        print(f"[onnx-bench] ONNX of {name} ...", flush=True)
        rec["bytes"] = Path(rec["slim"]).stat().st_size
        rec["onnx"] = _onnx_of(Path(rec["slim"]), run_dir, fmts, full)
        card = Path(rec["slim"]).with_suffix(".json")
        if card.is_file():
            c = json.loads(card.read_text())
            rec["plan"] = c.get("plan")
            rec["flops"] = c.get("flops")
    return files


def step_latency(files: dict, args) -> dict:
    """name -> format -> batch -> {median, low, high} ms: every file timed in this one
    process, round-robin over ``--repeats`` rounds (each round: the median of >= 0.2 s of
    runs), so machine noise hits all of them alike; one intra-op thread."""
    import statistics

    import numpy as np

    from slimtune.export.onnx import session
    from slimtune.objectives.latency import time_session

    sessions = {(name, fmt): session(o["path"], threads=args.threads)
                for name, rec in files.items() for fmt, o in rec["onnx"].items()}
    shape = None
    rounds: dict = {}
    for r in range(args.repeats):
        for (name, fmt), run in sessions.items():
            if shape is None:
                shape = [d if isinstance(d, int) else 1 for d in run.get_inputs()[0].shape][1:]
            for b in BATCHES:
                x = np.random.default_rng(r).standard_normal((b, *shape)).astype(np.float32)
                rounds.setdefault((name, fmt, b), []).append(time_session(run, x))
        print(f"[onnx-bench] latency round {r + 1}/{args.repeats}", flush=True)
    res: dict = {}
    for (name, fmt, b), ms in rounds.items():
        res.setdefault(name, {}).setdefault(fmt, {})[str(b)] = {
            "median": statistics.median(ms), "low": min(ms), "high": max(ms)}
    return res


def goal(out: dict) -> dict:
    """Per point: its qdq file's speed-up over the teacher's float32 file at batch 1 and 32,
    its test-accuracy drop (points), and lowbit size / .slim size; met: >= 3x faster at
    <= 1 point below the teacher, lowbit within 1.5x of the .slim."""
    files, lat = out["files"], out["latency"]
    t_acc = files["teacher"]["onnx"]["float"]["test_accuracy"]
    res = {}
    for name, rec in files.items():
        if name == "teacher":
            continue
        q = rec["onnx"]["qdq"]
        speed = {b: lat["teacher"]["float"][b]["median"] / lat[name]["qdq"][b]["median"]
                 for b in map(str, BATCHES)}
        drop = 100 * (t_acc - q["test_accuracy"])
        size = rec["onnx"]["lowbit"]["bytes"] / rec["bytes"]
        res[name] = {"qdq_speedup": speed, "qdq_drop_points": drop, "lowbit_over_slim": size,
                     "met": bool(min(speed.values()) >= 3 and drop <= 1 and size <= 1.5)}
    return res


def table(out: dict) -> str:
    files, lat = out["files"], out["latency"]
    tf = lat["teacher"]["float"]
    lines = ["| model | format | bytes | x smaller than teacher .onnx | test acc (onnxruntime) "
             "| batch 1 ms (x teacher float) | batch 32 ms (x teacher float) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    t_bytes = files["teacher"]["onnx"]["float"]["bytes"]
    for name, rec in files.items():
        lines.append(f"| {name} | .slim | {rec['bytes']:,} | {t_bytes / rec['bytes']:.1f} | "
                     f"{rec['onnx']['float']['torch_test_accuracy']:.4f} (PyTorch) | | |")
        for fmt, o in rec["onnx"].items():
            cells = []
            for b in map(str, BATCHES):
                m = lat[name][fmt][b]
                cells.append(f"{m['median']:.3f} ({tf[b]['median'] / m['median']:.2f}x; "
                             f"{m['low']:.3f}-{m['high']:.3f})")
            lines.append(f"| {name} | {fmt} | {o['bytes']:,} | {t_bytes / o['bytes']:.1f} | "
                         f"{o['test_accuracy']:.4f} | {cells[0]} | {cells[1]} |")
    lines += ["", "| point | qdq speed-up b1 / b32 | qdq drop (points) | lowbit / .slim | "
              "goal met |", "|---|---:|---:|---:|---|"]
    for name, g in out["goal"].items():
        lines.append(f"| {name} | {g['qdq_speedup']['1']:.2f}x / {g['qdq_speedup']['32']:.2f}x "
                     f"| {g['qdq_drop_points']:.2f} | {g['lowbit_over_slim']:.2f} | "
                     f"{'yes' if g['met'] else 'no'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
