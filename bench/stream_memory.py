"""Issue 15: an image folder streamed batch by batch, at N and 4N images.

1. Peak memory (RSS) of the two roles of a search, each in a fresh process:
   ``driver`` loads the data set and trains the teacher (``--teacher-epochs``) as a search's
   driver does; ``worker`` runs one trial (``run_trial``, a uniform plan, one fine-tune
   epoch, the validation pass) as a Ray worker does. The goal: under 10 % growth from N
   to 4N.
2. Epoch time of one distillation epoch on the streamed split against the same images
   decoded beforehand into tensors (the in-memory path), in one process, rounds
   alternating; the ratio streamed / in-memory.

Folders of Fashion-MNIST images as 32x32 PNG files (``tests/image_folders.py``) are written
under ``--work`` once and reused (a rerun skips them and any step already in ``--out``).

    .venv/bin/python bench/stream_memory.py [--n 2000 --rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_DRIVER = """
import json, resource, sys, torch
from slimtune.data.datasets import load_dataset
from slimtune.models.teacher import TeacherConfig, train_teacher
from slimtune.models.zoo import build_model
from slimtune.models.train import accuracy
torch.set_num_threads(1)
ds = load_dataset(sys.argv[1])
model = build_model("small_cnn", ds.num_classes, ds.input_shape)
train_teacher(model, ds, TeacherConfig(epochs=int(sys.argv[2]), seed=0))
torch.save(model.state_dict(), sys.argv[3])
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "val_accuracy": accuracy(model, ds.val)}))
"""

_WORKER = """
import json, resource, sys, torch
from slimtune.search.trial import TrialSpec, run_trial
from slimtune.spaces.plan import CompressionPlan
from slimtune.models.zoo import build_model
state = torch.load(sys.argv[2], weights_only=True)
layers = ["features.0", "features.3", "features.7", "classifier.1", "classifier.3"]
plan = CompressionPlan.uniform(layers, sparsity=0.5, bits=4, keep_ratio=0.5,
                               keep_all=("classifier.3",)).to_dict()
spec = TrialSpec(model="small_cnn", data=sys.argv[1], plan=plan, epochs=1, lr=1e-3,
                 batch_size=64, seed=0, early_stop=False)
out = run_trial(spec, state)
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "accuracy": out["accuracy"], "seconds": out["seconds"]}))
"""


def _role(code: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode != 0:
        sys.exit(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def _epoch_times(name: str, rounds: int) -> dict:
    """One distillation epoch streamed and held, alternating, ``rounds`` times each."""
    import torch

    from slimtune.compress.distill import DistillConfig, distill
    from slimtune.data.datasets import load_dataset
    from slimtune.data.split import TensorSplit
    from slimtune.models.zoo import build_model

    torch.set_num_threads(1)
    ds = load_dataset(name)
    xs, ys = zip(*((b.x, b.y) for b in ds.train.batches(1000)), strict=True)
    held = TensorSplit(torch.cat(xs), torch.cat(ys), augment=ds.train.augment)
    teacher = build_model("small_cnn", ds.num_classes, ds.input_shape).eval()
    times: dict[str, list[float]] = {"streamed": [], "in_memory": []}
    for _ in range(rounds):
        for key, split in (("streamed", ds.train), ("in_memory", held)):
            student = build_model("small_cnn", ds.num_classes, ds.input_shape)
            t0 = time.perf_counter()
            distill(student, teacher, split, DistillConfig(epochs=1, batch_size=64),
                    generator=torch.Generator().manual_seed(0))
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"images": len(ds.train), "seconds": times,
            "median": med, "streamed_over_in_memory": med["streamed"] / med["in_memory"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="training images of the small folder")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--teacher-epochs", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/slimtune-stream-bench"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stream_memory.json")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.image_folders import write_image_folder

    doc = json.loads(args.out.read_text()) if args.out.is_file() else {}
    doc.update({
        "command": f"python bench/stream_memory.py --n {args.n} --rounds {args.rounds}",
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                 capture_output=True, text=True).stdout.strip(),
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"), "teacher_epochs": args.teacher_epochs})
    for n in (args.n, 4 * args.n):
        key = f"n{n}"
        root = args.work / key
        if not (root / "done").is_file():
            write_image_folder(root, train=n, val=n // 4, test=n // 4)
            (root / "done").write_text("ok")
        name = f"imagefolder:{root}"
        if key not in doc:
            state = str(args.work / f"{key}-teacher.pt")
            doc[key] = {"driver": _role(_DRIVER, name, str(args.teacher_epochs), state),
                        "worker": _role(_WORKER, name, state)}
            args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(key, json.dumps(doc[key]), flush=True)
    small, big = doc[f"n{args.n}"], doc[f"n{4 * args.n}"]
    doc["rss_growth"] = {role: big[role]["rss_mb"] / small[role]["rss_mb"] - 1
                         for role in ("driver", "worker")}
    if "epoch" not in doc:
        doc["epoch"] = _epoch_times(f"imagefolder:{args.work / f'n{args.n}'}", args.rounds)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({"rss_growth": doc["rss_growth"], "epoch": doc["epoch"]["median"],
                      "ratio": doc["epoch"]["streamed_over_in_memory"]}, indent=2))


if __name__ == "__main__":
    main()
