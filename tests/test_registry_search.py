"""The registry's proofs in a real search: the opt-in 2:4 knob searched (`--knob two_four`)
and the stored-weight count as an objective (`--objectives accuracy,size,weights`)."""

from __future__ import annotations

import json

import optuna
import pytest

import slimtune
from slimtune.cli import main
from slimtune.knobs.two_four import applies
from slimtune.search import SearchConfig, search
from slimtune.search.pareto import hypervolume, pareto_front
from slimtune.spaces import CompressionPlan


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    config = SearchConfig(trials=6, epochs=1, teacher_epochs=3, seed=1, sampler="random",
                          warm_start=False, knobs=("two_four",),
                          objectives=("accuracy", "size", "weights"),
                          run_dir=tmp_path_factory.mktemp("run"))
    return search(config)


def _complete(run):
    return [t for t in run.run.study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def test_two_four_is_searched_and_its_trials_export_the_pattern(run, tmp_path):
    layers = run.run.meta["layers"]
    trials = _complete(run)
    assert trials
    for t in trials:
        assert {f"{n}.two_four" for n in layers} <= set(t.params)
    with_24 = [t for t in trials if any(t.params[f"{n}.two_four"] for n in layers)]
    assert with_24  # 6 random plans x 5 layers: some layer draws it
    t = with_24[0]
    path = run.run.artifact_path(t.number)
    assert path.stat().st_size == t.user_attrs["size_bytes"]
    model = slimtune.load(path)
    plan = CompressionPlan.from_dict(t.user_attrs["plan"])
    checked = 0
    for name in layers:
        lp = plan.layer(name)
        if not lp.two_four:
            continue
        for mname, module in model.named_modules():  # the layer or its factorized halves
            if (mname == name or mname.startswith(name + ".")) and hasattr(module, "weight") \
                    and module.weight.dim() > 1 and applies(tuple(module.weight.shape)):
                groups = (module.weight.reshape(module.weight.shape[0], -1, 4) != 0).sum(-1)
                assert (groups <= 2).all()
                checked += 1
    assert checked
    card = slimtune.export(run.run.dir, t.number, tmp_path / "m.slim")
    assert card["size_bytes"] == t.user_attrs["size_bytes"]
    assert any(lp.get("two_four") for lp in card["plan"]["layers"].values())


def test_stored_weights_is_an_objective_of_the_study_the_front_and_the_hypervolume(
        run, capsys):
    study = run.run.study
    assert study.metric_names == ["accuracy", "size_bytes", "stored_weights"]
    teacher = run.run.teacher
    assert teacher["stored_weights"] > 0
    for t in _complete(run):
        assert t.values[2] == t.user_attrs["stored_weights"] <= teacher["stored_weights"]
    front = pareto_front(study)
    assert front and all("stored_weights" in p.extra for p in front)
    objectives = ("accuracy", "size", "weights")
    assert study.user_attrs["hypervolume"] == pytest.approx(
        hypervolume(front, teacher, objectives))
    # the hypervolume is over the study's own axes: not the default (FLOPs) ones
    assert hypervolume(front, teacher, objectives) != pytest.approx(
        hypervolume(front, teacher))
    with pytest.raises(SystemExit) as exc:
        main(["front", str(run.run.dir), "--json"])
    assert exc.value.code == 0
    doc = json.loads(capsys.readouterr().out)
    assert all("stored_weights" in p for p in doc["front"])
    # the suggested export point comes from the library, the same as slimtune.front's
    assert doc["suggested"] == slimtune.front(run.run.dir)["suggested"]
    assert doc["suggested"]["trial"] in [p["trial"] for p in doc["front"]]
