"""ONNX export of decoded students, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from slimtune.compress import apply
from slimtune.errors import SlimtuneError
from slimtune.export.artifact import decode, encode
from slimtune.export.onnx import export_onnx
from slimtune.models import build_model
from slimtune.spaces import CompressionPlan, LayerPlan, SearchSpace

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

NAME, CLASSES, SHAPE = "small_cnn", 10, (1, 8, 8)


def _plans(teacher: torch.nn.Module) -> dict[str, CompressionPlan]:
    layers = list(SearchSpace.from_model(teacher).layers)
    return {
        "uniform": CompressionPlan.uniform(layers, sparsity=0.5, rank_ratio=0.5, bits=4),
        "partial_factorization": CompressionPlan({
            layers[1]: LayerPlan(rank_ratio=0.25),
            layers[3]: LayerPlan(rank_ratio=0.5, sparsity=0.3, bits=8),
        }),
        "teacher": CompressionPlan(),
    }


def _loaded_student(plan_name: str) -> torch.nn.Module:
    teacher = build_model(NAME, CLASSES, SHAPE).eval()
    plan = _plans(teacher)[plan_name]
    student = apply(teacher, plan).eval()
    return decode(encode(student, NAME, CLASSES, SHAPE, plan))[0]


@pytest.mark.parametrize("plan_name", ["uniform", "partial_factorization", "teacher"])
def test_exported_student_matches_pytorch_in_onnxruntime(plan_name, tmp_path, capfd):
    model = _loaded_student(plan_name)
    path = tmp_path / "out" / f"{plan_name}.onnx"
    report = export_onnx(model, SHAPE, path)
    assert capfd.readouterr() == ("", "")  # the exporter and onnxruntime stay quiet

    assert report["path"] == str(path)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no external data
    assert report["bytes"] == path.stat().st_size > 0
    assert report["argmax_agreement"] >= 0.995
    assert report["max_abs_diff"] < 1e-4
    assert isinstance(report["opset"], int) and report["opset"] >= 13
    assert not model.training

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for batch in (1, 7):
        x = torch.randn(batch, *SHAPE)
        (got,) = session.run(["logits"], {"input": x.numpy()})
        assert got.shape == (batch, CLASSES)
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-4)


class _DataDependent(torch.nn.Module):
    """Python control flow on a tensor's value: torch.export cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x.flatten(1))
        return -self.fc(x.flatten(1))


def test_a_model_that_cannot_be_exported_raises_and_leaves_no_file(tmp_path, capsys):
    path = tmp_path / "bad.onnx"
    with pytest.raises(SlimtuneError, match="ONNX export failed") as info:
        export_onnx(_DataDependent().eval(), SHAPE, path)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_bad_paths_and_shapes_raise(tmp_path):
    model = build_model(NAME, CLASSES, SHAPE).eval()
    with pytest.raises(SlimtuneError, match="is a directory"):
        export_onnx(model, SHAPE, tmp_path)
    with pytest.raises(SlimtuneError, match="fails on inputs of shape"):
        export_onnx(model, (3, 8, 8), tmp_path / "m.onnx")
    with pytest.raises(SlimtuneError, match="check_batch"):
        export_onnx(model, SHAPE, tmp_path / "m.onnx", check_batch=0)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_runtime_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(SlimtuneError, match="pip install onnxruntime"):
        export_onnx(build_model(NAME, CLASSES, SHAPE).eval(), SHAPE, tmp_path / "m.onnx")
