"""One search trial each through Ray for other models and data sets."""

from __future__ import annotations

import os

import optuna
import pytest
import torch

import slimtune
from slimtune.data.datasets import FASHION_MNIST_DIR
from slimtune.models import build_model
from slimtune.search import SearchConfig, search

COMPLETE = optuna.trial.TrialState.COMPLETE


def _one_trial(tmp_path, **kw):
    config = SearchConfig(trials=1, epochs=1, teacher_epochs=1, run_dir=tmp_path / "run", **kw)
    result = search(config)
    done = result.run.study.get_trials(states=[COMPLETE])
    assert len(done) == 1, [t.user_attrs.get("error") for t in result.run.study.trials]
    t = done[0]
    # a user model in the artifact loads only where its module is trusted
    from slimtune.trust import user_module

    model = slimtune.load(result.run.artifact_path(t.number),
                          trust_module=user_module(config.model))
    assert t.user_attrs["size_bytes"] == result.run.artifact_path(t.number).stat().st_size
    return result, t, model


def test_torchvision_resnet18_with_a_users_checkpoint_runs_a_search_trial(ray_session,
                                                                           tmp_path):
    """`--model torchvision:resnet18 --checkpoint ft.pt`: the user's fine-tuned weights
    (classifier sized for the data's 10 classes, first conv for its one channel) are the
    teacher as they are; a checkpoint sized for other classes is one line."""
    torch.manual_seed(7)
    mine = build_model("torchvision:resnet18", 10, (1, 8, 8))
    torch.save(mine.state_dict(), tmp_path / "ft.pt")
    result, t, model = _one_trial(tmp_path, model="torchvision:resnet18", subset=300,
                                  pruning="unstructured", checkpoint=tmp_path / "ft.pt")
    run_teacher = torch.load(result.run.dir / "teacher.pt", weights_only=True)
    assert all(torch.equal(run_teacher[k], v) for k, v in mine.state_dict().items())
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert result.run.teacher["size_bytes"] > 40_000_000  # 11M float32 weights
    assert t.user_attrs["size_bytes"] < result.run.teacher["size_bytes"] / 3  # 8-bit plan


def test_a_torchvision_checkpoint_for_other_classes_is_one_line(ray_session, tmp_path):
    other = build_model("torchvision:resnet18", 1000, (1, 8, 8))  # an ImageNet-sized head
    torch.save(other.state_dict(), tmp_path / "ft.pt")
    config = SearchConfig(model="torchvision:resnet18", subset=300, trials=1,
                          checkpoint=tmp_path / "ft.pt", run_dir=tmp_path / "run")
    with pytest.raises(slimtune.SlimtuneError) as exc:
        search(config)
    msg = str(exc.value)
    assert "--checkpoint" in msg and "fc.weight" in msg and "\n" not in msg, msg


def test_user_model_factory_with_checkpoint_runs_a_search_trial(ray_session, tmp_path):
    teacher = build_model("tests.user_code:make_model", 4, (1, 8, 8))
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    result, t, model = _one_trial(tmp_path, model="tests.user_code:make_model",
                                  data="tests.user_code:tiny_data",
                                  checkpoint=tmp_path / "teacher.pt")
    run_teacher = torch.load(result.run.dir / "teacher.pt", weights_only=True)
    assert all(torch.equal(run_teacher[k], v) for k, v in teacher.state_dict().items()), \
        "the checkpoint is the teacher, untouched"
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 4)


@pytest.mark.slow
def test_short_search_on_a_fashion_mnist_subset_with_vgg_small(ray_session, tmp_path):
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI must install Debian's dataset-fashion-mnist ({FASHION_MNIST_DIR})")
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    config = SearchConfig(data="fashion-mnist", model="vgg_small", trials=3, epochs=1,
                          teacher_epochs=2, subset=1500, run_dir=tmp_path / "run")
    result = search(config)
    assert result.counts["done"] == 3, [t.user_attrs.get("error")
                                        for t in result.run.study.trials]
    assert result.run.teacher["accuracy"] > 0.5  # 10 classes, 2 epochs on 1500 images
    assert result.front
    p = result.front[0]
    card = slimtune.export(result.run.dir, p.trial, tmp_path / "s.slim")
    assert card["dataset"] == "fashion-mnist" and card["input_shape"] == [1, 28, 28]
    assert card["size_bytes"] == (tmp_path / "s.slim").stat().st_size
