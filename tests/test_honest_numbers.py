"""The numbers on the front are the numbers after export, for every layer form."""

from __future__ import annotations

import os

import pytest
import torch

import slimtune
from slimtune.compress import apply
from slimtune.export.artifact import encode, save, stored_weights
from slimtune.models import build_model
from slimtune.objectives import count_flops
from slimtune.objectives.size import size_bytes
from slimtune.search.trial import measure
from slimtune.spaces import CompressionPlan, LayerPlan
from tests.tiny_models import random_plans

ARCHS = [("small_cnn", (1, 8, 8), 10), ("tiny_resnet", (1, 8, 8), 10)]


@pytest.mark.slow
@pytest.mark.parametrize("name, shape, classes", ARCHS)
def test_property_export_size_predictions_and_onnx_agree_for_randomrandom_plans(
    name, shape, classes, tmp_path
):
    from slimtune.export.onnx import export_onnx

    torch.manual_seed(0)
    teacher = build_model(name, classes, shape).eval()
    x = torch.randn(64, *shape)
    for i, plan in enumerate(random_plans(teacher, shape, 30, seed=7)):
        student = apply(teacher, plan, shape).eval()
        size = size_bytes(student, name, classes, shape, plan)
        path = tmp_path / f"{i}.slim"
        save(path, encode(student, name, classes, shape, plan))
        assert 0.99 <= os.path.getsize(path) / size <= 1.01
        loaded = slimtune.load(path)
        with torch.no_grad():
            want, got = student(x), loaded(x)
        assert torch.equal(got.argmax(1), want.argmax(1)), f"plan {i}: {plan.to_json()}"
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        onnx = export_onnx(loaded, shape, tmp_path / f"{i}.onnx", check_batch=64)
        assert onnx["argmax_agreement"] >= 0.995, f"plan {i}: {onnx}"


def test_structured_pruning_shrinks_the_model_for_real():
    teacher = build_model("small_cnn", 10, (1, 8, 8)).eval()
    convs = ["features.0", "features.3", "features.7"]
    plan = CompressionPlan({n: LayerPlan(keep_ratio=0.5) for n in convs})
    student = apply(teacher, plan, (1, 8, 8))
    widths = [student.get_submodule(n).out_channels for n in convs]
    assert widths == [8, 16, 32]
    assert student.features[1].num_features == 8  # its BatchNorm shrank with it
    assert student.classifier[1].in_features == 128  # and the Linear after the Flatten
    assert sum(p.numel() for p in student.parameters()) < 0.5 * sum(
        p.numel() for p in teacher.parameters())


def test_keep_ratio_half_on_every_conv_quarters_inner_conv_macs_and_front_agrees(tmp_path):
    from slimtune.data import load_dataset

    data = load_dataset("digits")
    shape = data.input_shape
    teacher = build_model("small_cnn", 10, shape).eval()
    convs = ["features.0", "features.3", "features.7"]
    plan = CompressionPlan({n: LayerPlan(keep_ratio=0.5) for n in convs})
    student = apply(teacher, plan, shape).eval()
    before = count_flops(teacher, shape).layers
    after = count_flops(student, shape).layers
    for inner in ("features.3", "features.7"):  # both input and output channels halved
        assert after[inner][0] / before[inner][0] == pytest.approx(0.25, rel=0.05)
    assert after["features.0"][0] / before["features.0"][0] == pytest.approx(0.5, rel=0.05)
    # what the search records (measure) equals what the exported file gives
    m = measure(student, "small_cnn", 10, shape, plan, data.x_val, data.y_val)
    path = tmp_path / "s.slim"
    save(path, m["artifact"])
    loaded = slimtune.load(path)
    report = count_flops(loaded, shape, stored_weights(loaded, plan))
    assert os.path.getsize(path) == m["size_bytes"]
    assert (report.effective, report.dense, report.bitops) == (
        m["flops"], m["dense_flops"], m["bitops"])


def test_dense_and_effective_flops_of_a_three_layer_model_by_hand():
    """ConvNet: c1 Conv(1->4, 3x3, pad 1) on 6x6; c2 Conv(4->8, 3x3, stride 2, pad 1) -> 3x3;
    fc Linear(72 -> 5)."""
    teacher = build_model("conv_net", 5, (1, 6, 6)).eval()
    plan = CompressionPlan({
        "c1": LayerPlan(keep_ratio=0.5, sparsity=0.5, bits=4),  # 2 channels, 9 of 18 kept
        "c2": LayerPlan(rank_ratio=0.25, bits=8),  # rank 2: 3x3 conv 2->2, 1x1 conv 2->8
        "fc": LayerPlan(sparsity=0.5),  # 180 of 360 weights kept
    })
    student = apply(teacher, plan, (1, 6, 6)).eval()
    assert student.c1.out_channels == 2 and student.c2[0].out_channels == 2
    c1_dense, c1_eff = 2 * 36 * 9, 36 * 9  # 36 positions x 9 stored weights
    c2a, c2b = (2 * 9) * (2 * 9), (8 * 9) * 2  # outputs x fan-in, both halves
    fc_dense, fc_eff = 72 * 5, 180
    dense = c1_dense + c2a + c2b + fc_dense
    effective = c1_eff + c2a + c2b + fc_eff
    bitops = c1_eff * 4 * 32 + (c2a + c2b) * 8 * 32 + fc_eff * 32 * 32
    blob = encode(student, "conv_net", 5, (1, 6, 6), plan)
    loaded, header = slimtune.export.decode(blob)
    for model in (student, loaded):
        r = count_flops(model, (1, 6, 6), stored_weights(loaded, plan))
        assert (r.dense, r.effective, r.bitops) == (dense, effective, bitops)
    assert (dense, effective) == (1476, 972)
