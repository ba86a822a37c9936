from __future__ import annotations

import random
import struct
import zlib

import pytest
import torch

import slimtune
from slimtune.compress import apply
from slimtune.errors import ArtifactError, SlimtuneError
from slimtune.export.artifact import decode, encode, save
from slimtune.models import build_model
from slimtune.spaces import CompressionPlan, SearchSpace
from tests.tiny_models import random_plans

CASES = [("conv_net", (1, 6, 6), 5), ("small_cnn", (1, 8, 8), 10)]


@pytest.mark.parametrize("name, shape, classes", CASES)
def test_export_round_trip_matches_the_in_memory_student_and_its_size(name, shape, classes,
                                                                      tmp_path):
    teacher = build_model(name, classes, shape).eval()
    x = torch.randn(16, *shape)
    for i, plan in enumerate(random_plans(teacher, shape, 15, seed=len(name))):
        student = apply(teacher, plan, shape).eval()
        blob = encode(student, name, classes, shape, plan)
        path = tmp_path / f"s{i}.slim"
        save(path, blob)
        assert path.stat().st_size == len(blob)
        loaded = slimtune.load(path)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), student(x), rtol=1e-5, atol=1e-5)
            assert torch.equal(loaded(x).argmax(1), student(x).argmax(1))


def test_compression_makes_the_file_smaller():
    teacher = build_model("small_cnn", 10, (1, 8, 8)).eval()
    layers = SearchSpace.from_model(teacher, (1, 8, 8)).layers
    dense = len(encode(teacher, "small_cnn", 10, (1, 8, 8), CompressionPlan()))
    sizes = []
    for bits in (8, 4, 2):
        plan = CompressionPlan.uniform(list(layers), sparsity=0.5, bits=bits)
        sizes.append(len(encode(apply(teacher, plan), "small_cnn", 10, (1, 8, 8), plan)))
    assert dense > sizes[0] > sizes[1] > sizes[2]
    assert dense / sizes[2] > 10


def _blobs():
    """Artifacts with every section kind: scales, bitmap and delta indices, packed codes,
    float32 values, structured-pruned and factorized layers, a residual model."""
    out = []
    for name, shape, classes, kw in [
        ("conv_net", (1, 6, 6), 5, dict(sparsity=0.5, rank_ratio=0.6, bits=3)),
        ("conv_net", (1, 6, 6), 5, dict(sparsity=0.95, bits=32)),  # delta-coded indices
        ("tiny_resnet", (1, 8, 8), 10, dict(sparsity=0.3, keep_ratio=0.5, bits=6)),
    ]:
        teacher = build_model(name, classes, shape).eval()
        space = SearchSpace.from_model(teacher, shape)
        plan = CompressionPlan.uniform(list(space.layers), keep_all=space.fixed_channels, **kw)
        out.append(encode(apply(teacher, plan, shape), name, classes, shape, plan))
    return out


def _resign(body: bytes) -> bytes:
    """Recompute the checksum so only the structural checks can catch the damage."""
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("which", [0, 1, 2])
def test_truncated_and_corrupted_artifacts_raise_artifact_error(which):
    blob = _blobs()[which]
    rng = random.Random(which)
    damaged = [blob[:n] for n in range(0, len(blob), max(1, len(blob) // 60))]
    for _ in range(150):
        b = bytearray(blob)
        pos = rng.randrange(len(b))
        b[pos] ^= 1 << rng.randrange(8)
        damaged.append(bytes(b))
        body = bytes(b[:-4])
        damaged.append(_resign(body))  # tampered and re-signed
        damaged.append(_resign(body[: rng.randrange(len(body))]))  # truncated and re-signed
    damaged.append(blob + b"\x00")
    rejected = 0
    for d in damaged:
        try:
            decode(d)
        except ArtifactError:
            rejected += 1
            continue
        # a re-signed flip inside the float payload can still be a valid model: then it
        # must at least rebuild the same structure without error
    assert rejected >= len(damaged) - 150
    # every damaged file with the original checksum is rejected
    for d in damaged:
        if d[-4:] == blob[-4:] and d != blob:
            with pytest.raises(ArtifactError):
                decode(d)


def test_artifact_error_is_a_slimtune_error_and_load_never_unpickles(tmp_path):
    p = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), p)  # a pickle: must be refused, not executed
    with pytest.raises(SlimtuneError, match="not a slimtune artifact"):
        slimtune.load(p)
