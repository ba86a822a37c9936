"""Constraints (--max-size / --max-flops / --min-accuracy) and Pareto-aware early stopping,
through the real trial function on digits and the real Ray path."""

from __future__ import annotations

import optuna
import pytest

from slimtune.cli import main
from slimtune.errors import ConfigError
from slimtune.search import SearchConfig
from slimtune.search.config import parse_quantity
from slimtune.search.engine import search
from slimtune.search.pareto import pareto_front
from slimtune.search.study import open_run
from slimtune.search.trial import early_stop_margin

COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


@pytest.mark.parametrize("text, what, suffix, value", [
    ("50kB", "--max-size", "B", 50_000), ("1.5MB", "--max-size", "B", 1_500_000),
    ("20KiB", "--max-size", "B", 20_480), ("1200", "--max-size", "B", 1200),
    ("2M", "--max-flops", "", 2_000_000), ("1.2G", "--max-flops", "", 1_200_000_000),
    ("300k", "--max-flops", "", 300_000),
])
def test_budgets_accept_units(text, what, suffix, value):
    assert parse_quantity(text, what, suffix) == value


@pytest.mark.parametrize("text", ["", "abc", "5 parsecs", "-3kB", "0.1"])
def test_bad_budgets_name_the_option(text):
    with pytest.raises(ConfigError, match="--max-size"):
        parse_quantity(text, "--max-size", "B")


def test_over_budget_plans_are_recorded_infeasible_and_never_trained(ray_session, tmp_path,
                                                                      capsys):
    run_dir = tmp_path / "budget"
    with pytest.raises(SystemExit) as exc:
        main(["search", "--run-dir", str(run_dir), "--trials", "14", "--epochs", "1",
              "--teacher-epochs", "3", "--max-size", "20kB", "--max-flops", "300k",
              "--min-accuracy", "0.5", "--seed", "3"])
    assert exc.value.code == 0
    err = " ".join(capsys.readouterr().err.split())  # unwrapped
    assert "over budget: not trained" in err
    # progress (stderr is not a terminal here): a summary every 10 trials with the counts,
    # the front, its hypervolume and the time left
    assert "10/14 trials: running" in err and "pruned" in err and "failed" in err
    assert "front" in err and " s left" in err
    run = open_run(run_dir)
    trials = run.study.get_trials(states=[COMPLETE])
    assert len(trials) == 14
    over = trained = 0
    for t in trials:
        a = t.user_attrs
        assert set(t.constraints) == {"size", "flops", "accuracy"}  # what the samplers read
        # the size budget holds the fixed-width size, an upper bound known before training
        assert a["size_bytes"] <= a["fixed_size_bytes"]
        too_big = a["fixed_size_bytes"] > 20_000 or a["flops"] > 300_000
        assert (t.constraints["size"] > 0) == (a["fixed_size_bytes"] > 20_000)
        assert (t.constraints["flops"] > 0) == (a["flops"] > 300_000)
        assert (t.constraints["accuracy"] > 0) == (a["val_accuracy"] < 0.5)
        artifact = run.artifact_path(t.number)
        if too_big:
            over += 1
            assert a["status"] == "over_budget" and a["epochs_trained"] == 0
            assert a["curve"] == []  # not one fine-tune epoch ran
            assert not artifact.exists()
        else:
            trained += 1
            assert a["status"] == "complete" and a["epochs_trained"] == 1
            assert len(a["curve"]) == 1
            assert artifact.stat().st_size == a["size_bytes"]
    assert over >= 1 and trained >= 1
    front = pareto_front(run.study)
    assert front
    for p in front:  # only feasible trials make the front
        assert p.size_bytes <= 20_000 and p.flops <= 300_000 and p.accuracy >= 0.5


def test_early_stop_margin_shrinks_and_stays_positive():
    margins = [early_stop_margin(e, 6) for e in range(1, 7)]
    assert margins == sorted(margins, reverse=True)
    assert margins[-1] > 0


@pytest.fixture(scope="module")
def es_pair(ray_session, tmp_path_factory):
    """The same random-sampler search with and without early stopping: the random sampler
    draws the same plan for each trial number whatever the results, and each trial's
    fine-tune is seeded by its number, so the two runs can be compared trial by trial.
    (No warm start: its plans always train to the end.)"""
    d = tmp_path_factory.mktemp("es")
    common = dict(trials=18, epochs=4, teacher_epochs=12, sampler="random", seed=5,
                  warm_start=False)
    without = search(SearchConfig(run_dir=d / "without", early_stop=False, **common))
    with_es = search(SearchConfig(run_dir=d / "with", early_stop=True, **common))
    return without, with_es


def test_early_stopping_prunes_dominated_trials_and_never_a_front_one(es_pair):
    without, with_es = es_pair
    full = {t.number: t for t in without.run.study.get_trials(states=[COMPLETE])}
    assert len(full) == 18
    es_trials = {t.number: t for t in with_es.run.study.trials}
    pruned = [t for t in es_trials.values() if t.state == PRUNED]
    assert pruned, "no trial was stopped early: the check below would be empty"
    front_without = {p.trial for p in without.front}
    for t in pruned:
        a = t.user_attrs
        e = a["epochs_trained"]
        assert 1 <= e < 4
        # the same plan and seed: the same accuracy curve up to the stop
        assert a["curve"] == full[t.number].user_attrs["curve"][:e]
        assert a["val_accuracy"] == a["curve"][-1]
        # stopped by a finished trial no larger, with no more FLOPs, better by the margin
        dom = es_trials[a["dominated_by"]]
        assert dom.state == COMPLETE
        d = dom.user_attrs
        assert d["size_bytes"] <= a["size_bytes"] and d["flops"] <= a["flops"]
        assert d["val_accuracy"] > a["val_accuracy"] + early_stop_margin(e, 4)
        # never a trial that the run without early stopping put on its front
        assert t.number not in front_without
    assert not {p.trial for p in with_es.front} & {t.number for t in pruned}
    saved = sum(4 - t.user_attrs["epochs_trained"] for t in pruned)
    assert with_es.counts["epochs_saved"] == saved > 0
    assert without.counts["pruned"] == 0 and without.counts["epochs_saved"] == 0
