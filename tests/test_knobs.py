"""The knob registry (slimtune.knobs) and its proof, the 2:4 semi-structured sparsity knob:
searched, packed exactly, loaded, counted in effective FLOPs."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import optuna
import pytest
import torch

import slimtune
from slimtune.codec import Reader, streams
from slimtune.codec.streams import FIXED
from slimtune.compress import apply
from slimtune.errors import ArtifactError, ConfigError
from slimtune.export.artifact import decode, encode, save, stored_weights
from slimtune.export.header import PREFIX
from slimtune.knobs import KNOBS
from slimtune.knobs.two_four import KNOB as TWO_FOUR
from slimtune.knobs.two_four import applies
from slimtune.models import build_model
from slimtune.objectives.flops import count_flops
from slimtune.spaces import CompressionPlan, LayerPlan, SearchSpace
from slimtune.viz.front import plan_summary

SHAPE, CLASSES = (1, 8, 8), 10


def _teacher() -> torch.nn.Module:
    return build_model("small_cnn", CLASSES, SHAPE).eval()


def _groups_kept(w: torch.Tensor) -> torch.Tensor:
    """Non-zero weights per group of four consecutive fan-in positions."""
    return (w.detach().reshape(w.shape[0], -1, 4) != 0).sum(-1)


@pytest.mark.parametrize("name", list(KNOBS))
def test_every_knob_round_trips_through_a_plan_and_refuses_a_bad_value(name):
    k = KNOBS[name]
    value = k.space.values[-1] if hasattr(k.space, "values") else k.space.high * 0.5
    plan = CompressionPlan({"a": LayerPlan(**{name: value})})
    again = CompressionPlan.from_json(json.dumps(json.loads(plan.to_json())))
    assert again == plan and again.layer("a")[name] == k.check(value)
    with pytest.raises(ConfigError, match=name):
        LayerPlan(**{name: "nonsense"})


def test_a_plan_without_new_knobs_is_written_as_plan_version_1_was():
    lp = LayerPlan(sparsity=0.5, bits=4)
    assert list(lp.to_dict()) == ["sparsity", "rank_ratio", "bits", "keep_ratio"]
    assert LayerPlan(two_four=True).to_dict()["two_four"] is True
    with pytest.raises(ConfigError, match="unknown knob `fancy`"):
        LayerPlan(fancy=1)
    assert "2:4" in plan_summary(CompressionPlan({"a": LayerPlan(two_four=True)}).to_dict())
    assert "2:4" not in plan_summary(CompressionPlan({"a": LayerPlan()}).to_dict())


def test_two_four_is_searched_only_when_asked_for():
    teacher = _teacher()
    plain = SearchSpace.from_model(teacher, SHAPE)
    with_24 = SearchSpace.from_model(teacher, SHAPE, knobs=("two_four",))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    t = study.ask()
    plain.sample(t)
    assert not any(p.endswith(".two_four") for p in t.params)
    seen = set()
    for _ in range(8):
        t = study.ask()
        plan = with_24.sample(t)
        assert {f"{n}.two_four" for n in with_24.layers} <= set(t.params)
        seen |= {plan.layer(n).two_four for n in with_24.layers}
        study.tell(t, 0.0)
    assert seen == {False, True}
    with pytest.raises(ConfigError, match="unknown knob"):
        SearchSpace(layers=("a",), knobs=("three_eight",))


def test_two_four_keeps_two_of_every_four_and_the_zeros_survive_fine_tuning():
    teacher = _teacher()
    layers = SearchSpace.from_model(teacher, SHAPE).layers
    plan = CompressionPlan({n: LayerPlan(two_four=True) for n in layers})
    student = apply(teacher, plan, SHAPE)
    mods = dict(student.named_modules())
    took = [n for n in layers if applies(tuple(mods[n].weight.shape))]
    assert took and len(took) < len(layers)  # the 1-channel 3x3 stem (fan-in 9) is left alone
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        student(torch.randn(4, *SHAPE)).square().sum().backward()
        opt.step()
    for n in took:
        assert (_groups_kept(mods[n].weight) == 2).all()
    # the kept two are the largest two of each group of the teacher's weights
    w = dict(teacher.named_modules())[took[0]].weight.detach().reshape(-1, 4).abs()
    s = apply(teacher, plan, SHAPE).get_submodule(took[0]).weight.detach().reshape(-1, 4)
    assert torch.equal((s != 0), w >= w.topk(2, dim=1).values[:, 1:])


@pytest.mark.parametrize("extra", [
    {},
    {"bits": 4},
    {"sparsity": 0.3},  # asks for fewer zeros than 2:4 made: no second index
    {"sparsity": 0.8, "bits": 3},  # more: an index over the kept half
    {"rank_ratio": 0.25, "bits": 8},  # both halves of the factorized layer
    {"keep_ratio": 0.5, "bits": 6},
])
def test_two_four_artifact_is_exact_in_size_loads_and_counts_in_effective_flops(
        extra, tmp_path):
    teacher = _teacher()
    space = SearchSpace.from_model(teacher, SHAPE)
    plan = CompressionPlan({n: LayerPlan(two_four=True, **({k: v for k, v in extra.items()
                                                            if k != "keep_ratio"}
                                                           if n in space.fixed_channels
                                                           else extra))
                            for n in space.layers})
    student = apply(teacher, plan, SHAPE).eval()
    blob = encode(student, "small_cnn", CLASSES, SHAPE, plan)
    path = tmp_path / "m.slim"
    save(path, blob)
    assert path.stat().st_size == len(blob)
    loaded = slimtune.load(path)
    x = torch.randn(8, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), student(x), rtol=1e-5, atol=1e-5)
    stored = stored_weights(loaded, plan)
    for name, module in loaded.named_modules():
        if name in stored and applies(tuple(module.weight.shape)):
            assert (_groups_kept(module.weight) <= 2).all()
            n = module.weight.numel()
            want = min(n // 2, n - round(extra.get("sparsity", 0.0) * n))
            assert stored[name][0] == want
            assert int((module.weight != 0).sum()) <= want
    report = count_flops(loaded, SHAPE, stored)
    dense_only = count_flops(apply(teacher, CompressionPlan(
        {n: LayerPlan(**{k: v for k, v in plan.layer(n).active().items() if k != "two_four"})
         for n in space.layers}), SHAPE), SHAPE)
    assert report.dense == dense_only.dense
    if extra.get("sparsity", 0.0) < 0.5:  # 2:4 zeroes more than the plan's sparsity
        assert report.effective < dense_only.effective
    else:  # as many as unstructured sparsity alone, placed in the pattern
        assert report.effective == dense_only.effective


def test_two_four_index_costs_three_bits_a_group():
    teacher = _teacher()
    layers = SearchSpace.from_model(teacher, SHAPE).layers
    name = next(n for n in layers if applies(tuple(teacher.get_submodule(n).weight.shape)))
    n = teacher.get_submodule(name).weight.numel()
    sizes = {}
    for key, lp in (("24", LayerPlan(two_four=True)), ("half", LayerPlan(sparsity=0.5))):
        plan = CompressionPlan({name: lp})
        blob = encode(apply(teacher, plan, SHAPE), "small_cnn", CLASSES, SHAPE, plan,
                      entropy=False)
        _, _, hlen = PREFIX.unpack_from(blob)
        sizes[key] = len(blob) - PREFIX.size - hlen  # the payload: the headers differ
    # both keep n/2 float32 values; fixed-width, 2:4 stores a tag byte and 3 bits per group
    # of four, the unstructured index a bitmap (a tag byte and n bits; gaps would be larger
    # at 50 %)
    assert sizes["half"] - sizes["24"] == (n // 8 + 1) - (1 + (n // 4 * 3 + 7) // 8)


def test_a_corrupt_two_four_index_is_refused():
    before = np.ones(16, dtype=bool)
    kind = TWO_FOUR.index_kind((1, 16), True, 16, 8)
    raw = bytes([FIXED, 0xFF, 0xFF])  # codes 7: no pattern has that number
    with pytest.raises(ArtifactError, match="2:4 index for `w` is corrupted"):
        TWO_FOUR.mask_of(streams.read(Reader(raw, 0, 3), kind, "w"), before, True, (1, 16), "w")
    with pytest.raises(ArtifactError, match="truncated"):
        streams.read(Reader(raw, 0, 2), kind, "w")
    # in a file: the 2:4 codes of one layer set to 7, the CRC made to match
    teacher = _teacher()
    layers = SearchSpace.from_model(teacher, SHAPE).layers
    name = next(n for n in layers if applies(tuple(teacher.get_submodule(n).weight.shape)))
    plan = CompressionPlan({name: LayerPlan(two_four=True)})
    blob = encode(apply(teacher, plan, SHAPE), "small_cnn", CLASSES, SHAPE, plan,
                  entropy=False)
    _, _, hlen = PREFIX.unpack_from(blob)
    state = teacher.state_dict()
    offset = PREFIX.size + hlen + sum(  # the raw tensors before the layer's weight
        t.numel() * t.element_size() for k, t in
        list(state.items())[:list(state).index(f"{name}.weight")])
    body = bytearray(blob[:-4])
    assert body[offset] == FIXED  # the stream's tag: fixed-width
    body[offset + 1:offset + 4] = b"\xff\xff\xff"
    with pytest.raises(ArtifactError, match=f"2:4 index for `{name}.weight` is corrupted"):
        decode(bytes(body) + struct.pack("<I", zlib.crc32(bytes(body))))
    assert decode(blob)[0] is not None  # and unchanged, it loads
