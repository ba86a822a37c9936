"""Files of before the knob registry (issue 11) and of format 1 (before entropy coding,
issue 18) still load, and the same plan writes the same codes: ``tests/data/v1_small_cnn.slim``
was written by commit d504782 (small_cnn, seed 0, every knob of plan version 1 on some
layer), with the student's logits beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import slimtune
from slimtune.compress import apply
from slimtune.export.artifact import encode, read_header, transcode
from slimtune.export.storage import layout
from slimtune.models import build_model

DATA = Path(__file__).parent / "data"
SHAPE = (1, 8, 8)


def test_an_artifact_of_before_the_registry_loads_to_the_same_outputs():
    model = slimtune.load(DATA / "v1_small_cnn.slim")
    torch.manual_seed(1)
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        got = model(x).numpy()
    np.testing.assert_allclose(got, np.load(DATA / "v1_small_cnn_logits.npy"), rtol=1e-5,
                               atol=1e-5)


def test_the_same_plan_writes_what_the_format_1_file_transcodes_to():
    old = (DATA / "v1_small_cnn.slim").read_bytes()
    assert old[8] == 1  # format 1
    plan = read_header(DATA / "v1_small_cnn.slim").plan
    assert {k for lp in plan.to_dict()["layers"].values() for k in lp} == {
        "sparsity", "rank_ratio", "bits", "keep_ratio"}
    torch.manual_seed(0)
    teacher = build_model("small_cnn", 10, SHAPE).eval()
    student = apply(teacher, plan, SHAPE).eval()
    new = {e: encode(student, "small_cnn", 10, SHAPE, plan, entropy=e) for e in (True, False)}
    for entropy, blob in new.items():
        assert blob[8] == 2
        assert transcode(old, entropy=entropy) == blob
    # fixed-width, format 2 is format 1 with a tag byte on each weight's codes (a
    # factorized layer has two weights)
    codes = [r for r in layout(new[False]) if r["stream"] == "codes"]
    assert len(codes) >= 4 and not any(r["coded"] for r in codes)
    assert len(new[False]) == len(old) + len(codes)
    assert len(new[True]) <= len(new[False])
