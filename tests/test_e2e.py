"""End to end through Ray: search -> front -> export -> load -> eval, CLI and library."""

from __future__ import annotations

import json
import types

import optuna
import pytest

import slimtune
from slimtune.cli import main
from slimtune.search import SearchConfig, search
from slimtune.search.study import DB_NAME, STUDY_NAME, storage_url


def _cli(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    config = SearchConfig(trials=5, epochs=1, teacher_epochs=3, run_dir=run_dir, seed=1)
    return search(config)


def _dominates(a, b):
    ge = a.accuracy >= b.accuracy and a.size_bytes <= b.size_bytes and a.flops <= b.flops
    gt = a.accuracy > b.accuracy or a.size_bytes < b.size_bytes or a.flops < b.flops
    return ge and gt


def test_search_runs_trials_through_ray_and_the_front_is_non_dominated(run):
    study = run.run.study
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 5 and run.counts["done"] == 5
    assert run.front
    for a in run.front:
        assert not any(_dominates(b, a) for b in run.front)
    # every complete trial off the front is dominated by a front point
    on_front = {p.trial for p in run.front}
    for t in complete:
        if t.number not in on_front:
            acc, size, macs = t.values
            assert any(p.accuracy >= acc and p.size_bytes <= size and p.flops <= macs
                       for p in run.front)


def test_size_on_the_front_is_the_artifact_length(run):
    for p in run.front:
        assert run.run.artifact_path(p.trial).stat().st_size == p.size_bytes


def test_study_opens_with_plain_optuna_and_holds_the_metadata(run):
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(run.run.dir))
    meta = study.user_attrs["slimtune"]
    assert set(meta["teacher"]) >= {"accuracy", "test_accuracy", "size_bytes", "flops"}
    assert meta["config"]["model"] == "small_cnn" and meta["input_shape"] == [1, 8, 8]
    t = study.best_trials[0]
    assert set(t.user_attrs) >= {"plan", "size_bytes", "flops", "val_accuracy"}
    assert t.values[1] == t.user_attrs["size_bytes"]
    assert study.metric_names == ["accuracy", "size_bytes", "flops"]


def test_front_json_cli_and_html(run, capsys):
    code, out, _ = _cli(capsys, "front", str(run.run.dir), "--json")
    assert code == 0
    doc = json.loads(out)
    assert set(doc["teacher"]) == {"accuracy", "size_bytes", "flops", "dense_flops", "bitops",
                                   "fixed_size_bytes", "stored_weights"}
    assert [p["trial"] for p in doc["front"]] == [p.trial for p in run.front]
    assert set(doc["front"][0]) == {"trial", "accuracy", "size_bytes", "flops", "plan",
                                    "dense_flops", "bitops", "fixed_size_bytes",
                                    "stored_weights", "bits_per_weight"}
    for p in doc["front"]:
        assert p["flops"] <= p["dense_flops"]  # effective (the objective) <= dense
        assert p["size_bytes"] <= p["fixed_size_bytes"]  # entropy-coded only where smaller
        assert p["bits_per_weight"] == 8 * p["size_bytes"] / p["stored_weights"]
    html = (run.run.dir / "report.html").read_text()
    assert "plotly" in html and "Pareto front" in html and len(html) > 100_000  # js inlined
    code, out, err = _cli(capsys, "front", str(run.run.dir))
    assert code == 0 and "teacher" in out and "x smaller" in out and "FLOPs" in out
    assert "bits/w" in out
    assert "(size and FLOPs relative to the teacher, 1 - accuracy; reference point (1, 1, 1)" \
        in " ".join(out.split())  # the axes the run's objectives have
    # it suggests the smallest point keeping 95 % of the teacher's accuracy (else the best)
    suggested = int(" ".join(err.split()).split("export one with:")[1].split("--trial ")[1]
                    .split()[0])
    keep = [p for p in run.front if p.accuracy >= 0.95 * doc["teacher"]["accuracy"]]
    want = (min(keep, key=lambda p: p.size_bytes) if keep
            else max(run.front, key=lambda p: p.accuracy))
    assert suggested == want.trial


def test_export_load_and_eval_agree_with_the_model_card(run, capsys, tmp_path):
    trial = run.front[len(run.front) // 2].trial
    out_path = tmp_path / "student.slim"
    code, _, err = _cli(capsys, "export", str(run.run.dir), "--trial", str(trial),
                        "--out", str(out_path))
    assert code == 0, err
    card = json.loads(out_path.with_suffix(".json").read_text())
    for key in ("plan", "val_accuracy", "test_accuracy", "size_bytes", "flops", "input_shape",
                "dataset", "model", "ratios"):
        assert key in card
    assert card["size_bytes"] == out_path.stat().st_size
    assert card["ratios"]["size_x_smaller"] == pytest.approx(
        card["teacher"]["size_bytes"] / card["size_bytes"])
    # the val accuracy in the card is the one on the front
    point = next(p for p in run.front if p.trial == trial)
    assert card["val_accuracy"] == pytest.approx(point.accuracy, abs=1e-6)

    from slimtune.data import load_dataset
    from slimtune.objectives import accuracy

    model = slimtune.load(out_path)
    ds = load_dataset("digits")
    assert abs(accuracy(model, ds.x_test, ds.y_test) - card["test_accuracy"]) <= 0.001
    code, out, _ = _cli(capsys, "eval", str(out_path), "--json")
    assert code == 0
    assert abs(json.loads(out)["accuracy"] - card["test_accuracy"]) <= 0.001


def test_export_writes_every_onnx_format_with_its_accuracy_in_the_card(run, capsys, tmp_path):
    """`slimtune export --onnx float,lowbit,qdq` (issue 16) on a front point that quantizes."""
    pytest.importorskip("onnxruntime")
    from slimtune.export.onnx_options import onnx_path

    plans = {t.number: t.user_attrs.get("plan", {}) for t in run.run.study.get_trials()}
    trial = next(p.trial for p in run.front if any(
        lp.get("bits", 32) < 32 for lp in plans[p.trial].get("layers", {}).values()))
    out = tmp_path / "out" / "m.slim"
    code, _, err = _cli(capsys, "export", str(run.run.dir), "--trial", str(trial), "--out",
                        str(out), "--onnx", "float,lowbit,qdq", "--calibration", "64")
    assert code == 0, err
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "m.json", "m.lowbit.onnx", "m.onnx", "m.qdq.onnx", "m.slim"]
    card = json.loads(out.with_suffix(".json").read_text())
    for fmt in ("float", "lowbit", "qdq"):
        o = card["onnx"][fmt]
        assert o["path"] == str(onnx_path(out, fmt)) and o["format"] == fmt
        assert o["bytes"] == onnx_path(out, fmt).stat().st_size
        assert o["torch_test_accuracy"] == pytest.approx(card["test_accuracy"])
        assert o["test_examples"] == 360  # the digits test split, run in onnxruntime
        assert f"wrote {onnx_path(out, fmt)}" in " ".join(err.split())
    assert card["onnx"]["lowbit"]["test_agreement"] >= 0.99
    assert card["onnx"]["lowbit"]["bytes"] < card["onnx"]["float"]["bytes"]
    assert "QLinearConv" in card["onnx"]["qdq"]["kernels"]
    # `--onnx` alone is the float file, as before
    code, _, err = _cli(capsys, "export", str(run.run.dir), "--trial", str(trial), "--out",
                        str(tmp_path / "f.slim"), "--onnx")
    assert code == 0, err
    assert list(json.loads((tmp_path / "f.json").read_text())["onnx"]) == ["float"]
    code, _, err = _cli(capsys, "export", str(run.run.dir), "--trial", str(trial), "--out",
                        str(tmp_path / "g.slim"), "--onnx", "int8")
    assert code == 2 and "`--onnx` must be a comma-separated list of float, lowbit, qdq" in err
    assert not (tmp_path / "g.slim").exists()


def test_a_second_search_in_a_run_dir_is_refused_and_resume_adds_to_the_budget(run,
                                                                                ray_session):
    from slimtune.errors import RunDirError
    from slimtune.search.engine import resume

    with pytest.raises(RunDirError, match="--resume"):
        search(SearchConfig(trials=1, epochs=0, teacher_epochs=3, run_dir=run.run.dir, seed=1))
    teacher = run.run.dir / "teacher.pt"
    before = teacher.stat().st_mtime_ns
    with pytest.raises(Exception, match="cannot change --epochs"):
        resume(run.run.dir, trials=6, epochs=3)
    again = resume(run.run.dir, trials=6)  # a new budget: one more trial
    assert teacher.stat().st_mtime_ns == before
    complete = again.run.study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(complete) == 6
    assert again.counts["total"] == 1
    assert again.run.meta["config"]["epochs"] == 1  # the stored settings, not the defaults
    assert (run.run.dir / DB_NAME).is_file()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["search", "--model", "resnet9000"], "unknown model `resnet9000`"),
        (["search", "--data", "imagenet"], "unknown dataset `imagenet`"),
        (["search", "--trials", "0"], "--trials"),
        (["search", "--cpus-per-trial", "-1"], "--cpus-per-trial"),
        (["search", "--gpus-per-trial", "0.5", "--trials", "1"], "GPUs"),
        (["search", "--fidelity", "--trials", "1"], "needs `--budget-epochs N`"),
        (["search", "--budget-epochs", "6", "--rungs", "0,one,6"], "--rungs"),
        (["search", "--budget-epochs", "6", "--epochs", "6", "--rungs", "0,7,6"],
         "`--rungs` must be at least two rising"),
        (["front", "."], "not a slimtune run"),
        (["export", ".", "--trial", "0", "--out", "x.slim"], "not a slimtune run"),
        (["eval", "missing.slim"], "no artifact"),
        (["eval", "pyproject.toml"], "not a slimtune artifact"),
    ],
)
def test_user_errors_are_one_line_on_stderr_with_exit_code_2(argv, needle, capsys, ray_session,
                                                             tmp_path, monkeypatch):
    import shutil
    from pathlib import Path

    shutil.copy(Path(__file__).parents[1] / "pyproject.toml", tmp_path / "pyproject.toml")
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("slimtune: error: ")
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists(), "no half-written run directory"


@pytest.mark.parametrize("first", ["slimtune.export.artifact", "slimtune.search.engine", None])
def test_search_and_export_entry_points_are_callable_whatever_was_imported_first(first):
    import subprocess
    import sys

    code = (f"import {first}\n" if first else "") + (
        "import slimtune\n"
        "assert callable(slimtune.search) and callable(slimtune.export)\n"
        "assert slimtune.export.encode and slimtune.search.SearchConfig\n"
        "from slimtune.search import SearchConfig\n"
        "try:\n"
        "    slimtune.search(SearchConfig(), trials=3)\n"
        "except TypeError as e:\n"
        "    assert 'either' in str(e)\n"
        "else:\n"
        "    raise SystemExit('no TypeError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("cpus, gpus, per_cpu, per_gpu, expected", [
    (16, 1, 1.0, 0.25, 4),   # four trials share one GPU
    (16, 1, 1.0, 1.0, 1),    # one trial per GPU
    (16, 2, 1.0, 0.25, 8),   # two GPUs, four each
    (2, 1, 1.0, 0.25, 2),    # CPUs run out first
    (4, 0, 0.5, 0.0, 8),     # CPU only: half a CPU each
])
def test_concurrency_is_what_both_cpus_and_gpus_allow(monkeypatch, cpus, gpus, per_cpu, per_gpu,
                                                      expected):
    from slimtune.search.ray_runner import RayCluster

    cluster = RayCluster.__new__(RayCluster)  # no Ray start: only its resource arithmetic
    cluster._ray = types.SimpleNamespace(cluster_resources=lambda: {"CPU": cpus, "GPU": gpus})
    assert cluster.max_concurrent(per_cpu, per_gpu) == expected


def test_report_in_a_real_browser(run, browser, tmp_path):
    """The report of a real search, opened in headless Chromium: every view draws, the
    console stays clean, and clicking a front point in the size view selects it in every
    view and shows that trial's export command."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.browser import console_errors

    page = slimtune.report(run.run.dir, tmp_path / "report.html")
    browser.get(page.as_uri())
    WebDriverWait(browser, 60).until(
        lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    views = browser.execute_script("return window.slimtune.data.views.map(v => v.id)")
    assert views == ["fig-size", "fig-macs", "fig-3d", "fig-history", "fig-plan"]
    for view in views:  # each view drew its plot (an SVG; the 3-D one its WebGL scene too)
        svgs = browser.find_elements(By.CSS_SELECTOR, f"#{view} svg.main-svg")
        assert svgs and svgs[0].size["width"] > 300, view
    assert browser.find_elements(By.CSS_SELECTOR, "#fig-3d canvas")
    assert console_errors(browser) == []

    # the front trace of the size view and its points, in data order
    figure = browser.execute_script("return window.slimtune.data.views[0].figure")
    k = [t["name"] for t in figure["data"]].index("Pareto front")
    trials = figure["data"][k]["customdata"]
    first = browser.execute_script("return window.slimtune.selected()")
    pick = next(i for i, t in enumerate(trials) if t != first)  # not the one selected at load
    traces = browser.find_elements(By.CSS_SELECTOR, "#fig-size .scatterlayer .trace")
    point = traces[k].find_elements(By.CSS_SELECTOR, "path.point")[pick]
    ActionChains(browser).move_to_element(point).pause(0.3).click().perform()
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script("return window.slimtune.selected()") == trials[pick])

    command = browser.find_element(By.ID, "export-command").text
    assert command == (f"slimtune export {run.run.dir} --trial {trials[pick]} "
                       f"--out student-{trials[pick]}.slim")
    row = browser.find_element(By.CSS_SELECTOR, "#front-table tr.selected")
    assert row.get_attribute("data-trial") == str(trials[pick])
    plan_rows = browser.find_elements(By.CSS_SELECTOR, "#selected-plan tbody tr")
    assert len(plan_rows) == len(run.run.meta["layers"])
    marked = browser.execute_script(
        "const d = document.getElementById('fig-macs').data;"
        "return d.find(t => t.name === 'selected').x;")
    assert marked == [next(p.flops for p in run.front if p.trial == trials[pick])]
    heat = browser.execute_script(
        "return document.getElementById('fig-plan').layout.shapes.length")
    assert heat == browser.execute_script("return window.slimtune.data.views[4].knobs")

    # a heatmap column selects its point too: click the first layer's cell of the column
    # of the front's first point (the teacher's column is 0)
    target = trials[0] if trials[0] != trials[pick] else trials[-1]
    column = browser.execute_script(
        "return window.slimtune.data.views[4].columns.indexOf(arguments[0]) + 1", target)
    dx, dy = browser.execute_script(
        "const l = document.getElementById('fig-plan')._fullLayout;"
        "return [l.xaxis.l2p(arguments[0]) - l.xaxis._length / 2,"
        "        l.yaxis.l2p(0) - l.yaxis._length / 2];", column)
    cells = browser.find_element(By.CSS_SELECTOR, "#fig-plan .nsewdrag")  # the first knob's
    ActionChains(browser).move_to_element_with_offset(cells, int(dx), int(dy)).pause(0.3) \
        .click().perform()
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script("return window.slimtune.selected()") == target)
    assert f"--trial {target} " in browser.find_element(By.ID, "export-command").text

    # and so does a row of the table
    browser.find_element(By.CSS_SELECTOR, f"#front-table tr[data-trial='{trials[pick]}']") \
        .click()
    assert browser.execute_script("return window.slimtune.selected()") == trials[pick]
    assert console_errors(browser) == []
    browser.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 10_000
