"""Size and FLOPs of models small enough to count by hand."""

from __future__ import annotations

import torch

from slimtune.compress import apply
from slimtune.export.artifact import Header
from slimtune.objectives import accuracy, flops
from slimtune.objectives.size import size_bytes
from slimtune.spaces import CompressionPlan, LayerPlan
from tests.tiny_models import ConvNet, TwoLinear

PREFIX, CRC = 13, 4  # b"SLIMTUNE" + u8 format + u32 header length; u32 CRC-32


def _payload(model, plan, shape=(4,), *, entropy=True):
    """Artifact size minus the fixed prefix, header and checksum."""
    header = Header("two_linear", 2, shape, plan).to_bytes()
    if entropy:
        size = size_bytes(model, "two_linear", 2, shape, plan)
    else:
        from slimtune.export.artifact import encode

        size = len(encode(model, "two_linear", 2, shape, plan, entropy=False))
    return size - PREFIX - len(header) - CRC


def test_flops_of_hand_countable_models():
    assert flops(TwoLinear(), (4,)) == 4 * 3 + 3 * 2
    # c1: 4 x 6 x 6 outputs x 9 MACs; c2: 8 x 3 x 3 outputs x (4 x 9) MACs; fc: 72 x 5
    assert flops(ConvNet(), (1, 6, 6)) == 4 * 36 * 9 + 8 * 9 * 36 + 72 * 5


def test_flops_of_a_factorized_model_counts_both_halves():
    plan = CompressionPlan({"c2": LayerPlan(rank_ratio=0.25)})  # rank 2 of 8
    student = apply(ConvNet(), plan)
    # c2 -> 3x3 conv 4 -> 2 (2 x 9 outputs x 36) + 1x1 conv 2 -> 8 (8 x 9 outputs x 2)
    assert flops(student, (1, 6, 6)) == 4 * 36 * 9 + 2 * 9 * 36 + 8 * 9 * 2 + 72 * 5


def test_size_of_an_uncompressed_model_is_its_float32_tensors():
    model = TwoLinear()
    assert _payload(model, CompressionPlan()) == 4 * (12 + 3 + 6 + 2)


def test_size_counts_packed_nonzeros_bitmap_scales_and_biases_by_hand():
    plan = CompressionPlan({"fc1": LayerPlan(sparsity=0.5, bits=4),
                            "fc2": LayerPlan(sparsity=0.0, bits=3)})
    student = apply(TwoLinear(), plan)
    # fixed-width: scales, tag + bitmap of 12, tag + 6 non-zeros x 4 bits, bias
    fc1 = 3 * 4 + 1 + 2 + 1 + 3 + 3 * 4
    fc2 = 2 * 4 + 1 + 3 + 2 * 4  # scales, tag + 6 codes x 3 bits = 18 bits -> 3 bytes, bias
    assert _payload(student, plan, entropy=False) == fc1 + fc2
    assert _payload(student, plan) <= fc1 + fc2  # entropy-coded only where smaller


def test_size_of_pruned_float32_weights():
    plan = CompressionPlan({"fc1": LayerPlan(sparsity=0.75)})  # 9 of 12 zeroed
    student = apply(TwoLinear(), plan)
    assert _payload(student, plan) == (1 + 2 + 3 * 4 + 3 * 4) + (6 * 4 + 2 * 4)


def test_a_very_sparse_layer_stores_delta_coded_indices_when_smaller():
    from torch import nn

    from slimtune.codec import Reader
    from slimtune.codec.streams import DELTA, Gaps, read, write

    model = nn.Sequential(nn.Linear(100, 10))  # 1000 weights
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1000, dtype=torch.float32).reshape(10, 100))
    plan = CompressionPlan({"0": LayerPlan(sparsity=0.99)})  # keeps 10: indices 990..999
    student = apply(model, plan)
    keep = (student[0].weight != 0).flatten().numpy()
    assert keep.sum() == 10 and keep[990:].all()
    # gaps: 990 then nine 0s -> width 10 bits; 2 + ceil(10 * 10 / 8) = 15 bytes < 1 + 125
    kind = Gaps(1000, 10)
    index = write(kind, Gaps.of(keep), entropy=False)
    assert len(index) == 15 and index[0] == DELTA
    assert (kind.mask(read(Reader(index, 0, len(index)), kind, "w"), "w") == keep).all()
    header = Header("m", 10, (100,), plan).to_bytes()
    payload = len(index) + 10 * 4 + 10 * 4  # index, float32 values, bias
    from slimtune.export.artifact import encode
    from slimtune.models import zoo

    zoo.MODELS["m"] = lambda n, s: nn.Sequential(nn.Linear(100, 10))
    try:
        blob = encode(student, "m", 10, (100,), plan, entropy=False)
    finally:
        del zoo.MODELS["m"]
    assert len(blob) == PREFIX + len(header) + payload + CRC


def test_accuracy_is_the_fraction_of_correct_argmax():
    model = torch.nn.Identity()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.2, 0.1]])
    y = torch.tensor([0, 1, 1, 0])
    assert accuracy(model, x, y) == 0.75
