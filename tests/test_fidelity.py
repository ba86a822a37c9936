"""The multi-fidelity scheduler (search/fidelity.py), without Ray, and rung 0's BatchNorm
re-estimation (compress/recalibrate.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from slimtune.compress.recalibrate import recalibrate_batchnorm
from slimtune.data.split import TensorSplit
from slimtune.errors import ConfigError
from slimtune.search.fidelity import (
    MOASHA,
    Job,
    Result,
    contributions,
    crowding,
    nondominated_fronts,
    ranked,
)

MIN2 = ("minimize", "minimize")


def test_nondominated_fronts_and_crowding_on_a_hand_made_set():
    #       a        b        c        d (dominated by b)   e (dominated by d)
    pts = [(1, 9), (3, 3), (9, 1), (4, 4), (5, 5)]
    assert nondominated_fronts(pts, MIN2) == [[0, 1, 2], [3], [4]]
    dist = crowding(pts, [0, 1, 2])
    assert dist[0] == dist[2] == math.inf and dist[1] == pytest.approx(2.0)
    assert ranked(pts, MIN2) == [0, 2, 1, 3, 4]  # extremes first, then b; then d, e


def _costs(size, flops=1.0):
    return (size, flops)


def test_a_plan_is_promoted_only_from_the_top_third_of_its_rung():
    s = MOASHA(rungs=(0, 1, 3), eta=3)
    for plan, (size, acc) in enumerate([(10, 0.5), (10, 0.9), (10, 0.7)]):
        assert s.add(plan) == Job(plan, 0, -1)
        if plan < 2:
            s.report(plan, 0, _costs(size), acc)
            assert s.next_job() is None  # 2 results: a third of them is nobody
    s.report(2, 0, _costs(10), 0.7)
    # same costs: accuracy decides; plan 1 goes up a rung, continuing from its weights
    assert s.next_job() == Job(1, 1, 0)
    assert s.next_job() is None  # the quota (1 of 3) is used
    s.report(1, 1, _costs(10), 0.92)
    assert s.counts() == {"reached": [3, 1, 0], "promoted": [1, 0, 0]}


def test_promotion_ranks_costs_and_accuracy_together():
    s = MOASHA(rungs=(0, 2), eta=2)
    # plans 0, 1 and 3 are each on the front (cheaper or more accurate than the others);
    # plan 2 costs as much as plan 0 and is less accurate: it never goes up
    results = {0: ((100, 100), 0.95), 1: ((10, 10), 0.6), 2: ((100, 100), 0.5),
               3: ((50, 50), 0.7)}
    for plan, (costs, acc) in results.items():
        s.add(plan)
        s.report(plan, 0, costs, acc)
    up = {s.next_job().plan, s.next_job().plan}  # quota 4 // 2
    assert s.next_job() is None
    assert 2 not in up and up <= {0, 1, 3}


def test_the_highest_rung_is_served_first_and_nothing_waits():
    s = MOASHA(rungs=(0, 1, 2), eta=2)
    for plan in range(4):
        s.add(plan)
        s.report(plan, 0, _costs(10 - plan), 0.5 + plan / 10)
    first = [s.next_job(), s.next_job()]
    assert all(j.rung == 1 for j in first)
    for j in first:
        s.report(j.plan, 1, _costs(10 - j.plan), 0.8 + j.plan / 100)
    job = s.next_job()
    assert job.rung == 2 and job.start == 1  # rung 1's promotion before anything at rung 0
    # with every due promotion handed out, a free worker starts a new plan: no waiting
    assert s.next_job() is None


def test_only_top_rung_results_can_make_the_front():
    s = MOASHA(rungs=(0, 1), eta=2)
    for plan in range(2):
        s.add(plan)
        s.report(plan, 0, _costs(1), 0.99)
    assert s.top_results() == []
    job = s.next_job()
    s.report(job.plan, 1, _costs(1), 0.9)
    assert [r.rung for r in s.top_results()] == [1]


def test_resume_mid_rung_rebuilds_the_same_state_and_retries_interrupted_promotions():
    live = MOASHA(rungs=(0, 1, 3), eta=3)
    records = []
    for plan in range(6):
        live.add(plan)
        live.report(plan, 0, _costs(plan + 1), 0.4 + 0.05 * plan)
        records.append(Result(plan, 0, _costs(plan + 1), 0.4 + 0.05 * plan))
    a = live.next_job()
    live.report(a.plan, 1, _costs(a.plan + 1), 0.9)
    records.append(Result(a.plan, 1, _costs(a.plan + 1), 0.9))
    b = live.next_job()  # running when the search is killed: no result stored
    assert b is not None and b.rung == 1
    resumed = MOASHA.from_records((0, 1, 3), records, eta=3)
    assert resumed.promoted[0] == {a.plan}  # b's promotion is not recorded: it runs again
    assert resumed.next_job() == b
    assert resumed.results == live.results


def test_bad_ladders_are_refused():
    with pytest.raises(ConfigError, match="rising"):
        MOASHA(rungs=(0, 3, 1))
    with pytest.raises(ConfigError, match="eta"):
        MOASHA(rungs=(0, 1), eta=1)
    with pytest.raises(ConfigError, match="`promotion` must be one of hypervolume, moasha"):
        MOASHA(rungs=(0, 1), promotion="random")
    with pytest.raises(ConfigError, match="needs `reference`: one positive cost per cost axis"):
        MOASHA(rungs=(0, 1), promotion="hypervolume", reference=(100.0,))


def test_hypervolume_contributions_by_hand():
    # losses in the unit box (reference point 1): a owns [0, 0.25] x [0.75, 1], b owns
    # [0.25, 0.5] x [0.5, 0.75], c owns [0.5, 1] x [0.25, 0.5]
    losses = [(0.0, 0.75), (0.25, 0.5), (0.5, 0.25)]
    c = contributions(losses, [0, 1, 2])
    assert c[0] == pytest.approx(0.25 * 0.25) and c[1] == pytest.approx(0.25 * 0.25)
    assert c[2] == pytest.approx(0.5 * 0.25)
    # a point outside the box adds nothing; moving b towards a shrinks its share
    assert contributions([(0.0, 0.75), (1.0, 0.0)], [0, 1])[1] == 0.0
    c = contributions([(0.0, 0.75), (0.05, 0.7), (0.5, 0.25)], [0, 1, 2])
    assert c[1] == pytest.approx(0.45 * 0.05)


def test_promotion_by_hypervolume_gives_no_free_pass_to_an_inaccurate_extreme():
    # four plans on one front at rung 0 (costs: bytes, MACs; the teacher 1000 and 1000):
    # the smallest is 1000x smaller but at chance accuracy; two moderate, accurate plans
    # and a big, most accurate one
    results = {0: ((1.0, 1.0), 0.10), 1: ((30.0, 30.0), 0.80), 2: ((100.0, 100.0), 0.84),
               3: ((500.0, 500.0), 0.86)}
    points = [(*c, a) for c, a in results.values()]
    # crowding (MO-ASHA as published) ranks both extremes first, whatever their accuracy
    assert ranked(points, ("minimize", "minimize", "maximize"))[:2] == [0, 3]
    chosen = {}
    for promotion in ("moasha", "hypervolume"):
        s = MOASHA(rungs=(0, 1), eta=4, promotion=promotion,
                   reference=(1000.0, 1000.0) if promotion == "hypervolume" else None)
        for plan, (costs, acc) in results.items():
            s.add(plan)
            s.report(plan, 0, costs, acc)
        chosen[promotion] = s.next_job().plan  # a quota of one
    assert chosen["moasha"] == 0
    assert chosen["hypervolume"] == 1  # the most volume only it dominates (log costs)


def test_batchnorm_re_estimation_uses_the_data_and_leaves_the_weights():
    torch.manual_seed(0)
    x = torch.randn(256, 4) * 3 + 5
    model = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 2))
    bn = model[0]
    bn.running_mean.fill_(-100.0)
    bn.running_var.fill_(1e-3)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k
               and "num_batches" not in k}
    split = TensorSplit(x, torch.zeros(256, dtype=torch.long))
    recalibrate_batchnorm(model, split, batches=4, batch_size=64,
                          generator=torch.Generator().manual_seed(0))
    # 4 batches of 64 cover all 256 examples once: the cumulative mean is theirs
    torch.testing.assert_close(bn.running_mean, x.mean(0), rtol=1e-4, atol=1e-4)
    assert not model.training and bn.momentum == 0.1
    for k, v in weights.items():
        assert torch.equal(model.state_dict()[k], v)
    plain = nn.Linear(4, 2)
    assert recalibrate_batchnorm(plain, split) is plain


def test_the_log_space_hypervolume_by_hand():
    from slimtune.search.pareto import FrontPoint, hypervolume

    teacher = {"accuracy": 0.95, "size_bytes": 1000, "flops": 1000}
    p = FrontPoint(trial=0, accuracy=0.9, size_bytes=10, flops=100, plan={})
    # size: 100x smaller -> 2 of 3 decades -> loss 1/3; FLOPs 10x -> loss 2/3; acc loss 0.1
    assert hypervolume([p], teacher, log=True) == pytest.approx((2 / 3) * (1 / 3) * 0.9)
    assert hypervolume([p], teacher) == pytest.approx(0.99 * 0.9 * 0.9)
    beyond = FrontPoint(trial=1, accuracy=0.9, size_bytes=0.5, flops=100, plan={})
    assert hypervolume([beyond], teacher, log=True) == pytest.approx(1 * (1 / 3) * 0.9)


def test_a_promotion_the_budget_cannot_pay_for_is_not_given():
    s = MOASHA(rungs=(0, 1, 3), eta=2)
    for plan, acc in enumerate([0.5, 0.9, 0.7, 0.8]):
        s.add(plan)
        s.report(plan, 0, _costs(10 + plan), acc)
    s.add(9)
    s.report(9, 0, _costs(1), 0.1)
    # rung 0 -> 1 is unaffordable: nothing is promoted and nothing is marked promoted
    assert s.next_job(affordable=lambda rung: rung != 0) is None
    assert s.counts()["promoted"] == [0, 0, 0]
    job = s.next_job(affordable=lambda rung: True)
    assert job is not None and job.rung == 1 and job.start == 0


def test_by_hypervolume_at_most_a_third_of_a_rung_goes_up_however_its_top_changes():
    # every new plan beats all before it (same costs): ASHA's rule promotes each one that
    # is ever in the top third; the quota holds the total to floor(n / 3)
    went_up = {}
    for promotion in ("moasha", "hypervolume"):
        s = MOASHA(rungs=(0, 1), eta=3, promotion=promotion,
                   reference=(1000.0, 1000.0) if promotion == "hypervolume" else None)
        for plan in range(9):
            s.add(plan)
            s.report(plan, 0, (10.0, 10.0), 0.5 + 0.01 * plan)
            while (job := s.next_job()) is not None:
                s.report(job.plan, 1, (10.0, 10.0), 0.9)
        went_up[promotion] = s.counts()["promoted"][0]
    assert went_up == {"moasha": 7, "hypervolume": 3}
