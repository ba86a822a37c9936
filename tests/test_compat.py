"""Files of before the knob registry (issue 11) still load, and the same plan writes the
same bytes: ``tests/data/v1_small_cnn.slim`` was written by commit d504782 (small_cnn,
seed 0, every knob of plan version 1 on some layer), with the student's logits beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import slimtune
from slimtune.compress import apply
from slimtune.export.artifact import encode, read_header
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


def test_the_same_plan_writes_the_same_bytes_as_before():
    old = (DATA / "v1_small_cnn.slim").read_bytes()
    plan = read_header(DATA / "v1_small_cnn.slim").plan
    assert {k for lp in plan.to_dict()["layers"].values() for k in lp} == {
        "sparsity", "rank_ratio", "bits", "keep_ratio"}
    torch.manual_seed(0)
    teacher = build_model("small_cnn", 10, SHAPE).eval()
    student = apply(teacher, plan, SHAPE).eval()
    assert encode(student, "small_cnn", 10, SHAPE, plan) == old
