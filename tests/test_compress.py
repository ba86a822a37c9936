from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimtune.compress import (
    DistillConfig,
    FactorizeConfig,
    Factorized,
    PruneConfig,
    QuantizeConfig,
    apply,
    dequantize,
    distill,
    factorize,
    kd_loss,
    prune,
    quantize,
    quantize_codes,
)
from slimtune.errors import ConfigError
from slimtune.ops.quantize import MSE_BITS
from slimtune.spaces import CompressionPlan, LayerPlan
from tests.tiny_models import ConvNet


# -- factorization -------------------------------------------------------------------
@pytest.mark.parametrize(
    "layer, x",
    [
        (nn.Linear(20, 12), torch.randn(5, 20)),
        (nn.Conv2d(3, 16, 3, padding=1), torch.randn(2, 3, 7, 7)),
        (nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2), torch.randn(2, 4, 9, 9)),
    ],
)
def test_factorize_at_full_rank_reproduces_the_layer(layer, x):
    model = nn.Sequential(layer)
    # at full rank factorizing would not save weights, so force it through the private split
    from slimtune.compress.factorize import _split, full_rank

    split = _split(layer, full_rank(layer), with_weights=True)
    assert isinstance(split, Factorized)
    torch.testing.assert_close(split(x), model(x), rtol=1e-4, atol=1e-5)


def test_factorize_shapes_and_only_where_it_saves():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    out = factorize(model, FactorizeConfig({"0": 0.25, "2": 0.5}))
    assert isinstance(out[0], Factorized)
    assert out[0][0].weight.shape == (16, 64) and out[0][1].weight.shape == (64, 16)
    # 64 -> 4 at rank 2: 2 * (64 + 4) = 136 < 256, so it is factorized
    assert isinstance(out[2], Factorized) and out[2][0].out_features == 2
    # rank 3 of 4 would cost 3 * 68 = 204 < 256 -> factorized; rank 4 -> not
    assert not isinstance(factorize(model, FactorizeConfig({"2": 1.0}))[2], Factorized)
    assert isinstance(model[0], nn.Linear), "factorize must not change its input"


def test_factorize_low_rank_is_best_rank_r_approximation():
    torch.manual_seed(1)
    layer = nn.Linear(30, 30, bias=False)
    out = factorize(nn.Sequential(layer), FactorizeConfig({"0": 0.2}))[0]
    approx = out[1].weight @ out[0].weight
    s = torch.linalg.svdvals(layer.weight.detach())
    r = out[0].out_features
    err = torch.linalg.matrix_norm(layer.weight.detach() - approx)
    assert torch.isclose(err, s[r:].pow(2).sum().sqrt(), rtol=1e-4)


# -- pruning -------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.77, 0.95])
def test_pruning_hits_the_requested_sparsity_exactly_and_keeps_it_after_finetune(sparsity):
    model = ConvNet()
    pruned = prune(model, PruneConfig({"c1": sparsity, "c2": sparsity, "fc": sparsity}))
    for name in ("c1", "c2", "fc"):
        w = pruned.get_submodule(name).weight
        assert int((w == 0).sum()) == round(sparsity * w.numel())
        # the zeros are the smallest magnitudes of the original weight
        orig = model.get_submodule(name).weight.detach().abs().flatten()
        kept = orig[(w != 0).flatten()]
        dropped = orig[(w == 0).flatten()]
        assert kept.min() >= dropped.max()
    x, y = torch.randn(64, 1, 6, 6), torch.randint(0, 5, (64,))
    teacher_logits = torch.randn(64, 5)
    distill(pruned, teacher_logits, x, y, DistillConfig(epochs=3, lr=1e-2, batch_size=16))
    for name in ("c1", "c2", "fc"):
        w = pruned.get_submodule(name).weight
        assert int((w == 0).sum()) == round(sparsity * w.numel())
    # the surviving weights did train
    assert not torch.equal(pruned.fc.weight, prune(model, PruneConfig({"fc": sparsity})).fc.weight)


def test_pruning_both_halves_of_a_factorized_layer():
    model = nn.Sequential(nn.Linear(40, 40))
    out = apply(model, CompressionPlan({"0": LayerPlan(sparsity=0.5, rank_ratio=0.25)}))
    for half in out[0]:
        assert int((half.weight == 0).sum()) == round(0.5 * half.weight.numel())


# -- quantization --------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("clip", ["max", "mse", "learned"])
def test_b_bit_layer_has_at_most_2_pow_b_values_per_output_channel(bits, clip, monkeypatch):
    monkeypatch.setattr("slimtune.ops.quantize.CLIP", clip)
    model = ConvNet()
    q = quantize(model, QuantizeConfig({"c1": bits, "c2": bits, "fc": bits}))
    for name in ("c1", "c2", "fc"):
        w = q.get_submodule(name).weight.detach()
        for channel in w.reshape(w.shape[0], -1):
            assert len(torch.unique(channel)) <= 2**bits - 1
        orig = model.get_submodule(name).weight.detach().reshape(w.shape[0], -1)
        step = orig.abs().amax(dim=1, keepdim=True) / (2 ** (bits - 1) - 1)
        err = (w.reshape(w.shape[0], -1) - orig).pow(2).sum(dim=1)
        codes, scale = quantize_codes(orig, bits)
        maxabs = (torch.clamp(torch.round(orig / step), -(2 ** (bits - 1) - 1),
                              2 ** (bits - 1) - 1) * step - orig).pow(2).sum(dim=1)
        if bits > MSE_BITS or clip == "max":  # max-abs: at most half a step per weight
            assert ((w.reshape(w.shape[0], -1) - orig).abs() <= step / 2 + 1e-6).all()
            assert torch.allclose(scale, step.squeeze(1))
        else:  # clipped where it helps: never more squared error than max-abs per channel
            assert (err <= maxabs + 1e-9).all()
            assert (scale <= step.squeeze(1) + 1e-9).all()


def test_low_bit_clipping_spends_the_levels_on_the_many_not_the_outlier(monkeypatch):
    torch.manual_seed(0)
    w = torch.cat([torch.tensor([12.0]), torch.randn(255)]).reshape(1, -1)  # one outlier
    monkeypatch.setattr("slimtune.ops.quantize.CLIP", "mse")
    codes, scale = quantize_codes(w, 3)
    err = (dequantize(codes, scale) - w).pow(2).sum()
    monkeypatch.setattr("slimtune.ops.quantize.CLIP", "max")
    codes_max, scale_max = quantize_codes(w, 3)
    err_max = (dequantize(codes_max, scale_max) - w).pow(2).sum()
    assert scale < scale_max and err < 0.7 * err_max
    assert torch.equal(scale_max, w.abs().amax(dim=1) / 3)
    monkeypatch.setattr("slimtune.ops.quantize.CLIP", "mse")
    # weights already on a max-abs grid (a decoded artifact) keep their scale and codes
    on_grid = dequantize(codes_max, scale_max)
    again = quantize_codes(on_grid, 3)
    assert torch.equal(again[0], codes_max) and torch.allclose(again[1], scale_max)


def _trained_learned_clipping(monkeypatch, bits=3):
    """A ConvNet at ``bits`` with learned clipping, a few steps trained so that its ratios
    moved off where they started."""
    monkeypatch.setattr("slimtune.ops.quantize.CLIP", "learned")
    torch.manual_seed(0)
    model = quantize(ConvNet(), QuantizeConfig({"c1": bits, "c2": bits, "fc": bits}))
    start = {n: p.detach().clone() for n, p in model.named_parameters() if "ratio" in n}
    assert start and all(((r > 0) & (r <= 1)).all() for r in start.values())
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    x, y = torch.randn(32, 1, 6, 6), torch.randint(0, 5, (32,))
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    moved = {n: (p.detach() - start[n]).abs().max() for n, p in model.named_parameters()
             if n in start}
    assert all(m > 1e-3 for m in moved.values()), moved  # the ratios learned
    return model.eval(), x


def test_learned_clipping_exports_exactly_what_it_trained(monkeypatch, tmp_path):
    import slimtune
    from slimtune.export.artifact import encode, save

    model, x = _trained_learned_clipping(monkeypatch)
    for name in ("c1", "c2", "fc"):
        w = model.get_submodule(name).weight.detach()
        for channel in w.reshape(w.shape[0], -1):
            assert len(torch.unique(channel)) <= 2**3 - 1
    plan = CompressionPlan({n: LayerPlan(bits=3) for n in ("c1", "c2", "fc")})
    path = tmp_path / "m.slim"
    save(path, encode(model, "conv_net", 5, (1, 6, 6), plan))
    loaded = slimtune.load(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)


def test_learned_clipping_only_on_dense_low_bit_layers(monkeypatch):
    monkeypatch.setattr("slimtune.ops.quantize.CLIP", "learned")
    model = ConvNet()
    plan = CompressionPlan({"c1": LayerPlan(bits=3), "c2": LayerPlan(bits=3, sparsity=0.5),
                            "fc": LayerPlan(bits=6)})
    out = apply(model, plan)
    learned = {n.split(".")[0] for n, _ in out.named_parameters() if n.endswith(".ratio")}
    assert learned == {"c1"}  # c2 is 50 % zeros (max-abs trained better), fc has 6 bits


def test_reset_clipping_on_a_decoded_grid_computes_what_the_file_does(monkeypatch):
    from slimtune.ops.quantize import reset_clipping

    model, x = _trained_learned_clipping(monkeypatch)
    with torch.no_grad():
        expect = model(x)
        for name in ("c1", "c2", "fc"):  # the dequantized weights, as a decoded file has
            layer = model.get_submodule(name)
            layer.parametrizations.weight.original.copy_(layer.weight)
    reset_clipping(model)
    for n, p in model.named_parameters():
        if "ratio" in n:
            assert torch.equal(p.detach(), torch.ones_like(p))
    with torch.no_grad():
        torch.testing.assert_close(model(x), expect, rtol=1e-5, atol=1e-5)


def test_quantization_straight_through_gradient_reaches_the_float_weight():
    model = quantize(nn.Sequential(nn.Linear(5, 3)), QuantizeConfig({"0": 3}))
    model(torch.randn(4, 5)).sum().backward()
    grad = model[0].parametrizations.weight.original.grad
    assert grad is not None and grad.abs().sum() > 0


def test_quantize_rejects_bits_out_of_range():
    with pytest.raises(ConfigError, match="bits"):
        QuantizeConfig({"fc": 1})
    with pytest.raises(ConfigError, match="bits"):
        LayerPlan(bits=33)


# -- distillation --------------------------------------------------------------------
def test_kd_loss_matches_a_hand_computed_value():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[0.2, 3.0, -1.0]])
    y = torch.tensor([1])
    temp, alpha = 2.0, 0.3
    ps = [math.exp(v / temp) for v in (1.0, 2.0, 0.5)]
    pt = [math.exp(v / temp) for v in (0.2, 3.0, -1.0)]
    ps = [p / sum(ps) for p in ps]
    pt = [p / sum(pt) for p in pt]
    kl = sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True))
    soft = [math.exp(v) for v in (1.0, 2.0, 0.5)]
    ce = -math.log(soft[1] / sum(soft))
    expected = alpha * temp**2 * kl + (1 - alpha) * ce
    assert kd_loss(s, t, y, temp, alpha).item() == pytest.approx(expected, rel=1e-6)
    # alpha = 0 is plain cross-entropy; equal logits give zero KL
    assert kd_loss(s, t, y, temp, 0.0).item() == pytest.approx(F.cross_entropy(s, y).item())
    assert kd_loss(s, s, y, temp, 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_distillation_moves_the_student_towards_the_teacher():
    torch.manual_seed(0)
    teacher = ConvNet()
    x = torch.randn(128, 1, 6, 6)
    with torch.no_grad():
        t_logits = teacher(x)
    y = t_logits.argmax(1)
    student = ConvNet()
    before = kd_loss(student(x), t_logits, y, 4.0, 1.0).item()
    distill(student, t_logits, x, y, DistillConfig(temperature=4.0, alpha=1.0, epochs=20,
                                                   lr=3e-3, batch_size=32))
    after = kd_loss(student(x), t_logits, y, 4.0, 1.0).item()
    assert after < 0.5 * before


def test_a_diverging_distillation_raises_instead_of_training_on():
    """A NaN teacher logit (here; in practice an exploding loss) stops the fine-tune with
    TrialDiverged, which the search records as the trial's error."""
    from slimtune.compress import TrialDiverged

    x = torch.randn(32, 1, 6, 6)
    t_logits = ConvNet()(x).detach()
    t_logits[0, 0] = float("nan")
    with pytest.raises(TrialDiverged, match="non-finite distillation loss at epoch 1"):
        distill(ConvNet(), t_logits, x, t_logits.nan_to_num().argmax(1),
                DistillConfig(epochs=2, batch_size=32))
