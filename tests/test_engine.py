"""The search engine: samplers, hypervolume, failing trials (trial work made cheap)."""

from __future__ import annotations

import optuna
import pytest

from slimtune.errors import SearchAborted
from slimtune.search import SAMPLERS, SearchConfig
from slimtune.search.engine import search
from slimtune.search.pareto import FrontPoint, hypervolume, pareto_front
from tests.user_code import (  # importable by Ray workers, unlike this file
    cheap_trial,
    nan_teacher_trial,
    smooth_trial,
)

TEACHER = {"size_bytes": 1000, "flops": 100, "accuracy": 0.9}
COMPLETE, FAIL, RUNNING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                           optuna.trial.TrialState.RUNNING)


def _p(acc, size, flops):
    return FrontPoint(trial=0, accuracy=acc, size_bytes=size, flops=flops, plan={})


def test_hypervolume_by_hand():
    assert hypervolume([], TEACHER) == 0.0
    # one point: (0.5, 0.5, 1 - 0.9) -> box 0.5 * 0.5 * 0.9
    assert hypervolume([_p(0.9, 500, 50)], TEACHER) == pytest.approx(0.225)
    # losses (0.5, 0.5, 0.1) and (0.25, 0, 0.5): boxes 0.5*0.5*0.9 and 0.75*1*0.5,
    # overlapping in [0.5, 1] x [0.5, 1] x [0.5, 1] = 0.125
    two = [_p(0.9, 500, 50), _p(0.5, 250, 0)]
    assert hypervolume(two, TEACHER) == pytest.approx(0.225 + 0.375 - 0.125)
    # a dominated point adds nothing; a point outside the reference box adds nothing
    assert hypervolume([*two, _p(0.4, 600, 60), _p(1.0, 2000, 10)], TEACHER) == pytest.approx(
        0.475)


@pytest.fixture(scope="module")
def teacher_run(ray_session, tmp_path_factory):
    """A run directory with its teacher trained once (digits, 2 epochs)."""
    d = tmp_path_factory.mktemp("engine")
    search(SearchConfig(trials=1, teacher_epochs=2, run_dir=d / "seed"), trial_fn=cheap_trial)
    return d


def _copy_teacher(src, dst):
    dst.mkdir(parents=True)
    (dst / "teacher.pt").write_bytes((src / "seed" / "teacher.pt").read_bytes())


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs_by_name_and_the_hypervolume_is_stored(sampler, teacher_run):
    run_dir = teacher_run / sampler
    _copy_teacher(teacher_run, run_dir)
    result = search(SearchConfig(trials=8, teacher_epochs=2, run_dir=run_dir, sampler=sampler,
                                 warm_start=False, seed=3), trial_fn=cheap_trial)
    study = result.run.study
    assert len(study.get_trials(states=[COMPLETE])) == 6, [
        (t.number, t.state.name, t.user_attrs.get("error")) for t in study.trials]
    hv = study.user_attrs["hypervolume"]
    assert hv == pytest.approx(hypervolume(pareto_front(study), result.run.teacher))
    done = sorted(study.get_trials(states=[COMPLETE]), key=lambda t: t.datetime_complete)
    history = [t.user_attrs["hypervolume"] for t in done]  # in the order they finished
    assert history == sorted(history) and history[-1] == pytest.approx(hv) and hv > 0


def test_failing_trials_are_recorded_with_their_message_and_the_others_finish(teacher_run):
    run_dir = teacher_run / "failing"
    _copy_teacher(teacher_run, run_dir)
    result = search(SearchConfig(trials=8, teacher_epochs=2, run_dir=run_dir),
                    trial_fn=cheap_trial)
    study = result.run.study
    failed = study.get_trials(states=[FAIL])
    assert sorted(t.number for t in failed) == [3, 5]
    for t in failed:
        assert t.user_attrs["error"] == f"RuntimeError: layer cannot be handled (trial {t.number})"
    assert len(study.get_trials(states=[COMPLETE])) == 6
    assert result.counts == {**result.counts, "done": 6, "failed": 2}


def test_a_real_trial_whose_loss_turns_nan_is_recorded_failed_and_the_others_finish(
        teacher_run):
    """The real trial function (compress, distil, export, measure) on digits: trial 1's
    teacher has a NaN bias (tests/user_code.py), its student cannot be exported, it raises,
    and the search goes on."""
    run_dir = teacher_run / "nan"
    _copy_teacher(teacher_run, run_dir)
    result = search(SearchConfig(trials=4, epochs=1, teacher_epochs=2, run_dir=run_dir),
                    trial_fn=nan_teacher_trial)
    study = result.run.study
    states = {t.number: t.state for t in study.trials
              if t.state != optuna.trial.TrialState.WAITING}  # warm-start plans not reached
    assert states == {0: COMPLETE, 1: FAIL, 2: COMPLETE, 3: COMPLETE}
    failed = study.trials[1]
    # found before any training: a NaN weight cannot be stored (the artifact refuses it)
    assert failed.user_attrs["error"] == (
        "ArtifactError: the artifact holds non-finite values (NaN or inf) in "
        "`classifier.3.bias`")
    assert failed.user_attrs["plan"]  # what it tried, for the record
    assert result.counts["failed"] == 1 and result.counts["done"] == 3
    for t in study.get_trials(states=[COMPLETE]):  # the others really trained and exported
        assert t.user_attrs["epochs_trained"] == 1
        assert result.run.artifact_path(t.number).stat().st_size == t.user_attrs["size_bytes"]


def test_max_failures_ends_the_search_and_leaves_no_trial_running(teacher_run):
    run_dir = teacher_run / "max-failures"
    _copy_teacher(teacher_run, run_dir)
    with pytest.raises(SearchAborted, match=r"2 trials failed \(--max-failures 2\)"):
        search(SearchConfig(trials=20, teacher_epochs=2, run_dir=run_dir, max_failures=2),
               trial_fn=cheap_trial)
    study = optuna.load_study(study_name="slimtune",
                              storage=f"sqlite:///{run_dir / 'study.db'}")
    assert not study.get_trials(states=[RUNNING])
    assert len(study.trials) < 20


GENERATION = "NSGAIISampler:generation"  # Optuna's system attribute (BaseGASampler)


def test_the_warm_start_is_uniform_then_guided_plans_and_the_first_generation(teacher_run):
    """Uniform plans light to heavy, then the sensitivity-guided plans, enqueued in that
    order; together they are NSGA-II's first generation, and every trial after them is bred
    from it (generation >= 1), none drawn at random."""
    from slimtune.models.zoo import build_model
    from slimtune.search.engine import _distinct
    from slimtune.search.guided import Sensitivity, guided_plans
    from slimtune.spaces import SearchSpace

    run_dir = teacher_run / "warm"
    _copy_teacher(teacher_run, run_dir)
    result = search(SearchConfig(trials=24, teacher_epochs=2, run_dir=run_dir, seed=1),
                    trial_fn=smooth_trial)
    meta = result.run.meta
    space = SearchSpace.from_model(build_model("small_cnn", 10, (1, 8, 8)), (1, 8, 8))
    sens = Sensitivity.from_dict(meta["sensitivity"])
    assert set(sens.accuracy) == set(space.layers) and 0.5 < sens.base_accuracy <= 1.0
    uniform = space.uniform_plans()
    expected = _distinct(space, [(p, "uniform") for p in uniform]
                         + [(p, "guided") for p in guided_plans(sens, space)])
    assert len(expected) > len(uniform)  # some guided plans differ from every uniform one
    assert meta["population"] == len(expected)
    trials = sorted(result.run.study.trials, key=lambda t: t.number)
    assert len(trials) == 24 and all(t.state == COMPLETE for t in trials)
    for t, (plan, phase) in zip(trials, expected, strict=False):
        want = space.params_of(plan)
        assert t.params == pytest.approx(want), t.number
        assert t.user_attrs["phase"] == phase  # what the report colours it by
    assert all("phase" not in t.user_attrs for t in trials[len(expected):])  # the sampler's
    first = [t.system_attrs[GENERATION] for t in trials[:len(expected)]]
    later = [t.system_attrs[GENERATION] for t in trials[len(expected):]]
    assert first == [0] * len(expected) and later and min(later) >= 1


@pytest.mark.parametrize("flags, uniform, guided", [
    (dict(guided=False), True, False), (dict(warm_start=False), False, False)])
def test_no_guided_and_no_warm_start(teacher_run, flags, uniform, guided):
    from slimtune.models.zoo import build_model
    from slimtune.spaces import SearchSpace

    run_dir = teacher_run / ("-".join(flags) or "plain")
    _copy_teacher(teacher_run, run_dir)
    result = search(SearchConfig(trials=3, teacher_epochs=2, run_dir=run_dir, **flags),
                    trial_fn=smooth_trial)
    meta = result.run.meta
    assert ("sensitivity" in meta) == guided
    space = SearchSpace.from_model(build_model("small_cnn", 10, (1, 8, 8)), (1, 8, 8))
    n = len(space.uniform_levels()) if uniform else 0
    assert meta["population"] == (n or None)
    enqueued = [t for t in result.run.study.trials if "fixed_params" in t.system_attrs]
    assert len(enqueued) == n
    if uniform:
        first = sorted(result.run.study.trials, key=lambda t: t.number)[0]
        assert first.params == pytest.approx(space.params_of(space.uniform_plans()[0]))


@pytest.mark.parametrize("cpus, threads", [(2.0, 2), (1.0, 1), (0.5, 1)])
def test_each_trial_pins_its_torch_threads_to_its_cpu_share(teacher_run, cpus, threads):
    """The real trial function records the torch threads and device it ran with."""
    run_dir = teacher_run / f"threads-{cpus}"
    _copy_teacher(teacher_run, run_dir)
    result = search(SearchConfig(trials=2, epochs=0, teacher_epochs=2, run_dir=run_dir,
                                 cpus_per_trial=cpus, warm_start=False))
    done = result.run.study.get_trials(states=[COMPLETE])
    assert len(done) == 2
    assert [(t.user_attrs["threads"], t.user_attrs["device"]) for t in done] == [
        (threads, "cpu")] * 2
