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
from tests.hostile import run_cli, run_python

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
@pytest.mark.parametrize("name", ["os:getcwd", "tempfile:mkdtemp", "sys:exit",
                                  "mymodule:factory"])
def test_an_artifact_naming_code_is_refused_before_anything_is_imported(work, name):
    (work / "m.slim").write_bytes(_artifact(header=_header(model=name)))
    before = _files(work)
    module = name.partition(":")[0]
    line = run_cli(["eval", "m.slim"], work).assert_refused(
        f"`{name}`", f"--trust-module {module}")
    assert "refused" in line
    # the same through the Python API a notebook uses
    r = run_python("import slimtune, sys\n"
                   "try:\n    slimtune.load('m.slim')\n"
                   "except slimtune.SlimtuneError as e:\n"
                   "    print(type(e).__name__); sys.exit(2)\n", work)
    assert r.rc == 2 and r.stdout.strip() == "UntrustedCodeError", r.stderr
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


@pytest.mark.parametrize("case, header, words", [
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
])
def test_hostile_headers_are_refused_in_one_line_with_bounded_memory(work, case, header, words):
    (work / "m.slim").write_bytes(_artifact(b"\0" * 4096, header=header))
    before = _files(work)
    run_cli(["eval", "m.slim"], work).assert_refused(*words)
    assert _files(work) == before


def _write_sparse(path: Path, head: bytes, size: int) -> None:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)  # a hole: 3 GB on paper, nothing on disk


@pytest.mark.parametrize("case", ["zlib bomb", "json nesting", "3 GB not ours",
                                  "3 GB with a small header", "header longer than allowed"])
def test_bombs_and_huge_files_are_refused_before_they_are_read(work, case):
    path = work / "m.slim"
    if case == "zlib bomb":  # 1 MB of zlib that inflates to 1 GB
        bomb = zlib.compressobj(9)
        raw = b"".join(bomb.compress(b" " * (1 << 20)) for _ in range(1024)) + bomb.flush()
        path.write_bytes(_artifact(raw_header=raw))
        words = ["inflates to more than"]
    elif case == "json nesting":
        path.write_bytes(_artifact(raw_header=zlib.compress(b"[" * 2_000_000)))
        words = ["not JSON"]
    elif case == "3 GB not ours":
        _write_sparse(path, b"PK\3\4", 3 << 30)
        words = ["bad magic"]
    elif case == "3 GB with a small header":
        hbytes = zlib.compress(json.dumps(_header()).encode())
        _write_sparse(path, PREFIX.pack(MAGIC, FORMAT_VERSION, len(hbytes)) + hbytes, 3 << 30)
        words = ["longer than"]
    else:
        path.write_bytes(PREFIX.pack(MAGIC, FORMAT_VERSION, 1 << 30) + b"\0" * 100)
        words = ["claims"]
    run_cli(["eval", "m.slim"], work).assert_refused(*words)


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
    card = work / "m.json"
    card.write_text(json.dumps({"dataset": "os:system", "data_dir": f"touch {MARKER}-shell"}))
    before = _files(work)
    run_cli(["eval", "m.slim"], work).assert_refused("the model card", "`os:system`",
                                                     "--trust-module os")
    card.write_text(json.dumps({"dataset": "mymodule:data"}))
    run_cli(["eval", "m.slim"], work).assert_refused("`mymodule:data`")
    _no_code_ran(work)
    assert _files(work) == before
    # a data set the caller names on the command line is the caller's choice
    r = run_cli(["eval", "m.slim", "--data", "digits"], work)
    assert r.rc == 0 and "examples" in r.stdout, r.stderr


@pytest.mark.parametrize("content, words", [
    (b"{not json", ["not JSON"]),
    (b"[1, 2]", ["not a JSON object"]),
    (json.dumps({"dataset": 3}).encode(), ["`dataset`"]),
    (b" " * (2 << 20), ["larger than"]),
])
def test_a_broken_model_card_is_one_line(work, content, words):
    (work / "m.slim").write_bytes(_real_artifact())
    (work / "m.json").write_bytes(content)
    run_cli(["eval", "m.slim"], work).assert_refused(*words)


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


@pytest.mark.parametrize("changes, words", [
    ({"data": "os:system", "data_dir": f"touch {MARKER}-shell"}, ["`os:system`"]),
    ({"model": "mymodule:factory"}, ["`mymodule:factory`", "--trust-module mymodule"]),
])
def test_a_study_naming_code_runs_nothing_on_export_or_resume(finished_run, work, changes,
                                                               words):
    run_dir, trial = _copy_run(finished_run, work / "run")
    _edit_config(run_dir, **changes)
    before = _files(work)
    if "data" in changes:  # export reads the data set from the study
        run_cli(["export", "run", "--trial", str(trial), "--out", "x.slim"],
                work).assert_refused(*words)
    run_cli(["search", "--resume", "run"], work).assert_refused(*words)
    _no_code_ran(work)
    assert _files(work) == before


def test_export_refuses_to_overwrite_its_own_outputs_and_writes_nothing_half(finished_run,
                                                                             work):
    _, trial = _copy_run(finished_run, work / "run")
    (work / "afile").write_text("x")
    (work / "adir").mkdir()
    before = _files(work)
    base = ["export", "run", "--trial", str(trial)]
    run_cli([*base, "--out", "m.json"], work).assert_refused("model card")
    run_cli([*base, "--out", "m.onnx", "--onnx"], work).assert_refused("ONNX")
    run_cli([*base, "--out", "adir"], work).assert_refused("is a directory")
    run_cli([*base, "--out", "afile/m.slim"], work).assert_refused("which is a file")
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

pathlib.Path.write_bytes = _full
_save = torch.save
def _save_half(obj, path, *a, **k):
    import io
    buf = io.BytesIO()
    _save(obj, buf)
    _full(path, buf.getvalue())
if os.environ.get("FULL_FOR") != "artifacts":
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
    """Teacher first (its save fails: no teacher.pt nor teacher.pt.tmp), then a trial's
    artifact (its save fails: the running trials are marked failed for --resume)."""
    args = ["search", "--trials", "2", "--epochs", "1", "--teacher-epochs", "1",
            "--no-warm-start", "--address", "auto"]
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
    (run_dir / "pareto.html").unlink(missing_ok=True)
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
@pytest.mark.parametrize("args, words", [
    (["--max-size", "1e400"], ["--max-size"]),
    (["--model", "torchvision:vit_b_16"], ["cannot take `digits` inputs"]),
    (["--run-dir", "afile/run"], ["--run-dir"]),
    (["--run-dir", "corrupt"], ["study.db"]),
])
def test_search_errors_are_one_line_and_create_nothing(work, args, words):
    (work / "afile").write_text("x")
    (work / "corrupt").mkdir()
    (work / "corrupt" / "study.db").write_bytes(b"this is not a database" * 100)
    before = {p: p.read_bytes() if p.is_file() else None for p in work.rglob("*")}
    run_cli(["search", "--trials", "1", "--teacher-epochs", "1", *args], work
            ).assert_refused(*words)
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
