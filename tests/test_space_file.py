"""The search-space file (``--space``): rules, their precedence and checks, and searches
that keep to it (warm start, guided plans and the sampler's alike), resumed too."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml

from slimtune.cli import main
from slimtune.errors import ConfigError
from slimtune.knobs.base import Choices, FloatRange
from slimtune.models.zoo import build_model
from slimtune.search import SearchConfig, search
from slimtune.search.engine import resume
from slimtune.spaces import SearchSpace
from slimtune.spaces.rules import Fixed, SpaceRules, load_space
from slimtune.spaces.template import space_template

SHAPE = (1, 8, 8)
LAYERS = ["features.0", "features.3", "features.7", "classifier.1", "classifier.3"]


@pytest.fixture(scope="module")
def model():
    return build_model("small_cnn", 10, SHAPE)


def _space(model, doc, pruning="both"):
    return SearchSpace.from_model(model, SHAPE, pruning, rules=SpaceRules.from_dict(doc))


def test_the_first_matching_rule_wins_and_the_default_comes_last(model):
    space = _space(model, {"layers": {
        "_default": {"bits": [4, 8]},  # written first, applies last
        "features.3": {"bits": 6},
        "re:features\\..*": {"bits": [2, 3], "sparsity": [0.1, 0.5]},
        "features.7": {"bits": 32},  # after the regex that already took features.7
    }})
    assert space.layers == tuple(LAYERS)
    assert space.fixed_of("features.3") == {"bits": 6}
    assert "features.3.bits" not in space.params_of(space.uniform_plans()[0])
    assert space.range_of("bits", "features.7") == Choices((2, 3))
    assert space.range_of("sparsity", "features.0") == FloatRange(0.1, 0.5)
    assert space.range_of("bits", "classifier.1") == Choices((4, 8))
    assert space.range_of("sparsity", "classifier.1") == FloatRange(0.0, 0.95)  # default


def test_skip_leaves_a_layer_out_and_fixed_knobs_are_no_parameters(model):
    space = _space(model, {"temperature": 4, "alpha": [0.2, 0.8], "layers": {
        "features.0": {"skip": True},
        "re:classifier\\..*": {"keep_ratio": 1, "rank_ratio": 1}}})
    assert "features.0" not in space.layers
    plan = space.sample(optuna.trial.FixedTrial(space.params_of(space.uniform_plans()[-1])))
    assert "features.0" not in plan.layers
    assert plan.layers["classifier.1"].keep_ratio == 1 and \
        plan.layers["classifier.1"].rank_ratio == 1
    assert space.knobs_of("classifier.1") == ["sparsity", "bits"]
    assert space.temperature == (4.0, 4.0) and space.alpha == (0.2, 0.8)


def test_a_rule_can_turn_on_an_opt_in_knob_for_its_layers(model):
    space = _space(model, {"layers": {"features.3": {"two_four": [False, True]}}})
    assert "two_four" in space.knobs_of("features.3")
    assert "two_four" not in space.knobs_of("features.7")


@pytest.mark.parametrize("doc, words", [
    ({"layers": {"features.9": {"bits": 8}}}, ["rule `features.9`", "names no layer",
                                               "features.0"]),
    ({"layers": {"re:conv.*": {"bits": 8}}}, ["rule `re:conv.*`", "matches no layer"]),
    ({"layers": {"re:(": {"bits": 8}}}, ["rule `re:(`", "not a valid regex"]),
    ({"layers": {"features.0": {"bits": 5}}}, ["rule `features.0`", "`bits` must be among",
                                               "2, 3, 4, 6, 8, 32", "got 5"]),
    ({"layers": {"features.0": {"bits": [4, 64]}}}, ["rule `features.0`", "bits=64"]),
    ({"layers": {"features.0": {"sparsity": [0, 1.2]}}}, ["rule `features.0`", "sparsity"]),
    ({"layers": {"features.0": {"sparsity": [0.6, 0.2]}}}, ["rule `features.0`",
                                                            "low <= high"]),
    ({"layers": {"features.0": {"sparsity": [0, 0.3, 0.6]}}}, ["rule `features.0`",
                                                                "[low, high]"]),
    ({"layers": {"features.0": {"bitz": 8}}}, ["rule `features.0`", "unknown key `bitz`",
                                               "bits"]),
    ({"layers": {"features.0": {"skip": True, "bits": 8}}}, ["rule `features.0`", "skip"]),
    ({"layers": {"features.0": {"skip": "yes"}}}, ["rule `features.0`", "skip"]),
    ({"layers": {"features.0": [4, 8]}}, ["rule `features.0`", "must be a mapping"]),
    ({"layers": {"features.0": {"bits": []}}}, ["rule `features.0`", "at least one"]),
    ({"layers": {"features.0": {"bits": [[4]]}}}, ["rule `features.0`", "one value"]),
    ({"layer": {}}, ["unknown key `layer`", "layers"]),
    ({"version": 2}, ["`version` must be 1"]),
    ({"temperature": 0}, ["`temperature`", "0.0 < value"]),
    ({"alpha": [0.5, 1.5]}, ["`alpha`", "0.0 <= value <= 1.0"]),
    ({"layers": {"classifier.3": {"keep_ratio": 0.5}}}, ["rule `classifier.3`",
                                                         "output layer"]),
    ([1, 2], ["must be a mapping"]),
])
def test_a_bad_rule_is_one_line_naming_it(model, doc, words):
    with pytest.raises(ConfigError) as exc:
        _space(model, doc)
    msg = str(exc.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_a_knob_the_pruning_mode_lacks_is_refused_by_name(model):
    with pytest.raises(ConfigError, match="rule `features.0` .* `--pruning structured`"):
        _space(model, {"layers": {"features.0": {"sparsity": [0, 0.5]}}}, "structured")
    # a regex or the default naming it for many layers is not an error
    _space(model, {"layers": {"_default": {"sparsity": [0, 0.5]}}}, "structured")


def test_files_yaml_json_and_broken_ones(tmp_path):
    y = tmp_path / "s.yaml"
    y.write_text('layers:\n  "re:features\\\\..*": {bits: [4, 8]}\n')
    j = tmp_path / "s.json"
    j.write_text(json.dumps({"layers": {"re:features\\..*": {"bits": [4, 8]}}}))
    assert load_space(y) == load_space(j)
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers: {features.0: [\n")
    with pytest.raises(ConfigError, match=r"--space .*bad.yaml is not valid YAML"):
        load_space(bad)
    big = tmp_path / "big.yaml"
    big.write_text("#" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_space(big)
    with pytest.raises(ConfigError, match="cannot read --space"):
        load_space(tmp_path / "missing.yaml")


def test_rules_round_trip_through_plain_data(model):
    doc = {"temperature": [2, 8], "alpha": 0.5, "layers": {
        "features.0": {"skip": True}, "re:features\\..*": {"bits": [4, 8], "sparsity": 0.5},
        "_default": {"keep_ratio": [0.5, 1]}}}
    rules = SpaceRules.from_dict(doc)
    again = SpaceRules.from_dict(json.loads(json.dumps(rules.to_dict())))
    assert again == rules
    assert again.rules[1].knobs["sparsity"] == Fixed(0.5)


@pytest.mark.parametrize("name, shape", [("small_cnn", SHAPE), ("tiny_resnet", (3, 16, 16))])
def test_the_template_reads_back_as_the_default_space(name, shape):
    net = build_model(name, 10, shape)
    text = space_template(net, shape, title=name)
    assert "weights" in text
    default = SearchSpace.from_model(net, shape)
    read = SearchSpace.from_model(net, shape, rules=SpaceRules.from_dict(yaml.safe_load(text)))
    assert read.layers == default.layers
    for layer in default.layers:
        assert read.knobs_of(layer) == default.knobs_of(layer)
        for k in default.knobs_of(layer):
            assert read.range_of(k, layer) == default.range_of(k, layer), (layer, k)
    assert (read.temperature, read.alpha) == (default.temperature, default.alpha)


def test_space_cli_prints_the_template_and_search_refuses_a_bad_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["space", "--model", "small_cnn", "--data", "digits"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert yaml.safe_load(text)["layers"]["features.3"]["bits"] == [2, 3, 4, 6, 8, 32]
    assert "Conv2d 16->32, 3x3; 4,608 weights; 294,912 MACs" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers:\n  conv9: {bits: 8}\n")
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["search", "--space", str(bad), "--run-dir", str(run_dir), "--trials", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rule `conv9`" in err and "names no layer" in err
    assert not run_dir.exists()  # refused before anything was written


def _plans(study):
    return [(t.number, t.user_attrs["plan"]) for t in study.trials if "plan" in t.user_attrs]


def test_a_search_keeps_to_bits_8_everywhere_and_so_does_its_resume(ray_session, tmp_path):
    """Every plan (the uniform warm start, the guided plans, NSGA-II's children, the resumed
    trials) has 8 bits on every layer, the first layer untouched, and the file says so."""
    from slimtune.export.artifact import read_header

    space = {"layers": {"features.0": {"skip": True}, "_default": {"bits": [8]}}}
    config = SearchConfig(trials=20, epochs=0, teacher_epochs=2, run_dir=tmp_path / "run",
                          space=space, seed=2)
    result = search(config)
    run = result.run
    assert run.meta["config"]["space"] == {"version": 1, "layers": {
        "features.0": {"skip": True}, "_default": {"bits": 8}}}
    phases = {t.user_attrs.get("phase", "sampler") for t in run.study.trials}
    assert {"uniform", "guided", "sampler"} <= phases
    resume(run.dir, trials=26)
    study = optuna.load_study(study_name="slimtune", storage=f"sqlite:///{run.dir}/study.db")
    plans = _plans(study)
    assert len(plans) == 26
    for number, plan in plans:
        assert sorted(plan["layers"]) == sorted(LAYERS[1:]), number
        assert {lp["bits"] for lp in plan["layers"].values()} == {8}, number
        assert not any(p.endswith(".bits") for p in study.trials[number].params)
    for p in result.front:  # the exported files hold what the plans say
        header = read_header(run.artifact_path(p.trial))
        assert {lp.bits for lp in header.plan.layers.values()} == {8}
        assert "features.0" not in header.plan.layers
