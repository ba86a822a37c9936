from __future__ import annotations

import random
import struct
import zlib

import optuna
import pytest
import torch

import slimtune
from slimtune.compress import apply
from slimtune.errors import ArtifactError, SlimtuneError
from slimtune.export.artifact import decode, encode, save
from slimtune.models import build_model
from slimtune.spaces import CompressionPlan, SearchSpace

CASES = [("conv_net", (1, 6, 6), 5), ("small_cnn", (1, 8, 8), 10)]


def _random_plans(model, n, seed):
    space = SearchSpace.from_model(model)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    plans = []
    for _ in range(n):
        trial = study.ask()
        plans.append(space.sample(trial))
        study.tell(trial, 0.0)
    return plans


@pytest.mark.parametrize("name, shape, classes", CASES)
def test_export_round_trip_matches_the_in_memory_student_and_its_size(name, shape, classes,
                                                                      tmp_path):
    teacher = build_model(name, classes, shape).eval()
    x = torch.randn(16, *shape)
    for i, plan in enumerate(_random_plans(teacher, 15, seed=len(name))):
        student = apply(teacher, plan).eval()
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
    layers = SearchSpace.from_model(teacher).layers
    dense = len(encode(teacher, "small_cnn", 10, (1, 8, 8), CompressionPlan()))
    sizes = []
    for bits in (8, 4, 2):
        plan = CompressionPlan.uniform(list(layers), sparsity=0.5, bits=bits)
        sizes.append(len(encode(apply(teacher, plan), "small_cnn", 10, (1, 8, 8), plan)))
    assert dense > sizes[0] > sizes[1] > sizes[2]
    assert dense / sizes[2] > 10


def _blob():
    teacher = build_model("conv_net", 5, (1, 6, 6)).eval()
    plan = CompressionPlan.uniform(list(SearchSpace.from_model(teacher).layers),
                                   sparsity=0.5, rank_ratio=0.6, bits=3)
    return encode(apply(teacher, plan), "conv_net", 5, (1, 6, 6), plan)


def _resign(body: bytes) -> bytes:
    """Recompute the checksum so only the structural checks can catch the damage."""
    return body + struct.pack("<I", zlib.crc32(body))


def test_truncated_and_corrupted_artifacts_raise_artifact_error():
    blob = _blob()
    rng = random.Random(0)
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
