"""``slimtune finetune``: a front point trained on, its plan kept to the byte."""

from __future__ import annotations

import json
import shutil

import optuna
import pytest
import torch

import slimtune
from slimtune.cli import main
from slimtune.data.datasets import load_dataset
from slimtune.errors import ConfigError, RunDirError
from slimtune.export.artifact import load
from slimtune.models.zoo import build_model
from slimtune.objectives.accuracy import accuracy
from slimtune.search import SearchConfig
from slimtune.search.engine import search
from slimtune.search.pareto import pareto_front
from slimtune.search.study import open_run


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    """A search on a 400-image subset of digits: the fine-tune reads the full split."""
    from slimtune.spaces.plan import CompressionPlan

    def plan(space):  # one known plan: unstructured and channel pruning, 4 bits
        return [space.plan_from_params(space.params_of(CompressionPlan.uniform(
            list(space.layers), sparsity=0.5, bits=4, keep_ratio=0.75, temperature=4.0,
            alpha=0.7, keep_all=space.fixed_channels)))]

    run_dir = tmp_path_factory.mktemp("finetune")
    return search(SearchConfig(trials=1, epochs=1, teacher_epochs=3, run_dir=run_dir, seed=1,
                               subset=400, warm_start=False), initial_plans=plan)


def _pick(run):
    """The one trial, on the front."""
    (point,) = run.front
    return point


def _masks(run, point):
    """Weight name -> its pruning mask (1 kept) in the plan's student, built afresh."""
    from slimtune.compress.apply import apply
    from slimtune.compress.plain import plain_copy
    from slimtune.models.zoo import build_model
    from slimtune.spaces.plan import CompressionPlan

    teacher = build_model("small_cnn", 10, (1, 8, 8))
    teacher.load_state_dict(torch.load(run.run.dir / "teacher.pt", weights_only=True))
    parts = plain_copy(apply(teacher, CompressionPlan.from_dict(point.plan), (1, 8, 8)))[1]
    out = {}
    for key, part in parts.items():
        for mask in part.masks.values():
            out[key] = out.get(key, torch.ones_like(mask)) * mask
    return out


def _weights(model):
    return {k: v for k, v in model.state_dict().items() if k.endswith("weight")}


def test_finetune_keeps_the_plan_to_the_byte_and_never_loses_validation_accuracy(run, tmp_path):
    point = _pick(run)
    out = tmp_path / "tuned.slim"
    card = slimtune.finetune(run.run.dir, point.trial, out, epochs=2)
    before = load(run.run.artifact_path(point.trial))
    after = load(out)
    # the plan is kept: the same fixed-width size to the byte (the entropy-coded size moves
    # with the weights), the same shapes, no pruned weight back, no more distinct values
    # per output channel than the bits allow
    assert card["fixed_size_bytes"] == point.fixed_size_bytes
    assert out.stat().st_size == card["size_bytes"] <= point.fixed_size_bytes
    assert card["flops"] == point.flops and card["plan"] == point.plan
    w0, w1 = _weights(before), _weights(after)
    assert {k: v.shape for k, v in w0.items()} == {k: v.shape for k, v in w1.items()}
    masks = _masks(run, point)
    assert masks  # the picked plan prunes
    for k, mask in masks.items():
        assert torch.all(w1[k][mask == 0] == 0) and torch.all(w0[k][mask == 0] == 0), k
    for name, lp in point.plan["layers"].items():
        if lp["bits"] < 32 and f"{name}.weight" in w1:
            w = w1[f"{name}.weight"].reshape(w1[f"{name}.weight"].shape[0], -1)
            assert max(len(torch.unique(row)) for row in w) <= 2 ** lp["bits"] - 1
    assert not torch.equal(torch.cat([w.flatten() for w in w0.values()]),
                           torch.cat([w.flatten() for w in w1.values()]))  # it trained
    # its numbers are measured on the file, on the full splits; never below where it began
    full = load_dataset("digits")
    f = card["finetune"]
    assert card["test_accuracy"] == pytest.approx(accuracy(after, full.test))
    assert card["val_accuracy"] == pytest.approx(accuracy(after, full.val))
    assert f["search"]["val_accuracy_full"] == pytest.approx(accuracy(before, full.val))
    assert f["search"]["test_accuracy_full"] == pytest.approx(accuracy(before, full.test))
    assert card["val_accuracy"] >= f["search"]["val_accuracy_full"]
    assert card["val_accuracy"] == max(f["val_curve"]) == f["val_curve"][f["best_epoch"]]
    assert len(f["val_curve"]) == 3 and f["train_examples"] == len(full.train) > 400
    assert card["subset"] is None and json.loads(out.with_suffix(".json").read_text()) == card
    # the teacher it is compared with: measured on the same full splits
    teacher = build_model("small_cnn", 10, (1, 8, 8))
    teacher.load_state_dict(torch.load(run.run.dir / "teacher.pt", weights_only=True))
    assert card["teacher"]["test_accuracy"] == pytest.approx(accuracy(teacher.eval(), full.test))
    assert card["ratios"]["test_accuracy_relative"] == pytest.approx(
        card["test_accuracy"] / card["teacher"]["test_accuracy"])
    # the study records it beside the search's numbers
    record = open_run(run.run.dir).study.user_attrs["finetuned"][str(point.trial)][-1]
    assert record["test_accuracy"] == card["test_accuracy"]
    assert record["search"]["val_accuracy"] == point.accuracy
    assert record["out"] == str(out.resolve())


def test_a_trial_off_the_front_or_missing_is_refused_in_one_line(run, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(run.run.dir, d)
    study = optuna.load_study(study_name="slimtune", storage=f"sqlite:///{d}/study.db")
    point = _pick(run)
    template = study.trials[point.trial]
    # a completed trial every front point dominates: as large, as slow, less accurate
    worse = optuna.trial.create_trial(
        values=[0.01, template.values[1] * 10, template.values[2] * 10],
        params=template.params, distributions=template.distributions,
        user_attrs={**template.user_attrs, "val_accuracy": 0.01})
    study.add_trial(worse)
    number = len(study.trials) - 1
    assert number not in [p.trial for p in pareto_front(study)]
    with pytest.raises(RunDirError, match=f"trial {number} of .* is not on the front") as e:
        slimtune.finetune(d, number, tmp_path / "x.slim", epochs=1)
    assert "\n" not in str(e.value)
    with pytest.raises(RunDirError, match="trial 999 is not in"):
        slimtune.finetune(d, 999, tmp_path / "x.slim", epochs=1)
    with pytest.raises(ConfigError, match="`--epochs` must be at least 1, but got 0"):
        slimtune.finetune(d, point.trial, tmp_path / "x.slim", epochs=0)
    assert not (tmp_path / "x.slim").exists()


def _squeeze(text):
    """``text`` without whitespace: the console wraps long lines where it likes."""
    return "".join(text.split())


def test_the_cli_shows_a_bar_and_says_what_it_gained(run, tmp_path, capsys):
    point = _pick(run)
    out = tmp_path / "cli.slim"
    with pytest.raises(SystemExit) as exit_:
        main(["finetune", str(run.run.dir), "--trial", str(point.trial), "--epochs", "1",
              "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 0, err
    card = json.loads(out.with_suffix(".json").read_text())
    assert f"fine-tuning trial {point.trial}" in err and "1/1" in err
    assert _squeeze(f"wrote {out} ({card['size_bytes']:,} bytes") in _squeeze(err)
    assert _squeeze(f"test {card['test_accuracy']:.4f} (search's file") in _squeeze(err)
    with pytest.raises(SystemExit) as exit_:
        main(["finetune", str(run.run.dir), "--trial", "999", "--epochs", "1", "--out",
              str(tmp_path / "y.slim")])
    err = capsys.readouterr().err
    assert exit_.value.code != 0 and "trial 999 is not in" in err
