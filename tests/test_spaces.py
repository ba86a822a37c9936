from __future__ import annotations

import optuna
import pytest

from slimtune.compress import (
    ChannelPruneConfig,
    DistillConfig,
    FactorizeConfig,
    PruneConfig,
    QuantizeConfig,
)
from slimtune.errors import ConfigError
from slimtune.spaces import ALLOWED_BITS, CompressionPlan, LayerPlan, SearchSpace
from tests.tiny_models import ConvNet


def test_space_has_three_knobs_per_conv_and_linear_plus_temperature_and_alpha():
    space = SearchSpace.from_model(ConvNet())
    assert space.layers == ("c1", "c2", "fc")
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        plan = space.sample(trial)
        assert set(plan.layers) == {"c1", "c2", "fc"}
        for lp in plan.layers.values():
            assert 0.0 <= lp.sparsity <= 0.95
            assert 0.0 < lp.rank_ratio <= 1.0
            assert lp.bits in ALLOWED_BITS
        assert 1.0 <= plan.temperature <= 20.0 and 0.0 <= plan.alpha <= 1.0
        dists = trial.distributions
        assert dists["temperature"].log and set(dists["c1.bits"].choices) == set(ALLOWED_BITS)
        study.tell(trial, [0.0, 0.0])


def test_fixed_trial_replays_a_plan_and_params_of_inverts_sample():
    space = SearchSpace.from_model(ConvNet())
    plan = CompressionPlan.uniform(list(space.layers), sparsity=0.3, rank_ratio=0.5, bits=4,
                                   temperature=3.0, alpha=0.25)
    assert space.plan_from_params(space.params_of(plan)) == plan


PLAN = CompressionPlan(
    {"a": LayerPlan(0.5, 0.25, 4), "b.c": LayerPlan(0.0, 1.0, 32)}, temperature=2.5, alpha=0.1
)


@pytest.mark.parametrize(
    "obj, to_data, from_data",
    [
        (PLAN, CompressionPlan.to_json, CompressionPlan.from_json),
        (PLAN, CompressionPlan.to_dict, CompressionPlan.from_dict),
        (LayerPlan(0.3, 0.7, 6), lambda p: p.__dict__, lambda d: LayerPlan(**d)),
        (FactorizeConfig({"a": 0.5}), lambda c: c.rank_ratio, FactorizeConfig),
        (ChannelPruneConfig({"a": 0.5}), lambda c: c.keep_ratio, ChannelPruneConfig),
        (LayerPlan(0.1, 0.5, 4, keep_ratio=0.25), lambda p: p.__dict__, lambda d: LayerPlan(**d)),
        (PruneConfig({"a": 0.5}), lambda c: c.sparsity, PruneConfig),
        (QuantizeConfig({"a": 3}), lambda c: c.bits, QuantizeConfig),
        (DistillConfig(2.0, 0.3, 4), lambda c: c.__dict__, lambda d: DistillConfig(**d)),
    ],
)
def test_every_config_round_trips_through_plain_data(obj, to_data, from_data):
    import json

    assert from_data(json.loads(json.dumps(to_data(obj)))) == obj


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: LayerPlan(sparsity=1.0), "sparsity"),
        (lambda: LayerPlan(sparsity=-0.1), "sparsity"),
        (lambda: LayerPlan(rank_ratio=0.0), "rank_ratio"),
        (lambda: LayerPlan(keep_ratio=0.0), "keep_ratio"),
        (lambda: LayerPlan(keep_ratio=1.5), "keep_ratio"),
        (lambda: SearchSpace(layers=("a",), pruning="magic"), "--pruning"),
        (lambda: CompressionPlan(temperature=0.0), "temperature"),
        (lambda: CompressionPlan(alpha=1.5), "alpha"),
        (lambda: CompressionPlan.from_json("{"), "JSON"),
        (lambda: CompressionPlan.from_dict({"layers": {}}), "temperature"),
        (lambda: CompressionPlan.from_dict({**PLAN.to_dict(), "version": 99}), "version"),
    ],
)
def test_invalid_plans_raise_config_error_naming_the_field(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


@pytest.mark.parametrize(
    "pruning, has_sparsity, has_keep",
    [("unstructured", True, False), ("structured", False, True), ("both", True, True)],
)
def test_pruning_mode_decides_which_knobs_exist_and_the_output_layer_keeps_its_channels(
    pruning, has_sparsity, has_keep
):
    space = SearchSpace.from_model(ConvNet(), (1, 6, 6), pruning=pruning)
    assert space.fixed_channels == ("fc",)
    trial = optuna.create_study().ask()
    plan = space.sample(trial)
    names = set(trial.params)
    assert ("c1.sparsity" in names) == has_sparsity
    assert ("c1.keep_ratio" in names) == has_keep
    assert "fc.keep_ratio" not in names and plan.layers["fc"].keep_ratio == 1.0
    uniform = space.uniform_plans()
    assert uniform and all(p.layers["fc"].keep_ratio == 1.0 for p in uniform)
    assert any(p.layers["c1"].keep_ratio < 1 for p in uniform) == has_keep
    assert any(p.layers["c1"].sparsity > 0 for p in uniform) == has_sparsity


def test_plans_written_before_keep_ratio_existed_still_load():
    old = {"version": 1, "temperature": 2.0, "alpha": 0.5,
           "layers": {"a": {"sparsity": 0.5, "rank_ratio": 1.0, "bits": 4}}}
    assert CompressionPlan.from_dict(old).layers["a"].keep_ratio == 1.0
