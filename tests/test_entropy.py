"""Entropy-coded artifacts (format 2): the rANS coder, every layer form round-tripped bit
for bit, the coded file never larger than the fixed-width one, corrupt tables refused in
one line, and the two sizes (the file's, and the fixed-width upper bound the budget check
uses) kept apart."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from torch import nn

from slimtune.codec import rans
from slimtune.codec.bits import Reader
from slimtune.codec.streams import CODED, Codes, Gaps, read, write
from slimtune.compress import apply
from slimtune.compress.plain import plain_copy
from slimtune.errors import ArtifactError
from slimtune.export.artifact import decode, encode, streams_of, transcode
from slimtune.export.header import CRC
from slimtune.export.storage import layout, storage
from slimtune.models import build_model
from slimtune.spaces.plan import CompressionPlan, LayerPlan
from tests.hostile import run_cli_many

SHAPE = (1, 4, 4)


# -- the coder ------------------------------------------------------------------------------
def _round_trip(symbols: np.ndarray) -> bytes:
    coded = rans.encode(symbols)
    reader = Reader(coded, 0, len(coded))
    top = int(symbols.max())
    assert (rans.decode(reader, len(symbols), top, "x") == symbols).all()
    assert reader.pos == len(coded)  # every byte read, no more
    return coded


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 9000, 140_000])
def test_rans_round_trips_skewed_flat_constant_and_heavy_tailed_streams(n):
    rng = np.random.default_rng(n)
    streams = {
        "geometric": rng.geometric(0.2, n) - 1,  # gaps of a pruned layer
        "laplace codes": np.clip(np.round(rng.laplace(7, 1.2, n)), 0, 14).astype(np.int64),
        "flat": rng.integers(0, 255, n),
        "constant": np.full(n, 3),
        "heavy tail": (rng.pareto(0.8, n) * 30).astype(np.int64),  # escapes past 4096
    }
    for name, sym in streams.items():
        coded = _round_trip(sym.astype(np.int64))
        bound = rans.entropy_bits(sym) / 8
        if name == "constant":
            assert len(coded) <= 8, name  # its table only: no states, no words
        elif n >= 9000 and name != "heavy tail":
            # the table and the lanes' states cost well under 3 % at this length
            assert len(coded) <= 1.03 * bound + 8, (name, len(coded), bound)


def test_the_numpy_lanes_and_the_plain_python_lane_code_alike():
    rng = np.random.default_rng(0)
    sym = np.clip(np.round(rng.normal(5, 2, 5000)), 0, 10).astype(np.int64)
    counts = np.bincount(sym, minlength=11)
    f = rans._quantize(counts, 12)
    cum = np.concatenate([[0], np.cumsum(f)[:-1]])
    one = rans._encode_one(sym.tolist(), f.tolist(), cum.tolist(), 12)
    lanes = rans._encode_lanes(sym, f, cum, 12, 1)
    assert (one[0] == lanes[0]).all() and (one[1] == lanes[1]).all()
    slot = np.repeat(np.arange(11), f)
    for got, ok in (rans._decode_one(int(one[0][0]), one[1].tolist(), f.tolist(), cum.tolist(),
                                     slot.tolist(), 12, len(sym)),
                    rans._decode_lanes(one[0], one[1], f, cum, slot, 12, len(sym))):
        assert ok and (got == sym).all()
    # and a stream long enough for many lanes is decoded by the numpy path
    assert rans.lanes_for(140_000) > 1 and rans.lanes_for(131_071) == 1


def test_a_damaged_coded_stream_is_refused_never_misread():
    rng = np.random.default_rng(1)
    sym = np.clip(np.round(rng.laplace(7, 1.0, 3000)), 0, 14).astype(np.int64)
    coded = bytes([CODED]) + rans.encode(sym)
    kind = Codes(len(sym), 4)
    assert (read(Reader(coded, 0, len(coded)), kind, "w") == sym).all()
    refused = 0
    for i in range(1, len(coded)):  # every byte: the model, the table, the state, words
        bad = bytearray(coded)
        bad[i] ^= 0x5A
        try:
            got = read(Reader(bytes(bad), 0, len(bad)), kind, "w")
        except ArtifactError as exc:
            assert "`w`" in str(exc) or "truncated" in str(exc)
            refused += 1
            continue
        # a flipped word may decode: then to symbols in range and a different stream
        assert got.max() <= kind.top and not (got == sym).all()
    assert refused >= 0.95 * (len(coded) - 1)
    for cut in (1, 3, 10, len(coded) // 2, len(coded) - 1):  # truncated
        with pytest.raises(ArtifactError):
            read(Reader(coded[:cut], 0, cut), kind, "w")


def test_a_stream_takes_the_coded_form_only_where_it_is_smaller():
    rng = np.random.default_rng(2)
    skewed = np.clip(np.round(rng.laplace(7, 0.8, 4000)), 0, 14).astype(np.int64)
    kind = Codes(4000, 4)
    assert write(kind, skewed)[0] == CODED and len(write(kind, skewed)) < 0.75 * 2001
    flat, kind8 = rng.integers(0, 255, 4000), Codes(4000, 8)  # 7.99 bits: the table loses
    assert write(kind8, flat) == write(kind8, flat, entropy=False)
    tiny = Codes(3, 4)
    assert write(tiny, np.array([1, 2, 3])) == write(tiny, np.array([1, 2, 3]), entropy=False)
    # an index: at half density the bitmap is the entropy; very sparse, the coded gaps win
    keep = rng.random(20_000) < 0.05
    gaps = Gaps(20_000, int(keep.sum()))
    coded = write(gaps, Gaps.of(keep))
    assert coded[0] == CODED and len(coded) < len(write(gaps, Gaps.of(keep), entropy=False))
    got = read(Reader(coded, 0, len(coded)), gaps, "w")
    assert (gaps.mask(got, "w") == keep).all()


# -- every layer form in a file ---------------------------------------------------------------
class Forms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 16, 3, padding=1)  # fan-in 144: takes 2:4
        self.wide = nn.Linear(256, 96)
        self.huge = nn.Linear(96, 1500)  # 144,000 weights: the numpy lanes when dense
        self.fc = nn.Linear(1500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))
        return self.fc(torch.relu(self.huge(torch.relu(self.wide(x.flatten(1))))))


def _plans(bits: int) -> dict[str, CompressionPlan]:
    return {
        "mixed": CompressionPlan({
            "c1": LayerPlan(bits=bits),  # dense
            "c2": LayerPlan(sparsity=0.6, bits=bits, keep_ratio=0.75),  # sparse, pruned
            "c3": LayerPlan(two_four=True, bits=bits),  # 2:4
            "wide": LayerPlan(rank_ratio=0.25, bits=bits),  # factorized: two weights
            "huge": LayerPlan(bits=bits),  # dense and large
            "fc": LayerPlan(sparsity=0.9),  # sparse float32
        }),
        "very sparse": CompressionPlan({n: LayerPlan(sparsity=0.95, bits=bits)
                                        for n in ("c1", "c2", "c3", "wide", "huge", "fc")}),
    }


def _peaked(model: nn.Module) -> nn.Module:
    """``model`` with Laplace-distributed Conv2d / Linear weights: trained weights are
    peaked, not kaiming-uniform, and their codes skewed."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.weight.copy_(torch.distributions.Laplace(0.0, 0.05).sample(m.weight.shape))
    return model


def _student(plan: CompressionPlan, *, constant: dict[str, float] | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = _peaked(Forms().eval())
    with torch.no_grad():
        for name, value in (constant or {}).items():
            model.get_submodule(name).weight.fill_(value)
    return apply(model, plan, SHAPE).eval()


def _files(student: nn.Module, plan: CompressionPlan) -> tuple[bytes, bytes]:
    return (encode(student, "forms", 10, SHAPE, plan),
            encode(student, "forms", 10, SHAPE, plan, entropy=False))


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_every_layer_form_round_trips_bit_for_bit_and_coded_is_never_larger(bits):
    for name, plan in _plans(bits).items():
        student = _student(plan)
        coded, fixed = _files(student, plan)
        assert len(coded) <= len(fixed), name
        # the same codes, masks and values, bit for bit, whichever form each stream took
        got = [decode(blob, model=Forms())[0].state_dict() for blob in (coded, fixed)]
        assert set(got[0]) == set(got[1])
        for key in got[0]:
            assert torch.equal(got[0][key], got[1][key]), (name, key)
        recs = [streams_of(blob, model=Forms()).records for blob in (coded, fixed)]
        assert [r.kind for r in recs[0]] == [r.kind for r in recs[1]]
        for a, b in zip(*recs, strict=True):
            assert np.array_equal(a.symbols, b.symbols), (name, a.key, a.kind)
        want = plain_copy(student)[0].state_dict()  # the student as it ran in memory
        for key in want:
            torch.testing.assert_close(got[0][key], want[key], rtol=0, atol=1e-6)
        streams = layout(coded, model=Forms())
        kinds = {(s["key"], s["stream"]) for s in streams}
        if name == "mixed":  # every form is there
            assert {("c3.weight", "2:4 index"), ("c2.weight", "sparse index"),
                    ("wide.0.weight", "codes"), ("wide.1.weight", "codes"),
                    ("fc.weight", "float32 values")} <= kinds
        for s in streams:  # each stream as small as its smaller form
            assert s["bytes"] <= s["fixed_bytes"], s
        # the coded file is exactly the fixed one transcoded, and back
        assert transcode(fixed, model=Forms()) == coded
        assert transcode(coded, entropy=False, model=Forms()) == fixed
        if bits >= 4 and name == "mixed":  # peaked codes: the large layer's codes shrink
            huge = next(s for s in streams if s["key"] == "huge.weight")
            assert huge["coded"] and huge["bytes"] < 0.9 * huge["fixed_bytes"]


def test_all_zero_and_single_value_layers_cost_their_table_and_round_trip():
    plan = CompressionPlan({n: LayerPlan(bits=4) for n in ("c1", "c2", "c3", "huge")}
                           | {"fc": LayerPlan(sparsity=0.5, bits=8)})
    student = _student(plan, constant={"c1": 0.0, "huge": 0.3, "fc": -0.7})
    coded, fixed = _files(student, plan)
    got, again = (decode(b, model=Forms())[0].state_dict() for b in (coded, fixed))
    assert all(torch.equal(got[k], again[k]) for k in got)
    assert (got["c1.weight"] == 0).all() and got["huge.weight"].unique().numel() == 1
    streams = {(s["key"], s["stream"]): s for s in layout(coded, model=Forms())}
    for key in ("c1.weight", "huge.weight", "fc.weight"):
        codes = streams[(key, "codes")]
        assert codes["coded"] and codes["bytes"] <= 8, codes  # one symbol: table only
        assert codes["entropy_bytes"] == 0
    assert len(coded) < len(fixed) - 144_000 // 2 + 100  # huge's 4-bit codes are gone


def test_a_file_that_would_look_like_a_decompression_bomb_stays_fixed_width():
    model = nn.Sequential(nn.Linear(8192, 128, bias=False))  # 1M weights, all equal
    with torch.no_grad():
        model[0].weight.fill_(0.5)
    plan = CompressionPlan({"0": LayerPlan(bits=2)})
    student = apply(model, plan).eval()
    from slimtune.models import zoo

    zoo.MODELS["bomb_like"] = lambda n, s: nn.Sequential(nn.Linear(8192, 128, bias=False))
    try:
        coded = encode(student, "bomb_like", 128, (8192,), plan)
        # entropy-coded it would be its scales and a table, 2,000x smaller than 1M weights:
        # what the loader refuses as a bomb
        assert coded == encode(student, "bomb_like", 128, (8192,), plan, entropy=False)
        assert len(coded) > 250_000
        assert decode(coded)[0][0].weight.unique().numel() == 1
    finally:
        del zoo.MODELS["bomb_like"]


# -- corrupt tables, in a file ----------------------------------------------------------------
def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_a_flipped_or_truncated_table_is_one_line_and_exit_2(tmp_path):
    torch.manual_seed(0)
    teacher = build_model("small_cnn", 10, (1, 8, 8)).eval()
    _peaked(teacher)
    plan = CompressionPlan({"classifier.1": LayerPlan(bits=6)})
    blob = encode(apply(teacher, plan, (1, 8, 8)), "small_cnn", 10, (1, 8, 8), plan)
    rec = next(r for r in streams_of(blob).records if r.tag == CODED)
    table = rec.start + 4  # tag, scale, escape width, alphabet: then the table
    cases = {
        "flipped.slim": _with_crc(blob[:table + 2] + bytes([blob[table + 2] ^ 0xFF])
                                  + blob[table + 3:-CRC.size]),
        "scale.slim": _with_crc(blob[:rec.start + 1] + bytes([17]) + blob[rec.start + 2:-4]),
        "truncated.slim": _with_crc(blob[:table + 5] + blob[table + 40:-CRC.size]),
        "stale-crc.slim": blob[:table + 2] + bytes([blob[table + 2] ^ 0xFF]) + blob[table + 3:],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ArtifactError):
            decode(data)
    words = {"flipped.slim": "classifier.1.weight", "scale.slim": "invalid model",
             "truncated.slim": "frequency table", "stale-crc.slim": "checksum"}
    results = run_cli_many([["eval", name, "--data", "digits"] for name in words], tmp_path)
    for word, result in zip(words.values(), results, strict=True):
        assert "artifact" in result.assert_refused(word)
    assert decode(blob)[0] is not None  # and unchanged, it loads


def test_storage_reports_bits_per_weight_and_the_fixed_width_size():
    plan = _plans(4)["mixed"]
    student = _student(plan)
    coded, fixed = _files(student, plan)
    model = decode(coded, model=Forms())[0]
    s = storage(coded, model)
    assert s["format"] == 2 and s["size_bytes"] == len(coded)
    assert s["fixed_size_bytes"] == len(fixed)
    assert s["bits_per_weight"] == pytest.approx(8 * len(coded) / s["stored_weights"])
    per = {w["weight"]: w for w in s["weights"]}
    assert per["huge.weight"]["stored"] == 144_000
    assert per["huge.weight"]["bits_per_weight"] < 4  # 4-bit codes, entropy-coded
    assert per["fc.weight"]["streams"][-1]["stream"] == "float32 values"


# -- the two sizes in a trial -----------------------------------------------------------------
def test_the_budget_check_uses_the_fixed_width_size_and_the_front_the_file():
    from slimtune.compress.recalibrate import recalibrate_batchnorm
    from slimtune.data.datasets import load_dataset
    from slimtune.objectives.measure import Measured
    from slimtune.search.trial import TrialSpec, budget_size, run_trial

    torch.manual_seed(0)
    teacher = build_model("small_cnn", 10, (1, 8, 8)).eval()
    _peaked(teacher)
    names = [n for n, m in teacher.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    plan = CompressionPlan({n: LayerPlan(bits=6, sparsity=0.3) for n in names})
    data = load_dataset("digits", None, 400, None)
    student = apply(teacher, plan, (1, 8, 8))
    recalibrate_batchnorm(student, data.train, generator=torch.Generator().manual_seed(0))
    before = Measured.of(student, "small_cnn", 10, (1, 8, 8), plan, data.val)
    coded, fixed = len(before.blob), before.fixed_size
    assert coded < fixed - 1

    def trial(max_size: int) -> dict:
        spec = TrialSpec(model="small_cnn", data="digits", plan=plan.to_dict(), epochs=1,
                         lr=1e-3, batch_size=64, seed=0, subset=400, max_size=max_size,
                         early_stop=False)
        return run_trial(spec, teacher.state_dict())

    # the untrained file would fit, but training may change its coded size: not trained
    over = trial(fixed - 1)
    assert over["status"] == "over_budget" and over["epochs_trained"] == 0
    assert over["size_bytes"] == coded and over["fixed_size_bytes"] == fixed
    assert budget_size(over) == fixed  # what the constraint tells the sampler
    done = trial(fixed)  # at the bound: trained; the file after training is what it records
    assert done["status"] == "complete"
    assert done["size_bytes"] == len(done["artifact"]) <= fixed == done["fixed_size_bytes"]
    assert done["stored_weights"] > 0
