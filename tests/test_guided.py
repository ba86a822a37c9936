"""Sensitivity-guided plans (search/guided.py): the one-shot probes, the cost model, the
greedy allocation and the plans it yields."""

from __future__ import annotations

import math

import pytest
import torch

from slimtune.compress.apply import apply
from slimtune.objectives.accuracy import accuracy
from slimtune.search.guided import (
    LADDERS,
    PROBES,
    Sensitivity,
    greedy_path,
    guided_plans,
    probe_layers,
)
from slimtune.spaces import CompressionPlan, LayerPlan, SearchSpace
from tests.tiny_models import ConvNet


def _acc(base, sparsity=(0, 0), keep=(0, 0), bits=(0, 0)):
    """One-shot accuracies from drops at the two probe levels of each knob."""
    out = {"sparsity": {repr(p): base - d for p, d in zip(PROBES["sparsity"], sparsity,
                                                            strict=True)},
           "bits": {repr(p): base - d for p, d in zip(PROBES["bits"], bits, strict=True)}}
    if keep is not None:
        out["keep_ratio"] = {repr(p): base - d for p, d in zip(PROBES["keep_ratio"], keep,
                                                               strict=True)}
    return out


def test_drop_is_zero_at_the_lightest_level_measured_at_probes_and_linear_between():
    sens = Sensitivity(0.9, {"a": _acc(0.9, sparsity=(0.05, 0.4), keep=(0.1, 0.6),
                                       bits=(0.02, 0.18))}, {"a": 1.0}, {"a": 1.0})
    assert sens.drop("a", "sparsity", 0.0) == 0.0
    assert sens.drop("a", "sparsity", 0.5) == pytest.approx(0.05)
    assert sens.drop("a", "sparsity", 0.75) == pytest.approx(0.05 + 0.25 / 0.4 * 0.35)
    assert sens.drop("a", "sparsity", 0.9) == pytest.approx(0.4)
    assert sens.drop("a", "bits", 8) == 0.0
    assert sens.drop("a", "bits", 6) == pytest.approx(0.01)  # half way from 8 to 4
    assert sens.drop("a", "bits", 3) == pytest.approx(0.02 + 0.5 * 0.16)
    assert sens.drop("a", "keep_ratio", 0.5) == pytest.approx(0.1 + 0.25 / 0.4 * 0.5)
    # a probe that measured better than the teacher (noise) counts as no loss
    noisy = Sensitivity(0.9, {"a": _acc(0.9, sparsity=(-0.01, 0.2))}, {"a": 1.0}, {"a": 1.0})
    assert noisy.drop("a", "sparsity", 0.5) == 0.0


def test_predicted_costs_by_hand():
    # layer a: 60 % of the size, 70 % of the MACs; b: 30 %, 20 %. Keeping channels of a
    # shrinks a and b (b reads a's outputs): 35 % kept leaves 35 % of each.
    sens = Sensitivity(0.9, {"a": _acc(0.9), "b": _acc(0.9, keep=None)},
                       size_share={"a": 0.6, "b": 0.3}, macs_share={"a": 0.7, "b": 0.2},
                       shrink={"a": {"a": 0.35, "b": 0.35}})
    # a: sparsity 0.75, keep 0.5, 4 bits; b: 2 bits
    state = {"a": {"sparsity": 2, "keep_ratio": 2, "bits": 2}, "b": {"sparsity": 0, "bits": 4}}
    size, macs, drop = sens.predict(state)
    index_a = min(1.0, 0.25 * (math.log2(4) + 2))  # bits per weight of its sparse index
    assert size == pytest.approx(0.1 + 0.6 * 0.5 * (0.25 * 4 + index_a) / 32
                                 + 0.3 * 0.5 * 2 / 32)
    assert macs == pytest.approx(0.1 + 0.7 * 0.5 * 0.25 + 0.2 * 0.5)
    assert drop == 0.0  # no probe lost accuracy
    assert sens.predict({"a": {"sparsity": 0, "keep_ratio": 0, "bits": 0},
                         "b": {"sparsity": 0, "bits": 0}})[:2] == pytest.approx(
        (0.1 + 0.9 * 8 / 32, 1.0))


def _two_layer_space_and_sensitivity():
    """`big`: 80 % of size and MACs, loses nothing; `small` (the output layer): 10 %,
    loses a lot."""
    space = SearchSpace(layers=("big", "small"), fixed_channels=("small",))
    sens = Sensitivity(0.9, {"big": _acc(0.9),
                             "small": _acc(0.9, sparsity=(0.3, 0.6), keep=None,
                                           bits=(0.2, 0.5))},
                       size_share={"big": 0.8, "small": 0.1},
                       macs_share={"big": 0.8, "small": 0.1},
                       shrink={"big": {"big": 0.35, "small": 0.35}})
    return space, sens


@pytest.mark.parametrize("weight", [0.25, 0.75])
def test_greedy_compresses_the_cheap_to_compress_layer_first_and_ends_fully_compressed(weight):
    space, sens = _two_layer_space_and_sensitivity()
    path = greedy_path(sens, space, weight)
    moves = sum(len(LADDERS[k]) - 1 for k in ("sparsity", "keep_ratio", "bits")) \
        + sum(len(LADDERS[k]) - 1 for k in ("sparsity", "bits"))
    assert len(path) == 1 + moves  # one knob one level heavier per step, to the end
    # `big`'s moves are free in accuracy: its sparsity and channel moves (which save FLOPs
    # and size) all come before any move on `small`; when size weighs most, its bit moves
    # too (when FLOPs weigh most, its last bit moves save so little that one move on `small`
    # may come first)
    first = len(LADDERS["sparsity"]) - 1 + len(LADDERS["keep_ratio"]) - 1
    if weight > 0.5:
        first += len(LADDERS["bits"]) - 1
    assert all(st["small"] == {"sparsity": 0, "bits": 0} for st in path[:first + 1])
    assert path[first]["big"]["sparsity"] == 3 and path[first]["big"]["keep_ratio"] == 3
    assert path[-1] == {"big": {"sparsity": 3, "keep_ratio": 3, "bits": 4},
                        "small": {"sparsity": 3, "bits": 4}}
    cost = [weight * s + (1 - weight) * m for s, m, _ in map(sens.predict, path)]
    assert all(b < a for a, b in zip(cost, cost[1:], strict=False))  # each move saves


def test_guided_plans_are_distinct_valid_plans_along_the_paths():
    space, sens = _two_layer_space_and_sensitivity()
    plans = guided_plans(sens, space)
    assert 1 <= len(plans) <= 6
    params = [space.params_of(p) for p in plans]
    assert len({repr(sorted(p.items())) for p in params}) == len(plans)  # distinct
    for plan, p in zip(plans, params, strict=True):
        assert space.plan_from_params(p) == plan  # replayable from the study's parameters
        assert plan.layers["small"].keep_ratio == 1.0  # the output layer keeps its classes
    # `big` is compressed first, so every plan compresses it at least as much as `small`
    for plan in plans:
        assert plan.layers["big"].sparsity >= plan.layers["small"].sparsity


def test_probes_of_a_tiny_model_measure_every_knob_and_who_shrinks_with_whom():
    torch.manual_seed(0)
    model = ConvNet().eval()
    x, y = torch.randn(48, 1, 6, 6), torch.randint(0, 5, (48,))
    space = SearchSpace.from_model(model, (1, 6, 6))
    out = probe_layers(model, space, (1, 6, 6), ["c1", "fc"], x, y)
    assert out["base"] == accuracy(model, x, y)
    assert set(out["accuracy"]) == {"c1", "fc"}
    assert set(out["accuracy"]["c1"]) == {"sparsity", "keep_ratio", "bits"}
    assert set(out["accuracy"]["fc"]) == {"sparsity", "bits"}  # the output keeps its channels
    for knob, levels in out["accuracy"]["c1"].items():
        assert set(levels) == {repr(p) for p in PROBES[knob]}
    # each number is the accuracy of the teacher with only that layer compressed so
    only = apply(model, CompressionPlan({"c1": LayerPlan(sparsity=0.9)}), (1, 6, 6))
    assert out["accuracy"]["c1"]["sparsity"]["0.9"] == accuracy(only, x, y)
    # keeping round(0.35 * 4) = 1 of c1's 4 filters leaves a quarter of c1 and of c2 (which
    # reads c1's channels); fc is untouched
    assert out["shrink"] == {"c1": {"c1": pytest.approx(0.25), "c2": pytest.approx(0.25)}}


def test_the_one_shot_allocator_meets_each_target_along_its_greedy_path():
    from slimtune.search.allocate import one_shot_plans

    space, sens = _two_layer_space_and_sensitivity()
    targets = [("size", 0.5), ("size", 0.2), ("flops", 0.5), ("flops", 1e-6)]
    plans = one_shot_plans(sens, space, targets)
    assert len(plans) == len(targets)
    for (cost, fraction), plan in zip(targets[:3], plans[:3], strict=True):
        layers = plan.layers
        state = {n: {k: LADDERS[k].index(layers[n][k]) for k in LADDERS
                     if k in space.knobs_of(n)} for n in space.layers}
        assert sens.predict(state)[0 if cost == "size" else 1] <= fraction
    # the light end (every layer at 8 bits) already meets the mildest target
    assert all(plans[0].layer(n).bits == 8 and plans[0].layer(n).sparsity == 0
               for n in space.layers)
    # the big layer, free in accuracy, is compressed first: at 0.2x size only it moved
    small, big = plans[1].layer("small"), plans[1].layer("big")
    assert (small.sparsity, small.bits) == (0.0, 8)
    assert big.sparsity > 0 or big.keep_ratio < 1 or big.bits < 8
    # an unreachable target: every layer as heavy as the ladders go
    heavy = plans[3]
    assert heavy.layer("big").sparsity == LADDERS["sparsity"][-1]
    assert heavy.layer("small").bits == LADDERS["bits"][-1]


def test_spread_targets_are_prefixes_and_spread_plans_distinct():
    from slimtune.search.allocate import SPREAD, spread_plans, spread_targets

    targets = spread_targets(12)
    assert [c for c, _ in targets] == ["flops", "size"] * 6
    for cost, (hi, lo) in SPREAD.items():
        fractions = [f for c, f in targets if c == cost]
        ladder = sorted(fractions, reverse=True)  # log-even from hi down to lo
        assert ladder[0] == pytest.approx(hi) and ladder[-1] == pytest.approx(lo)
        ratios = [b / a for a, b in zip(ladder, ladder[1:], strict=False)]
        assert max(ratios) == pytest.approx(min(ratios))
        # the first half already spans more than half of the range (bit-reversed order)
        first = fractions[:3]
        assert math.log(max(first) / min(first)) > 0.5 * math.log(hi / lo)
    space, sens = _two_layer_space_and_sensitivity()
    plans = spread_plans(sens, space, 5)
    assert 1 <= len(plans) <= 5
    assert len({repr(sorted(space.params_of(p).items())) for p in plans}) == len(plans)
