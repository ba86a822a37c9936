"""The report's data (the ``*_info`` functions) on hand-made studies, and the page built
from it: self-contained, escaped, every view present. The real browser test is
test_e2e.py's ``test_report_in_a_real_browser``."""

from __future__ import annotations

import dataclasses
import datetime
import json
import re

import optuna
import pytest
from optuna.distributions import FloatDistribution

from slimtune.cli import main
from slimtune.errors import RunDirError
from slimtune.search.pareto import hypervolume
from slimtune.search.study import create_study, open_run
from slimtune.viz import front_info, history_info, plan_info, report_info, table_info
from slimtune.viz.plans import plans_of
from slimtune.viz.report import page, read_cards, write_report
from slimtune.viz.table import export_command, held_out_accuracies

LAYERS = ["features.0", "classifier.3"]
TEACHER = {"accuracy": 0.9, "test_accuracy": 0.88, "size_bytes": 40_000, "flops": 10_000,
           "dense_flops": 10_000, "bitops": 10_000 * 32 * 32}


def _meta(**config):
    return {"version": "test", "layers": list(LAYERS), "teacher": dict(TEACHER),
            "input_shape": [1, 8, 8], "num_classes": 10,
            "config": {"data": "digits", "model": "small_cnn", "data_dir": None,
                       "subset": None, "objectives": ["accuracy", "size", "flops"], **config}}


def _plan(sparsity=0.0, bits=32, keep=1.0, rank=1.0, **extra):
    lp = {"sparsity": sparsity, "rank_ratio": rank, "bits": bits, "keep_ratio": keep, **extra}
    return {"version": 1, "layers": {n: dict(lp) for n in LAYERS}, "temperature": 4.0,
            "alpha": 0.5}


def _add(study, minute, acc, size, flops, *, plan=None, state=optuna.trial.TrialState.COMPLETE,
         epochs=2, constraints=None, **attrs):
    """A finished trial, finishing ``minute`` minutes into the run."""
    t0 = datetime.datetime(2026, 1, 1, 12, 0)
    system_attrs = attrs.pop("system_attrs", None)
    trial = optuna.trial.create_trial(
        state=state, values=[acc, size, flops] if state.name == "COMPLETE" else None,
        params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
        user_attrs={"val_accuracy": acc, "size_bytes": size, "flops": flops,
                    "plan": plan or _plan(), "epochs_trained": epochs, **attrs},
        system_attrs=system_attrs, constraints=constraints)
    trial.datetime_start = t0 + datetime.timedelta(minutes=minute - 1)
    trial.datetime_complete = t0 + datetime.timedelta(minutes=minute)
    study.add_trial(trial)


@pytest.fixture
def run_dir(tmp_path):
    """A run of 6 trials, added out of their finishing order: two uniform warm-start plans,
    a guided one, two of the sampler (one over the size budget), one stopped early, and a
    retry of a guided plan."""
    d = tmp_path / "run"
    d.mkdir()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = create_study(d, optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr("slimtune", _meta(max_size=30_000, min_accuracy=0.5))
    _add(study, 2, 0.85, 20_000, 6_000, plan=_plan(0.5, 8), phase="uniform")    # 0
    _add(study, 1, 0.88, 35_000, 9_000, phase="uniform",                          # 1: over
         constraints={"size": 35_000 / 30_000 - 1})
    _add(study, 3, 0.80, 5_000, 3_000, plan=_plan(0.75, 4, keep=0.5), phase="guided",  # 2
         stored_weights=10_000, fixed_size_bytes=6_000)
    _add(study, 5, 0.70, 4_000, 4_000, plan=_plan(0.9, 2, rank=0.25))            # 3: sampler
    _add(study, 4, 0.60, 9_000, 5_000, state=optuna.trial.TrialState.PRUNED, epochs=1)  # 4
    _add(study, 6, 0.79, 6_000, 2_000, plan=_plan(0.8, 3), retry_of=2)            # 5: retry
    study.set_user_attr("finetuned", {"2": [{"epochs": 5, "test_accuracy": 0.83}]})
    return d


def test_front_info_separates_front_dominated_and_over_budget(run_dir):
    info = front_info(run_dir)
    assert [p.trial for p in info.front] == [3, 2, 5, 0]  # smallest first
    assert {p.trial for p in info.others} == {1}
    assert info.infeasible == {1}
    assert info.budgets == {"max_size": 30_000.0, "min_accuracy": 0.5}
    assert info.counts["complete"] == 5 and info.counts["pruned"] == 1


def test_history_follows_finishing_order_with_phases_and_epochs(run_dir):
    run = open_run(run_dir)
    info = front_info(run)
    hist = history_info(run)
    ev = hist.events
    assert [e.trial for e in ev] == [1, 0, 2, 4, 3, 5]  # by finishing time, not number
    assert [e.order for e in ev] == [1, 2, 3, 4, 5, 6]
    assert [e.phase for e in ev] == ["uniform", "uniform", "guided", "sampler", "sampler",
                                     "guided"]  # the retry keeps the phase of what it retries
    assert [e.state for e in ev] == ["complete", "complete", "complete", "pruned", "complete",
                                     "complete"]
    assert [e.epochs for e in ev] == [2, 4, 6, 7, 9, 11]
    assert ev[0].hypervolume == 0.0  # the over-budget trial 1 adds nothing
    hv = [e.hypervolume for e in ev]
    assert hv == sorted(hv) and hv[1] > 0
    # after the last job: exactly the front's hypervolume, as `front` prints it
    assert ev[-1].hypervolume == pytest.approx(info.hypervolume)
    assert ev[2].hypervolume == pytest.approx(
        hypervolume([p for p in info.front if p.trial in (0, 2)], TEACHER))
    assert hist.rungs is None and all(e.rung is None for e in ev)
    assert hist.phases == ["uniform", "guided", "sampler"]


def test_enqueued_plans_of_an_older_run_are_the_warm_start(tmp_path):
    d = tmp_path / "old"
    d.mkdir()
    study = create_study(d, optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr("slimtune", _meta())
    _add(study, 1, 0.8, 9_000, 5_000, system_attrs={"fixed_params": {"x": 0.5}})
    _add(study, 2, 0.7, 5_000, 2_000)
    run = open_run(d)
    assert [e.phase for e in history_info(run).events] == [
        "warm start", "sampler"]


def test_history_of_a_multi_fidelity_run_counts_the_screening_jobs(tmp_path):
    """Rung 0 lives in the screening study: it spends no epoch but is a job; a plan's
    fine-tuned jobs take the phase of its screening trial."""
    d = tmp_path / "mf"
    d.mkdir()
    study = create_study(d, optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr("slimtune", _meta(fidelity=True, rungs=[0, 1, 3]))
    screen = optuna.create_study(study_name="slimtune-screen", storage=study._storage,
                                 directions=["maximize", "minimize", "minimize"])
    _add(screen, 1, 0.5, 9_000, 5_000, epochs=0, phase="one-shot")  # plan 0
    _add(screen, 2, 0.4, 5_000, 2_000, epochs=0)                    # plan 1: sampler
    _add(study, 3, 0.7, 9_000, 5_000, epochs=1, state=optuna.trial.TrialState.PRUNED,
         plan_id=0, rung=1)
    _add(study, 4, 0.8, 9_000, 5_000, epochs=2, plan_id=0, rung=2)
    hist = history_info(d)
    assert [(e.trial, e.rung, e.phase, e.epochs) for e in hist.events] == [
        (None, 0, "one-shot", 0), (None, 0, "sampler", 0), (0, 1, "one-shot", 1),
        (1, 2, "one-shot", 3)]
    assert hist.rungs == [0.0, 1.0, 3.0]
    assert hist.events[-1].hypervolume > 0 == hist.events[-2].hypervolume


def test_plan_info_shows_strengths_and_the_teacher_spares_everything(run_dir):
    plans = plan_info(run_dir)
    assert plans.layers == LAYERS
    assert plans.knobs == ["sparsity", "keep_ratio", "rank_ratio", "bits"]  # no 2:4 used
    assert plans.labels == ["sparsity", "channels kept", "rank kept", "bits"]
    assert all(s == 0.0 for row in plans.teacher.strength for s in row)
    two = plans.points[2]  # sparsity 0.75, 4 bits, half the channels
    assert two.strength[0] == [0.75, 0.5, 0.0, 0.75]
    assert two.text[1] == ["0.75", "0.50", "1.00", "4"]
    assert plans.points[3].strength[0][2] == 0.75  # a quarter of the rank kept
    assert plans.points[3].strength[0][3] == 1.0  # 2 bits: the heaviest
    assert plans.column("bits", [0, 2]) == [[0.5, 0.75], [0.5, 0.75]]


def test_plan_info_shows_an_opt_in_knob_once_a_point_uses_it(run_dir):
    info = front_info(run_dir)
    p = info.front[0]
    used = dataclasses.replace(p, plan=_plan(0.5, 4, two_four=True))
    plans = plans_of(info._replace(front=[used, *info.front[1:]]), LAYERS)
    assert plans.knobs[-1] == "two_four" and plans.labels[-1] == "2:4"
    assert plans.points[used.trial].text[0][-1] == "on"


def test_table_has_ratios_test_accuracy_and_the_export_command(run_dir):
    rows = table_info(run_dir)
    by = {r.trial: r for r in rows}
    assert by[2].x_smaller == pytest.approx(8.0) and by[2].x_fewer == pytest.approx(10 / 3)
    assert by[2].test.accuracy == 0.83 and "finetune, 5 epochs" in by[2].test.source
    assert by[0].test is None
    assert by[2].command == f"slimtune export {run_dir} --trial 2 --out student-2.slim"
    # bits per stored weight: 8 x 5,000 bytes / 10,000 weights; an older trial has none
    assert by[2].bits_per_weight == 4.0 and by[0].bits_per_weight is None


def test_export_command_is_quoted_and_never_holds_the_storage_url(tmp_path):
    cmd = export_command(tmp_path / "my runs", 7, shared_storage=True, study_name="a b")
    assert cmd == (f"slimtune export '{tmp_path}/my runs' --trial 7 --out student-7.slim "
                   "--storage URL --study-name 'a b'")


def test_a_model_given_in_python_is_exported_from_python(tmp_path):
    cmd = export_command(tmp_path / "run", 3, python=True)
    assert cmd.startswith(f"slimtune.export('{tmp_path}/run', 3, 'student-3.slim')")
    assert "same" in cmd or "session" in cmd


def test_cards_give_test_accuracy_and_a_card_of_another_run_is_refused(run_dir, tmp_path):
    card = tmp_path / "student.json"
    card.write_text(json.dumps({"trial": 0, "run_dir": str(run_dir), "test_accuracy": 0.81}))
    cards = read_cards([tmp_path / "student.slim"], run_dir)
    assert held_out_accuracies(None, cards)[0].accuracy == 0.81
    assert read_cards([card], run_dir) == cards  # the card itself names it too
    card.write_text(json.dumps({"trial": 0, "run_dir": str(tmp_path), "test_accuracy": 0.8}))
    with pytest.raises(RunDirError, match="not from"):
        read_cards([card], run_dir)
    with pytest.raises(RunDirError, match="no model card"):
        read_cards([tmp_path / "missing.slim"], run_dir)


def _data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="slimtune-data">(.*?)</script>', html,
                  re.S)
    return json.loads(m.group(1))


def test_the_page_is_self_contained_with_every_view(run_dir):
    html = page(report_info(run_dir))
    import plotly.offline

    lib = plotly.offline.get_plotlyjs()
    assert html.count(lib[:60]) == 1 and len(html) > len(lib)  # plotly.js inlined, once
    assert html.count("Plotly.newPlot") == lib.count("Plotly.newPlot") + 1  # report.js
    assert not re.search(r"<script[^>]+src=", html)  # nothing loaded from elsewhere
    assert not re.search(r"<link[^>]+stylesheet", html)
    assert html.count("cdn.plot.ly") == lib.count("cdn.plot.ly")  # only the library's own
    data = _data(html)
    assert [v["id"] for v in data["views"]] == ["fig-size", "fig-macs", "fig-3d",
                                               "fig-history", "fig-plan"]
    table = html[html.index("<table id='front-table'>"):]
    assert "<th>bits / weight</th>" in table and "<td>4.00</td>" in table


def test_the_page_opens_on_the_suggested_export(run_dir):
    info = report_info(run_dir)
    # no front point keeps 95 % of the teacher's 0.9: the most accurate one, trial 0
    assert info.selected == 0 and _data(page(info))["selected"] == 0


def test_budgets_and_axes_with_units_are_drawn(run_dir):
    data = _data(page(report_info(run_dir)))
    size = next(v for v in data["views"] if v["id"] == "fig-size")["figure"]
    assert size["layout"]["xaxis"]["type"] == "log"
    assert "bytes" in size["layout"]["xaxis"]["title"]["text"]
    shapes = size["layout"]["shapes"]
    assert {s.get("x0") for s in shapes if s["type"] == "line"} >= {30_000}
    names = [t["name"] for t in size["data"]]
    assert names == ["over a budget", "Pareto front", "teacher (uncompressed)", "selected"]
    front = size["data"][1]
    assert front["customdata"] == [3, 2, 5, 0] and front["marker"]["line"]["width"] == 1
    macs = next(v for v in data["views"] if v["id"] == "fig-macs")["figure"]
    assert "MACs" in macs["layout"]["xaxis"]["title"]["text"]
    assert not [s for s in macs["layout"]["shapes"] if s.get("x0") == 30_000]  # no size line


def test_points_carry_plan_and_command_for_the_selection_panel(run_dir):
    data = _data(page(report_info(run_dir)))
    p = data["points"]["2"]
    assert p["front"] and p["command"].endswith("--trial 2 --out student-2.slim")
    assert p["plan"][0] == ["0.75", "0.50", "1.00", "4"] and p["test"][0] == 0.83
    assert data["points"]["1"]["infeasible"] and not data["points"]["1"]["front"]
    assert p["history"][0] == 3  # the third job to finish
    assert p["bits_per_weight"] == 4.0 and p["fixed_size_bytes"] == 6_000
    assert data["points"]["0"]["bits_per_weight"] is None


def test_a_hostile_study_cannot_put_markup_into_the_page(tmp_path):
    """Layer names, model and data names come from the study: escaped everywhere."""
    evil = "<img src=x onerror=alert(1)></script><script>alert(2)</script>"
    d = tmp_path / "evil"
    d.mkdir()
    study = create_study(d, optuna.samplers.RandomSampler(seed=0))
    meta = _meta()
    meta["layers"] = [evil]
    meta["config"]["model"] = evil
    study.set_user_attr("slimtune", meta)
    plan = {"version": 1, "layers": {evil: {"sparsity": 0.5, "rank_ratio": 1.0, "bits": 4}},
            "temperature": 4.0, "alpha": 0.5}
    _add(study, 1, 0.8, 9_000, 5_000, plan=plan)
    html = page(report_info(d))
    assert evil not in html and "<img" not in html and "alert(2)</script>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html  # shown, as text
    assert _data(html)["layers"] == [evil]  # the JSON carries it as data


def test_unreadable_plan_values_are_shown_as_unknown(run_dir):
    study = optuna.load_study(study_name="slimtune",
                              storage=f"sqlite:///{run_dir}/study.db")
    plan = _plan()
    plan["layers"]["features.0"]["bits"] = "many"
    _add(study, 7, 0.95, 3_000, 1_000, plan=plan)
    info = report_info(run_dir)
    worst = info.plans.points[6]
    assert worst.text[0] == ["?"] * 4 and worst.strength[0] == [None] * 4
    assert worst.text[1] == ["0.00", "1.00", "1.00", "32"]
    page(info)  # still draws


def test_a_latency_run_gets_a_latency_view_and_a_trial_without_latency_is_left_out(tmp_path):
    d = tmp_path / "lat"
    d.mkdir()
    study = create_study(d, optuna.samplers.RandomSampler(seed=0),
                         metrics=["accuracy", "size_bytes", "flops", "latency_ms"],
                         directions=["maximize", "minimize", "minimize", "minimize"])
    meta = _meta()
    meta["config"]["objectives"] = ["accuracy", "size", "flops", "latency"]
    meta["teacher"]["latency_ms"] = 2.0
    study.set_user_attr("slimtune", meta)
    for i, (acc, lat) in enumerate(((0.8, 0.5), (0.7, 0.3), (0.6, None))):
        t = study.ask()
        attrs = {"val_accuracy": acc, "size_bytes": 9_000 - 1_000 * i, "flops": 5_000 - i,
                 "plan": _plan(), "epochs_trained": 1}
        if lat is not None:
            attrs["latency_ms"] = lat
        for k, v in attrs.items():
            t.set_user_attr(k, v)
        study.tell(t, [acc, attrs["size_bytes"], attrs["flops"], lat or 0.1])
    info = report_info(d)
    assert info.front.objectives == ("accuracy", "size", "flops", "latency")
    data = _data(page(info))
    views = {v["id"]: v for v in data["views"]}
    assert list(views) == ["fig-size", "fig-macs", "fig-3d", "fig-latency", "fig-history",
                           "fig-plan"]
    lat = views["fig-latency"]["figure"]
    front = next(t for t in lat["data"] if t["name"] == "Pareto front")
    assert front["x"] == [0.3, 0.5] and "latency" in lat["layout"]["xaxis"]["title"]["text"]
    assert data["points"]["0"]["latency_ms"] == 0.5
    assert "2" not in data["points"]  # it lacks an objective: no place on the front


def test_a_run_without_a_finished_trial_still_has_a_report(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    study = create_study(d, optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr("slimtune", _meta())
    _add(study, 1, 0.5, 9_000, 5_000, state=optuna.trial.TrialState.FAIL)
    info = report_info(d)
    assert info.front.front == [] and info.selected is None and info.table == []
    data = _data(page(info))
    assert [v["id"] for v in data["views"]] == ["fig-size", "fig-macs", "fig-3d",
                                               "fig-history"]  # no plan to draw
    assert [e.state for e in info.history.events] == ["failed"]


def test_report_cli_writes_the_page_and_refuses_a_non_run(run_dir, tmp_path, capsys):
    out = tmp_path / "r.html"
    with pytest.raises(SystemExit) as exc:
        main(["report", str(run_dir), "--out", str(out)])
    assert exc.value.code == 0 and out.stat().st_size > 3_000_000
    assert "wrote" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["report", str(tmp_path / "nothing")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("slimtune: error:") and "Traceback" not in err


def test_write_report_defaults_to_the_run_directory(run_dir):
    path = write_report(report_info(run_dir))
    assert path == run_dir / "report.html" and path.is_file()


def test_the_study_opens_in_optunas_own_pareto_plot_with_readable_names(run_dir):
    study = optuna.load_study(study_name="slimtune", storage=f"sqlite:///{run_dir}/study.db")
    assert study.metric_names == ["accuracy", "size_bytes", "flops"]
    fig = optuna.visualization.plot_pareto_front(study)
    titles = [fig.layout.scene.xaxis.title.text, fig.layout.scene.yaxis.title.text,
              fig.layout.scene.zaxis.title.text]
    assert titles == ["accuracy", "size_bytes", "flops"]


def test_a_point_with_no_macs_left_has_no_ratio_but_a_page(run_dir):
    study = optuna.load_study(study_name="slimtune", storage=f"sqlite:///{run_dir}/study.db")
    _add(study, 7, 0.1, 100, 0)  # every multiply pruned: "infinitely" fewer MACs
    data = _data(page(report_info(run_dir)))
    assert data["points"]["6"]["x_fewer"] is None and data["points"]["6"]["front"]


def test_history_hypervolume_equals_the_front_of_every_prefix(tmp_path):
    """The history skips recomputing the hypervolume for a job that leaves the front as it
    is (issue 17: a study of thousands of trials); every value must still be the front's
    of the trials finished so far, computed from scratch."""
    import random

    from slimtune.objectives.dominance import nondominated
    from slimtune.search.pareto import FrontPoint, hypervolume

    d = tmp_path / "run"
    d.mkdir()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = create_study(d, optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr("slimtune", _meta())
    rng = random.Random(1)
    points = []
    for minute in range(1, 61):
        acc = round(rng.uniform(0.3, 0.9), 2)  # rounded: equal points occur too
        size, flops = rng.choice([4_000, 8_000, 16_000]), rng.choice([2_000, 5_000, 9_000])
        _add(study, minute, acc, size, flops)
        points.append(FrontPoint(minute - 1, acc, size, flops, {}))
    events = history_info(d).events
    assert len(events) == 60
    for i, e in enumerate(events, start=1):
        front = nondominated(points[:i], lambda p: [p.accuracy, p.size_bytes, p.flops],
                             ["maximize", "minimize", "minimize"])
        assert e.hypervolume == pytest.approx(hypervolume(front, TEACHER)), i
        assert e.hypervolume_log == pytest.approx(hypervolume(front, TEACHER, log=True)), i
