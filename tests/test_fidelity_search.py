"""The multi-fidelity search end to end (search/fidelity_loop.py, search/rung.py): on Ray,
on digits, with a fast plan-dependent job (tests/user_code.py: rung_job) and with the
real one."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from optuna.trial import TrialState

from slimtune.errors import ConfigError
from slimtune.export.artifact import load
from slimtune.models.zoo import build_model
from slimtune.objectives.accuracy import accuracy
from slimtune.search import SearchConfig
from slimtune.search.engine import resume, search
from slimtune.search.events import SearchEvents
from slimtune.search.fidelity_loop import epochs_spent, screen_name
from slimtune.search.pareto import pareto_front
from slimtune.search.rung import state_path
from slimtune.spaces import SearchSpace
from tests.user_code import RUNG0_ACCURACY, cheap_trial, rung_job


@pytest.fixture(scope="module")
def teacher_dir(ray_session, tmp_path_factory):
    """A run directory with its teacher trained once (digits, 2 epochs)."""
    d = tmp_path_factory.mktemp("fidelity")
    search(SearchConfig(trials=1, teacher_epochs=2, run_dir=d / "seed"), trial_fn=cheap_trial)
    return d


def _run_dir(teacher_dir, name):
    d = teacher_dir / name
    d.mkdir()
    (d / "teacher.pt").write_bytes((teacher_dir / "seed" / "teacher.pt").read_bytes())
    return d


def _screen(run_dir):
    return optuna.load_study(study_name=screen_name("slimtune"),
                             storage=f"sqlite:///{run_dir}/study.db")


def _config(run_dir, **kw):
    base = dict(run_dir=run_dir, teacher_epochs=2, epochs=3, budget_epochs=15, guided=False,
                seed=1)
    return SearchConfig(**{**base, **kw})


def test_rung_0_never_reaches_the_front_and_both_studies_are_plain_optuna(teacher_dir):
    d = _run_dir(teacher_dir, "front")
    result = search(_config(d), job_fn=rung_job)
    c = result.counts
    main, screen = optuna.load_study(study_name="slimtune", storage=f"sqlite:///{d}/study.db"), \
        _screen(d)
    assert c["failed"] == 0 and c["fully_trained"] >= 2
    # the screening study: every plan's rung-0 result, valued (accuracy, size, FLOPs)
    first = screen.get_trials(states=[TrialState.COMPLETE])
    assert len(first) == c["reached"][0] == c["screened"] > c["fully_trained"]
    assert {t.user_attrs["rung"] for t in first} == {0}
    assert all(t.values[0] == RUNG0_ACCURACY for t in first)
    # the main study: fine-tuned jobs only; the top rung COMPLETE, rung 1 PRUNED
    by_state = {s: [t for t in main.trials if t.state == s] for s in TrialState}
    assert {t.user_attrs["rung"] for t in by_state[TrialState.COMPLETE]} == {2}
    assert {t.user_attrs["rung"] for t in by_state[TrialState.PRUNED]} == {1}
    assert len(by_state[TrialState.COMPLETE]) == c["fully_trained"]
    assert not by_state[TrialState.RUNNING] and not by_state[TrialState.WAITING]
    # a rung-0 accuracy (higher than any fine-tuned one) is never on the front
    front = pareto_front(main)
    assert front and all(p.accuracy < RUNG0_ACCURACY for p in front)
    assert {p.trial for p in front} <= {t.number for t in by_state[TrialState.COMPLETE]}
    assert [p.trial for p in result.front] == [p.trial for p in front]
    # each fully trained plan shows its accuracy at every rung, and its parameters
    for t in by_state[TrialState.COMPLETE]:
        by_rung = t.user_attrs["accuracy_by_rung"]
        assert set(by_rung) == {"0", "1", "2"} and by_rung["0"] == RUNG0_ACCURACY
        assert by_rung["1"] < by_rung["2"] == t.values[0]
        assert t.params == screen.trials[t.user_attrs["plan_id"]].params
    # the budget: no job began that could not reach the top within it
    assert c["epochs_spent"] == pytest.approx(epochs_spent(main, screen))
    assert c["epochs_spent"] <= 15 and c["epochs_spent"] > 15 - 3


def test_a_promotion_continues_from_the_weights_its_rung_saved(teacher_dir):
    d = _run_dir(teacher_dir, "weights")
    search(_config(d, budget_epochs=9), job_fn=rung_job)  # rung_job raises on a wrong file
    main = optuna.load_study(study_name="slimtune", storage=f"sqlite:///{d}/study.db")
    assert not [t for t in main.trials if t.state == TrialState.FAIL]
    done = [t.user_attrs["plan_id"] for t in main.trials if t.state == TrialState.COMPLETE]
    waiting = [t.user_attrs["plan_id"] for t in main.trials if t.state == TrialState.PRUNED
               and t.user_attrs["plan_id"] not in done]
    assert done
    for plan in done:  # fully trained: its rung weights are no longer kept
        assert not state_path(d, plan, 1).exists()
    for plan in waiting:  # may still be promoted by a resumed search: saved at rung 1
        assert state_path(d, plan, 1).read_text().endswith(f" {1 / 3:g}")


def test_resume_mid_rung_finishes_the_budget_without_repeating_a_job(teacher_dir):
    d = _run_dir(teacher_dir, "resume")
    seen = []

    def stop_after(record, counts):
        seen.append(record.user_attrs.get("rung"))
        if len(seen) == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search(_config(d, budget_epochs=18), SearchEvents(trial_done=stop_after),
               job_fn=rung_job)
    main, screen = (optuna.load_study(study_name=n, storage=f"sqlite:///{d}/study.db")
                    for n in ("slimtune", screen_name("slimtune")))
    for study in (main, screen):  # nothing is left running
        assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    mid = {t.user_attrs["plan_id"] for t in main.trials if t.state == TrialState.PRUNED}
    done_before = {t.user_attrs["plan_id"] for t in main.trials
                   if t.state == TrialState.COMPLETE}
    spent_before = epochs_spent(main, screen)
    assert mid - done_before, "the interrupt must leave a plan between rungs"
    assert spent_before < 18 - 3

    result = resume(d, job_fn=rung_job)
    main, screen = (optuna.load_study(study_name=n, storage=f"sqlite:///{d}/study.db")
                    for n in ("slimtune", screen_name("slimtune")))
    jobs = [(t.user_attrs["plan_id"], t.user_attrs["rung"]) for t in main.trials
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(jobs) == len(set(jobs)), "a finished job ran twice"
    assert not [t for t in main.trials if t.state == TrialState.FAIL]
    assert epochs_spent(main, screen) <= 18 and epochs_spent(main, screen) > spent_before
    assert result.counts["fully_trained"] > len(done_before)
    # the scheduler was rebuilt from every stored result, those before the interrupt too
    assert result.counts["reached"][0] == len(screen.get_trials(states=[TrialState.COMPLETE]))
    assert result.counts["reached"][1] == len({p for p, r in jobs if r == 1})


def test_a_resumed_search_may_get_a_new_epoch_budget_but_keeps_its_ladder(teacher_dir):
    d = _run_dir(teacher_dir, "budget")
    search(_config(d, budget_epochs=6), job_fn=rung_job)
    more = resume(d, job_fn=rung_job, budget_epochs=12)
    assert 6 < more.counts["epochs_spent"] <= 12
    with pytest.raises(ConfigError, match="rungs"):
        resume(d, job_fn=rung_job, rungs=(0, 3))


def test_the_real_jobs_on_digits_export_what_they_measured(teacher_dir):
    d = _run_dir(teacher_dir, "real")
    result = search(_config(d, epochs=2, budget_epochs=6, warm_start=False, sampler="random"))
    c = result.counts
    assert c["failed"] == 0 and c["fully_trained"] >= 1, c
    main = result.run.study
    from slimtune.data.datasets import load_dataset

    data = load_dataset("digits")
    for t in main.get_trials(states=[TrialState.COMPLETE]):
        model = load(result.run.artifact_path(t.number))
        assert accuracy(model, data.val) == pytest.approx(t.user_attrs["val_accuracy"])
        assert len(result.run.artifact_path(t.number).read_bytes()) == t.user_attrs["size_bytes"]
        assert t.user_attrs["epochs"] == 2 and set(t.user_attrs["accuracy_by_rung"]) == {
            "0", "1", "2"}
    for t in main.get_trials(states=[TrialState.PRUNED]):
        assert t.user_attrs["epochs_trained"] == pytest.approx(2 / 9)


def test_fidelity_off_with_an_epoch_budget_runs_as_many_trials_as_it_pays_for(teacher_dir):
    d = _run_dir(teacher_dir, "off")
    result = search(_config(d, fidelity=False, budget_epochs=10, warm_start=False),
                    trial_fn=cheap_trial)
    assert result.counts["budget"] == 3  # 10 epochs / 3 per trial
    assert len(result.run.study.trials) == 3
    assert not (d / "study.db").read_bytes().count(screen_name("slimtune").encode())


@pytest.mark.parametrize("kw, rule", [
    (dict(fidelity=True), "needs `--budget-epochs"),
    (dict(budget_epochs=0), "`--budget-epochs` must be greater than 0"),
    (dict(budget_epochs=9, rungs=(0, 1, 2)), "the last equal to --epochs 3"),
    (dict(budget_epochs=9, rungs=(0, 2, 1, 3)), "rising"),
    (dict(budget_epochs=9, eta=1), "`--eta` must be at least 2"),
    (dict(budget_epochs=9, promotion="best"),
     "`--promotion` must be one of hypervolume, moasha, but got 'best'"),
    (dict(budget_epochs=9, epochs=0), "`--epochs` of at least 1"),
    (dict(budget_epochs=9, storage="postgresql+psycopg://u:secret@h/db"), "--no-fidelity"),
])
def test_the_fidelity_settings_are_checked_up_front(kw, rule):
    with pytest.raises(ConfigError, match=rule.replace("(", r"\(").replace("[", r"\[")) as e:
        SearchConfig(**{"epochs": 3, **kw})
    assert "secret" not in str(e.value)


def test_the_warm_start_screens_the_one_shot_allocators_plans(teacher_dir):
    from slimtune.search.allocate import spread_plans
    from slimtune.search.guided import Sensitivity
    from slimtune.search.warm_start import SCREENED_ONE_SHOT

    d = _run_dir(teacher_dir, "oneshot")
    config = _config(d, guided=True, budget_epochs=3)
    result = search(config, job_fn=rung_job)
    meta = result.run.meta
    space = SearchSpace.from_model(build_model("small_cnn", 10, (1, 8, 8)), (1, 8, 8),
                                   config.pruning)
    plans = spread_plans(Sensitivity.from_dict(meta["sensitivity"]), space, SCREENED_ONE_SHOT)
    assert len(plans) > 6  # more than the guided plans alone
    # the warm start, screened first (a plan not screened yet holds its parameters as
    # Optuna's enqueued "fixed_params")
    enqueued = [t.params or t.system_attrs["fixed_params"] for t in _screen(d).trials]
    assert meta["population"] == len(enqueued)  # no plan of the sampler's (3 epochs)
    for plan in plans:
        assert space.params_of(plan) in enqueued


def test_the_ladder_defaults_to_a_ninth_of_the_fine_tune_and_is_stored():
    c = SearchConfig(epochs=3, budget_epochs=72)
    assert c.fidelity is True and c.rungs == (0.0, 1 / 3, 3.0) and c.eta == 3
    assert c.to_dict()["rungs"] == [0.0, 1 / 3, 3.0]
    off = SearchConfig(epochs=3, budget_epochs=72, fidelity=False)
    assert off.fidelity is False and off.rungs is None
    assert SearchConfig().fidelity is False  # no budget: today's search


def test_two_halves_of_the_schedule_follow_one_cosine():
    from slimtune.compress.distill import DistillConfig, distill
    from slimtune.data.split import TensorSplit

    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    teacher = torch.nn.Linear(4, 3)
    cfg = DistillConfig(epochs=2, lr=0.1, batch_size=16)  # 8 steps in all
    lrs = []  # the learning rate in force at each step
    orig = torch.optim.Adam.step

    def spy_step(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    torch.optim.Adam.step = spy_step
    try:
        student = torch.nn.Linear(4, 3)
        distill(student, teacher, TensorSplit(x, y), cfg, steps=(0, 3),
                generator=torch.Generator().manual_seed(0))
        distill(student, teacher, TensorSplit(x, y), cfg, steps=(3, 8),
                generator=torch.Generator().manual_seed(0))
    finally:
        torch.optim.Adam.step = orig
    want = [0.1 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert lrs == pytest.approx(want)
    with pytest.raises(ConfigError, match="steps"):
        distill(student, teacher, TensorSplit(x, y), cfg, steps=(3, 9))


def test_the_cli_runs_it_and_says_what_it_screened_promoted_and_spent(teacher_dir, capsys):
    from slimtune.cli import main

    d = _run_dir(teacher_dir, "cli")
    with pytest.raises(SystemExit) as exc:
        main(["search", "--run-dir", str(d), "--epochs", "1", "--budget-epochs", "2",
              "--teacher-epochs", "2", "--no-guided", "--seed", "1"])
    err = " ".join(capsys.readouterr().err.split())
    assert exc.value.code in (0, None), err
    assert "multi-fidelity search: 2 fine-tune epochs" in err
    summary = err.split("search finished in")[1]
    assert "plans screened, promoted 0->1:" in summary and "1->2:" in summary
    assert "fully fine-tuned" in summary and "of 2 fine-tune epochs spent" in summary
    main_study = optuna.load_study(study_name="slimtune", storage=f"sqlite:///{d}/study.db")
    done = main_study.get_trials(states=[TrialState.COMPLETE])
    assert f"{len(done)} fully fine-tuned" in summary
    assert f"-> trial {done[0].number}" in err
