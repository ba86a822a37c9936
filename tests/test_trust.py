"""Hostile and broken files: an artifact, a model card or a study never runs code, bounded
work before validation, one `slimtune: error:` line (exit 2) and no stray files.

Every command runs in a child process (tests/hostile.py) that reports its peak memory;
code that must not run would create a marker file.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import optuna
import pytest
import torch

from slimtune.compress.apply import apply
from slimtune.errors import ArtifactError, ConfigError, UntrustedCodeError
from slimtune.export.artifact import decode, encode
from slimtune.export.header import CRC, FORMAT_VERSION, MAGIC, PREFIX
from slimtune.models.zoo import build_model
from slimtune.search import SearchConfig
from slimtune.search.engine import search
from slimtune.spaces.plan import CompressionPlan, LayerPlan
from tests.hostile import run_cli, run_cli_many, run_python

SHAPE = (1, 8, 8)
MARKER = "MARKER"

#: a module in the working directory that leaves a marker when imported or called: it must
#: never be imported because a file names it
MYMODULE = f'''
from pathlib import Path
Path("{MARKER}-imported").touch()

def factory(num_classes=10, input_shape=(1, 8, 8)):
    Path("{MARKER}-called").touch()
    import torch
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, num_classes))

def data():
    Path("{MARKER}-called").touch()
    raise SystemExit(0)
'''


def _artifact(body: bytes | None = None, *, header: dict | None = None,
              raw_header: bytes | None = None) -> bytes:
    """A file in the artifact format around a header (a dict, or raw zlib bytes) and a
    payload, with a valid CRC: only what the header says is hostile."""
    hbytes = raw_header if raw_header is not None else zlib.compress(json.dumps(header).encode())
    blob = PREFIX.pack(MAGIC, FORMAT_VERSION, len(hbytes)) + hbytes + (body or b"")
    return blob + CRC.pack(zlib.crc32(blob))


def _header(model="small_cnn", num_classes=10, input_shape=SHAPE, layers=None) -> dict:
    plain = {"sparsity": 0.0, "rank_ratio": 1.0, "bits": 32, "keep_ratio": 1.0}
    return {"model": model, "num_classes": num_classes, "input_shape": list(input_shape),
            "plan": {"version": 1, "temperature": 4.0, "alpha": 0.5,
                     "layers": {k: {**plain, **v} for k, v in (layers or {}).items()}}}


def _real_artifact(model_name="small_cnn", plan=None) -> bytes:
    model = build_model(model_name, 10, SHAPE)
    plan = plan or CompressionPlan()
    return encode(apply(model, plan, SHAPE), model_name, 10, SHAPE, plan)


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


@pytest.fixture()
def work(tmp_path):
    """A working directory holding the marker module `mymodule.py`."""
    (tmp_path / "mymodule.py").write_text(MYMODULE)
    return tmp_path


def _no_code_ran(d: Path) -> None:
    assert not list(d.glob(f"{MARKER}*")), "code named by a file ran"


# -- artifacts --------------------------------------------------------------------------
NAMED_CODE = ["os:getcwd", "tempfile:mkdtemp", "sys:exit", "mymodule:factory"]


def test_an_artifact_naming_code_is_refused_before_anything_is_imported(work):
    for i, name in enumerate(NAMED_CODE):
        (work / f"m{i}.slim").write_bytes(_artifact(header=_header(model=name)))
    before = _files(work)
    results = run_cli_many([["eval", f"m{i}.slim"] for i in range(len(NAMED_CODE))], work)
    for name, r in zip(NAMED_CODE, results, strict=True):
        line = r.assert_refused(f"`{name}`", f"--trust-module {name.partition(':')[0]}")
        assert "refused" in line
    # the same through the Python API a notebook uses
    r = run_python("import slimtune\n"
                   f"for i in range({len(NAMED_CODE)}):\n"
                   "    try:\n        slimtune.load(f'm{i}.slim')\n"
                   "    except slimtune.SlimtuneError as e:\n"
                   "        print(type(e).__name__)\n", work)
    assert r.rc == 0 and r.stdout.split() == ["UntrustedCodeError"] * len(NAMED_CODE), r.stderr
    _no_code_ran(work)
    assert _files(work) == before


def test_a_trusted_module_loads_and_an_architecture_can_be_passed_instead(work, monkeypatch):
    monkeypatch.syspath_prepend(str(work))
    monkeypatch.chdir(work)
    import importlib

    mymodule = importlib.import_module("mymodule")
    for m in work.glob(f"{MARKER}*"):
        m.unlink()  # imported by this test on purpose
    teacher = mymodule.factory(10, SHAPE)
    plan = CompressionPlan({"1": LayerPlan(sparsity=0.5, bits=4)})
    blob = encode(apply(teacher, plan, SHAPE), "mymodule:factory", 10, SHAPE, plan)
    (work / "m.slim").write_bytes(blob)
    import slimtune

    with pytest.raises(UntrustedCodeError, match="--trust-module mymodule"):
        slimtune.load(work / "m.slim")
    x = torch.randn(5, *SHAPE)
    trusted = slimtune.load(work / "m.slim", trust_module="mymodule")
    passed = slimtune.load(work / "m.slim", model=torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 10)))
    assert torch.equal(trusted(x), passed(x))
    # a trusted package trusts its submodules, not a module whose name merely starts alike
    from slimtune.trust import Trust

    assert Trust.of("pkg").allows("pkg.models") and not Trust.of("pkg").allows("pkg2")


HOSTILE_HEADERS = [  # (what, header, words the one line must hold)
    ("ten million classes", _header(num_classes=10**7), ["num_classes"]),
    ("classes the file cannot hold", _header(num_classes=100_000), ["weights, more than"]),
    ("a 2000 x 2000 input with channel pruning",
     _header(input_shape=(1, 2000, 2000), layers={"features.0": {"keep_ratio": 0.5}}),
     ["input_shape"]),
    ("activations over the bound", _header(model="vgg_small", input_shape=(1, 1400, 1400),
                                           layers={"features.0": {"keep_ratio": 0.5}}),
     ["activations"]),
    ("a ReLU in the plan", _header(layers={"features.2": {"sparsity": 0.5}}),
     ["`features.2`", "ReLU"]),
    ("an unknown layer", _header(layers={"nope": {"sparsity": 0.5}}), ["`nope`"]),
    ("pruning the output layer", _header(layers={"classifier.3": {"keep_ratio": 0.5}}),
     ["outputs"]),
    ("a model that cannot take the input", _header(model="vgg_small", input_shape=(1, 2, 2)),
     ["cannot take inputs"]),
    ("a boolean class count", _header(num_classes=True), ["num_classes"]),
    ("a bad bit-width", _header(layers={"features.0": {"bits": 1}}), ["bits"]),
]


def test_hostile_headers_are_refused_in_one_line_with_bounded_memory(work):
    for i, (_, header, _) in enumerate(HOSTILE_HEADERS):
        (work / f"m{i}.slim").write_bytes(_artifact(b"\0" * 4096, header=header))
    before = _files(work)
    results = run_cli_many([["eval", f"m{i}.slim"] for i in range(len(HOSTILE_HEADERS))],
                           work)
    for (case, _, words), r in zip(HOSTILE_HEADERS, results, strict=True):
        assert r.rc == 2, case
        r.assert_refused(*words)
    assert _files(work) == before


def _write_sparse(path: Path, head: bytes, size: int) -> None:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)  # a hole: 3 GB on paper, nothing on disk


def test_bombs_and_huge_files_are_refused_before_they_are_read(work):
    bomb = zlib.compressobj(9)  # 1 MB of zlib that inflates to 1 GB
    raw = b"".join(bomb.compress(b" " * (1 << 20)) for _ in range(1024)) + bomb.flush()
    (work / "zlib.slim").write_bytes(_artifact(raw_header=raw))
    (work / "nested.slim").write_bytes(_artifact(raw_header=zlib.compress(b"[" * 2_000_000)))
    _write_sparse(work / "zip.slim", b"PK\3\4", 3 << 30)  # 3 GB, not ours
    hbytes = zlib.compress(json.dumps(_header()).encode())
    _write_sparse(work / "long.slim", PREFIX.pack(MAGIC, FORMAT_VERSION, len(hbytes)) + hbytes,
                  3 << 30)  # 3 GB behind a small valid header
    (work / "claims.slim").write_bytes(PREFIX.pack(MAGIC, FORMAT_VERSION, 1 << 30) + b"\0" * 99)
    cases = {"zlib": ["inflates to more than"], "nested": ["not JSON"], "zip": ["bad magic"],
             "long": ["longer than"], "claims": ["claims"]}
    results = run_cli_many([["eval", f"{c}.slim"] for c in cases], work)
    for words, r in zip(cases.values(), results, strict=True):
        r.assert_refused(*words)


def test_non_finite_values_are_refused():
    model = build_model("small_cnn", 10, SHAPE)
    with torch.no_grad():
        model.classifier[3].bias[0] = float("nan")
    blob = encode(model, "small_cnn", 10, SHAPE, CompressionPlan())
    with pytest.raises(ArtifactError, match="non-finite"):
        decode(blob)


# -- model cards ------------------------------------------------------------------------
def test_a_model_card_never_runs_code(work):
    (work / "m.slim").write_bytes(_real_artifact())
    (work / "n.slim").write_bytes(_real_artifact())
    (work / "m.json").write_text(json.dumps({"dataset": "os:system",
                                             "data_dir": f"touch {MARKER}-shell"}))
    (work / "n.json").write_text(json.dumps({"dataset": "mymodule:data"}))
    before = _files(work)
    shell, mine, given = run_cli_many([["eval", "m.slim"], ["eval", "n.slim"],
                                       ["eval", "m.slim", "--data", "digits"]], work)
    shell.assert_refused("the model card", "`os:system`", "--trust-module os")
    mine.assert_refused("`mymodule:data`", "--trust-module mymodule")
    _no_code_ran(work)
    assert _files(work) == before
    # a data set the caller names on the command line is the caller's choice
    assert given.rc == 0 and "examples" in given.stdout, given.stderr


def test_a_broken_model_card_is_one_line(work):
    cards = [(b"{not json", ["not JSON"]), (b"[1, 2]", ["not a JSON object"]),
             (json.dumps({"dataset": 3}).encode(), ["`dataset`"]),
             (b" " * (2 << 20), ["larger than"])]
    for i, (content, _) in enumerate(cards):
        (work / f"m{i}.slim").write_bytes(_real_artifact())
        (work / f"m{i}.json").write_bytes(content)
    results = run_cli_many([["eval", f"m{i}.slim"] for i in range(len(cards))], work)
    for (_, words), r in zip(cards, results, strict=True):
        r.assert_refused(*words)


# -- run directories and studies --------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(ray_session, tmp_path_factory):
    """A real finished digits run (two trials)."""
    d = tmp_path_factory.mktemp("trust") / "run"
    result = search(SearchConfig(trials=2, epochs=1, teacher_epochs=2, run_dir=d,
                                 warm_start=False, seed=4))
    done = [t.number for t in result.run.study.trials if t.state.name == "COMPLETE"]
    storage = result.run.study._storage
    getattr(storage, "_backend", storage).engine.dispose()  # closed, as a finished run is
    assert not list(d.glob("study.db-*")), "the finished run's SQLite WAL was not folded in"
    return d, done[0]


def _copy_run(finished_run, dst: Path) -> tuple[Path, int]:
    src, trial = finished_run
    shutil.copytree(src, dst)
    for stale in dst.glob("*.lock"):
        stale.unlink()
    return dst, trial


def _edit_config(run_dir: Path, **changes) -> None:
    from slimtune.search.study import open_storage

    study = optuna.load_study(study_name="slimtune", storage=open_storage(run_dir))
    meta = study.user_attrs["slimtune"]
    meta["config"].update(changes)
    study.set_user_attr("slimtune", meta)


def test_a_study_naming_code_runs_nothing_on_export_or_resume(finished_run, work):
    data_run, trial = _copy_run(finished_run, work / "data")
    _edit_config(data_run, data="os:system", data_dir=f"touch {MARKER}-shell")
    model_run, _ = _copy_run(finished_run, work / "model")
    _edit_config(model_run, model="mymodule:factory")
    before = _files(work)
    export, resume_data, resume_model = run_cli_many([
        ["export", "data", "--trial", str(trial), "--out", "x.slim"],  # reads the data set
        ["search", "--resume", "data"], ["search", "--resume", "model"]], work)
    for r in (export, resume_data):
        r.assert_refused("the study of data", "`os:system`", "--trust-module os")
    resume_model.assert_refused("`mymodule:factory`", "--trust-module mymodule")
    _no_code_ran(work)
    assert _files(work) == before


def test_export_refuses_to_overwrite_its_own_outputs_and_writes_nothing_half(finished_run,
                                                                             work):
    _, trial = _copy_run(finished_run, work / "run")
    (work / "afile").write_text("x")
    (work / "adir").mkdir()
    before = _files(work)
    base = ["export", "run", "--trial", str(trial)]
    card, onnx, at_dir, under_file = run_cli_many([
        [*base, "--out", "m.json"], [*base, "--out", "m.onnx", "--onnx"],
        [*base, "--out", "adir"], [*base, "--out", "afile/m.slim"]], work)
    card.assert_refused("model card")
    onnx.assert_refused("ONNX")
    at_dir.assert_refused("is a directory")
    under_file.assert_refused("which is a file")
    assert _files(work) == before  # no outputs, no *.tmp


#: Python code run before the CLI in a child process: from then on every file written with
#: `Path.write_bytes` (artifacts, model cards) or `torch.save` (teachers) gets half its
#: bytes onto the disk, then fails as a full disk does (ENOSPC)
DISK_FULL = """
import errno, os, pathlib, sys, torch
from slimtune.cli import main

def _full(path, data):
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device", str(path))

_write = pathlib.Path.write_bytes
def _write_full(self, data):
    # FULL_FOR=store: every write fails, the artifact store's start-up check first
    if "slimtune-probe" in self.name and os.environ.get("FULL_FOR") != "store":
        return _write(self, data)
    return _full(self, data)

pathlib.Path.write_bytes = _write_full
_save = torch.save
def _save_half(obj, path, *a, **k):
    import io
    buf = io.BytesIO()
    _save(obj, buf)
    _full(path, buf.getvalue())
if os.environ.get("FULL_FOR") not in ("artifacts", "store"):
    torch.save = _save_half
main(sys.argv[1:])
"""


def test_a_full_disk_during_export_is_one_line_and_leaves_nothing(finished_run, work):
    _, trial = _copy_run(finished_run, work / "run")
    before = _files(work)
    r = run_python(DISK_FULL, work, args=["export", "run", "--trial", str(trial), "--out",
                                          "out/m.slim"])
    r.assert_refused("out/m.slim", "No space left on device")
    assert _files(work) - before <= {"out"}  # at most the (empty) directory, no *.tmp


def test_a_full_disk_during_a_search_is_one_line_and_leaves_no_trial_running(ray_session,
                                                                            work):
    """The artifact store's start-up check first (nothing runs), then the teacher (its
    save fails: no teacher.pt nor teacher.pt.tmp), then a trial's artifact (its save
    fails: the running trials are marked failed for --resume)."""
    args = ["search", "--trials", "2", "--epochs", "1", "--teacher-epochs", "1",
            "--no-warm-start", "--address", "auto"]
    r = run_python(DISK_FULL, work, args=[*args, "--run-dir", "s"], env={"FULL_FOR": "store"})
    r.assert_refused("cannot use the artifact store s/artifacts", "No space left on device")
    assert not [p for p in (work / "s").rglob("*") if p.is_file() and p.name != "search.lock"]
    r = run_python(DISK_FULL, work, args=[*args, "--run-dir", "t"])
    r.assert_refused("teacher", "No space left on device", after_progress=True)
    assert not [p for p in (work / "t").iterdir() if "teacher" in p.name]
    assert not list(Path(os.environ["SLIMTUNE_CACHE"]).rglob("*.tmp"))
    r = run_python(DISK_FULL, work, args=[*args, "--run-dir", "a"],
                   env={"FULL_FOR": "artifacts"})
    line = r.assert_refused("artifact", "No space left on device", after_progress=True)
    assert "slimtune search --resume a" in line
    from slimtune.search.study import open_run

    trials = open_run(work / "a").study.trials
    assert not [t for t in trials if t.state.name == "RUNNING"]
    assert [t for t in trials if t.state.name == "FAIL" and t.user_attrs.get("interrupted")]
    assert not list((work / "a").rglob("*.tmp"))


def test_read_commands_leave_the_run_directory_as_it_was(finished_run, work):
    run_dir, _ = _copy_run(finished_run, work / "run")
    (run_dir / "report.html").unlink(missing_ok=True)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    r = run_cli(["front", "run", "--html", "plot.html", "--json"], work)
    assert r.rc == 0, r.stderr
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before
    assert (work / "plot.html").is_file()


def test_suggested_commands_quote_paths(finished_run, work):
    _copy_run(finished_run, work / "my runs")
    r = run_cli(["front", "my runs"], work)
    assert r.rc == 0, r.stderr
    assert "slimtune export 'my runs' --trial" in r.stderr
    from slimtune.cli import _storage_args

    assert _storage_args("postgresql://u:secret@h/db", "other") == \
        " --storage URL --study-name other"


# -- searches ---------------------------------------------------------------------------
def test_search_errors_are_one_line_and_create_nothing(work):
    (work / "afile").write_text("x")
    (work / "corrupt").mkdir()
    (work / "corrupt" / "study.db").write_bytes(b"this is not a database" * 100)
    cases = [(["--max-size", "1e400"], ["--max-size"]),
             (["--model", "torchvision:vit_b_16"], ["cannot take `digits` inputs"]),
             (["--run-dir", "afile/run"], ["--run-dir", "which is a file"]),
             (["--run-dir", "corrupt"], ["study.db"])]
    before = {p: p.read_bytes() if p.is_file() else None for p in work.rglob("*")}
    results = run_cli_many([["search", "--trials", "1", "--teacher-epochs", "1", *args]
                            for args, _ in cases], work)
    for (_, words), r in zip(cases, results, strict=True):
        r.assert_refused(*words)
    assert {p: p.read_bytes() if p.is_file() else None for p in work.rglob("*")} == before


def test_a_trial_error_with_brackets_is_printed_as_is_and_leaves_nothing_running(
        ray_session, tmp_path):
    """Rich would read `[/]` in a trial's error as markup and crash the driver."""
    repo = Path(__file__).parents[1]
    from tests.user_code import markup_failing_model

    ckpt = tmp_path / "teacher.pt"
    torch.save(markup_failing_model(4, SHAPE).state_dict(), ckpt)
    run_dir = tmp_path / "run"
    r = run_cli(["search", "--model", "tests.user_code:markup_failing_model",
                 "--data", "tests.user_code:tiny_data", "--checkpoint", str(ckpt),
                 "--trials", "2", "--epochs", "1", "--no-warm-start", "--address", "auto",
                 "--run-dir", str(run_dir)], repo)
    assert r.rc == 0, r.stderr
    assert "bad [/] [bold]plan[/bold]" in r.stderr
    from slimtune.search.study import open_run

    states = [t.state.name for t in open_run(run_dir).study.trials]
    assert states == ["FAIL", "FAIL"]


def test_a_failing_sensitivity_pass_costs_only_the_guided_plans(ray_session, tmp_path,
                                                                monkeypatch):
    from slimtune.search import engine
    from tests.user_code import cheap_trial

    def broken(*args, **kwargs):
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(engine, "_sensitivity", broken)
    warnings: list[str] = []
    result = search(SearchConfig(trials=4, teacher_epochs=1, run_dir=tmp_path / "r"),
                    engine.SearchEvents(warning=warnings.append), trial_fn=cheap_trial)
    assert warnings and "probe exploded" in warnings[0]
    assert "probe exploded" in result.run.meta["sensitivity_error"]
    assert len(result.run.study.trials) >= 4  # the warm start and the trials went on


# -- smaller ----------------------------------------------------------------------------
def test_checkpoint_refusal_names_the_mismatch_in_a_whole_sentence(tmp_path):
    from slimtune.models.teacher import load_checkpoint

    model = build_model("small_cnn", 10, SHAPE)
    state = model.state_dict()
    state.pop("classifier.3.bias")
    state["extra.weight"] = torch.zeros(3)
    state["classifier.1.weight"] = torch.zeros(2, 2)
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(ConfigError) as exc:
        load_checkpoint(build_model("small_cnn", 10, SHAPE), tmp_path / "c.pt")
    msg = str(exc.value)
    assert "1 missing (`classifier.3.bias`)" in msg and "1 unexpected (`extra.weight`)" in msg
    assert "classifier.1.weight (2, 2) in the file, (64, 256) in the model" in msg


def test_the_teacher_cache_tells_apart_data_in_other_directories():
    from slimtune.data.datasets import load_dataset
    from slimtune.models.teacher import TeacherConfig, _cache_path, cache_key, data_fingerprint

    full = load_dataset("digits")
    sub = load_dataset("digits", subset=400)
    assert data_fingerprint(full) == data_fingerprint(load_dataset("digits"))
    cfg = TeacherConfig()
    keys = [cache_key("small_cnn", "digits", None, cfg, data_fingerprint(d)) for d in (full, sub)]
    assert _cache_path(keys[0]) != _cache_path(keys[1])


def test_a_retried_trial_keeps_its_seed():
    from slimtune.search.engine import _retry_attrs

    assert _retry_attrs(7, {}) == {"retry_of": 7, "seed_of": 7}
    assert _retry_attrs(9, {"retry_of": 7, "seed_of": 7}) == {"retry_of": 9, "seed_of": 7}


def test_header_bounds_are_checked_before_the_crc(work):
    # a tampered class count with a stale CRC: refused for the count, not the checksum
    blob = bytearray(_artifact(header=_header(num_classes=10**7)))
    blob[-1] ^= 0xFF
    (work / "m.slim").write_bytes(bytes(blob))
    run_cli(["eval", "m.slim"], work).assert_refused("num_classes")


def test_the_prefix_is_read_before_the_rest(tmp_path, monkeypatch):
    """`read_artifact` reads 13 bytes of a file that is not ours, then stops."""
    from slimtune.export import artifact

    path = tmp_path / "big.bin"
    _write_sparse(path, b"\0" * 16, 64 << 20)
    reads: list[int] = []
    real_open = open

    class Spy:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            reads.append(n)
            return self.f.read(n)

        def fileno(self):
            return self.f.fileno()

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(artifact, "open", lambda p, m: Spy(real_open(p, m)), raising=False)
    with pytest.raises(ArtifactError, match="magic"):
        artifact.read_artifact(path)
    assert reads == [PREFIX.size]
