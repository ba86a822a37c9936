"""Low-bit and fully quantized ONNX (issue 16): each file loads in a plain onnxruntime
session, holds integers of the stated width, and agrees with the PyTorch student on the
digits test split; the latency objective times it in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimtune.compress import apply
from slimtune.compress.distill import DistillConfig, distill
from slimtune.errors import ConfigError, SlimtuneError
from slimtune.export.artifact import decode, encode
from slimtune.export.onnx import calibration_images, export_onnx, onnx_files, quantized_layers
from slimtune.export.onnx_options import OnnxOptions
from slimtune.models import build_model
from slimtune.models.teacher import TeacherConfig, train_teacher
from slimtune.spaces import CompressionPlan, LayerPlan, SearchSpace

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402

NAME, CLASSES = "small_cnn", 10
#: ONNX type of a b-bit layer's codes
TYPE_OF = {2: onnx.TensorProto.INT2, 3: onnx.TensorProto.INT4, 4: onnx.TensorProto.INT4,
           6: onnx.TensorProto.INT8, 8: onnx.TensorProto.INT8}


@pytest.fixture(scope="module")
def trained(digits):
    """small_cnn trained on digits (a few epochs: well above chance)."""
    torch.manual_seed(0)
    model = build_model(NAME, CLASSES, digits.input_shape)
    train_teacher(model, digits, TeacherConfig(epochs=8))
    return model.eval()


def _plans(layers: list[str]) -> dict[str, CompressionPlan]:
    return {
        "4bit_sparse": CompressionPlan.uniform(layers, sparsity=0.5, bits=4),
        "mixed_2_3_6_8": CompressionPlan({
            layers[0]: LayerPlan(bits=8), layers[1]: LayerPlan(bits=6, keep_ratio=0.5),
            layers[2]: LayerPlan(bits=3, rank_ratio=0.5), layers[3]: LayerPlan(bits=2),
            layers[4]: LayerPlan(bits=8)}),
        "partly_float": CompressionPlan({layers[1]: LayerPlan(bits=4, keep_ratio=0.75),
                                         layers[3]: LayerPlan(rank_ratio=0.5)}),
    }


_STUDENTS: dict[str, tuple[torch.nn.Module, CompressionPlan]] = {}


def _student(trained, digits, plan_name):
    """The plan's student, distilled for 3 epochs (as a search's trial), decoded from its
    artifact: what `slimtune export` hands the ONNX exporter."""
    if plan_name not in _STUDENTS:
        layers = list(SearchSpace.from_model(trained).layers)
        plan = _plans(layers)[plan_name]
        student = apply(trained, plan, digits.input_shape)
        distill(student, trained, digits.train, DistillConfig(epochs=3),
                generator=torch.Generator().manual_seed(0))
        student.eval()
        _STUDENTS[plan_name] = (
            decode(encode(student, NAME, CLASSES, digits.input_shape, plan))[0], plan)
    return _STUDENTS[plan_name]


def _initializers(path):
    return {t.name: t for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("plan_name", ["4bit_sparse", "mixed_2_3_6_8", "partly_float"])
def test_lowbit_file_holds_integers_of_each_layers_width_and_agrees_with_pytorch(
        trained, digits, plan_name, tmp_path, capfd):
    model, plan = _student(trained, digits, plan_name)
    bits = quantized_layers(model, plan)
    assert bits and all(b < 32 for b in bits.values())
    float_report = export_onnx(model, digits.input_shape, tmp_path / "m.onnx")
    report = export_onnx(model, digits.input_shape, tmp_path / "m.lowbit.onnx", fmt="lowbit",
                         layer_bits=bits, test=digits.test)
    assert capfd.readouterr() == ("", "")

    inits = _initializers(tmp_path / "m.lowbit.onnx")
    for layer, b in bits.items():
        codes = inits[f"{layer}.weight_quantized"]
        assert codes.data_type == TYPE_OF[b], (layer, b)
        values = numpy_helper.to_array(codes).astype(np.int32)
        qmax = 2 ** (b - 1) - 1
        assert values.min() >= -qmax and values.max() <= qmax
        assert values.max() == qmax or values.min() == -qmax  # max-abs: the top code is met
        assert f"{layer}.weight" not in inits  # no float copy left behind
        assert report["weights"][layer] == onnx.TensorProto.DataType.Name(TYPE_OF[b]).lower()
    float_inits = {n for n, t in inits.items() if t.data_type == onnx.TensorProto.FLOAT
                   and n.endswith(".weight")}
    assert float_inits == {f"{n}.weight" for n in
                           _float_weight_layers(tmp_path / "m.onnx") if n not in bits}
    assert report["opset"] == (25 if 2 in bits.values() else 21 if
                               min(bits.values()) <= 4 else report["opset"])

    assert report["test_examples"] == len(digits.test)
    assert report["test_agreement"] >= 0.99
    assert abs(report["test_accuracy"] - report["torch_test_accuracy"]) <= 0.01
    assert report["max_abs_diff"] < 1e-3
    assert report["bytes"] < float_report["bytes"] / (1 if plan_name == "partly_float" else 3)
    session = ort.InferenceSession(str(tmp_path / "m.lowbit.onnx"),
                                   providers=["CPUExecutionProvider"])
    x = next(iter(digits.test.batches(7))).x.numpy()
    (got,) = session.run(["logits"], {"input": x})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(torch.from_numpy(x)).numpy(), atol=1e-3)


def _float_weight_layers(path):
    return [t.name[: -len(".weight")] for t in onnx.load(str(path)).graph.initializer
            if t.name.endswith(".weight")]


@pytest.mark.parametrize("plan_name", ["4bit_sparse", "mixed_2_3_6_8", "partly_float"])
def test_qdq_file_runs_integer_kernels_within_a_point_of_pytorch(trained, digits, plan_name,
                                                                 tmp_path):
    model, plan = _student(trained, digits, plan_name)
    bits = quantized_layers(model, plan)
    report = export_onnx(model, digits.input_shape, tmp_path / "m.qdq.onnx", fmt="qdq",
                         layer_bits=bits, test=digits.test,
                         calibration=calibration_images(digits.train, 256))
    kernels = report["kernels"]
    assert kernels.get("QLinearConv", 0) >= 3 and kernels.get("QGemm", 0) >= 1, kernels
    assert "Conv" not in kernels and "FusedConv" not in kernels and "Gemm" not in kernels
    # the student's own codes, at its own scales, for every layer it quantized
    inits = _initializers(tmp_path / "m.qdq.onnx")
    for layer, b in bits.items():
        codes = numpy_helper.to_array(inits[f"{layer}.weight_quantized"]).astype(np.int32)
        assert inits[f"{layer}.weight_quantized"].data_type == onnx.TensorProto.INT8
        assert np.abs(codes).max() == 2 ** (b - 1) - 1, layer
    assert report["test_accuracy"] > 0.8
    assert abs(report["test_accuracy"] - report["torch_test_accuracy"]) <= 0.01, report
    assert report["test_agreement"] >= 0.97


def test_bad_requests_are_one_line_with_what_to_do(trained, digits, tmp_path):
    teacher = decode(encode(trained, NAME, CLASSES, digits.input_shape, CompressionPlan()))[0]
    with pytest.raises(SlimtuneError, match="quantizes no layer.*--onnx float") as e:
        onnx_files(teacher, digits.input_shape, CompressionPlan(),
                   OnnxOptions(("float", "lowbit")), tmp_path / "t.slim", test=digits.test)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # the float file checked first is not left behind
    with pytest.raises(SlimtuneError, match="calibration images.*--onnx lowbit"):
        onnx_files(teacher, digits.input_shape, CompressionPlan(), OnnxOptions(("qdq",)),
                   tmp_path / "t.slim")
    with pytest.raises(SlimtuneError, match="at least 16"):
        export_onnx(teacher, digits.input_shape, tmp_path / "q.onnx", fmt="qdq",
                    calibration=calibration_images(digits.train, 8))
    assert list(tmp_path.iterdir()) == []
    for bad, needle in [({"formats": ("int8",)}, "`--onnx` must be"),
                        ({"formats": ("qdq", "qdq")}, "each once"),
                        ({"max_opset": 12}, "`--onnx-opset` must be in 20..25"),
                        ({"calibration": 4}, "`--calibration` must be at least 16")]:
        with pytest.raises(ConfigError, match=needle):
            OnnxOptions(**bad)


def test_an_op_left_in_float_by_static_quantization_is_refused(trained, digits, tmp_path,
                                                               monkeypatch):
    """quantize_static quantizes only the ops it is told to: one it leaves in float32 is
    an op ONNX Runtime would not run quantized, and the export says so."""
    from onnxruntime import quantization

    real = quantization.quantize_static

    def no_gemm(*args, **kwargs):
        kwargs["op_types_to_quantize"] = ["Conv", "Relu", "MaxPool", "AveragePool",
                                          "Reshape"]
        return real(*args, **kwargs)

    monkeypatch.setattr(quantization, "quantize_static", no_gemm)
    model, plan = _student(trained, digits, "4bit_sparse")
    with pytest.raises(SlimtuneError, match="cannot run the Gemm node .* quantized"):
        export_onnx(model, digits.input_shape, tmp_path / "q.onnx", fmt="qdq",
                    layer_bits=quantized_layers(model, plan),
                    calibration=calibration_images(digits.train, 64))
    assert list(tmp_path.iterdir()) == []


def test_a_lower_opset_stores_2_bit_layers_as_int4_then_everything_as_int8(trained, digits,
                                                                          tmp_path):
    model, plan = _student(trained, digits, "mixed_2_3_6_8")
    bits = quantized_layers(model, plan)
    sizes = {}
    for opset, narrowest in [(25, "int2"), (21, "int4"), (20, "int8")]:
        path = tmp_path / f"m{opset}.onnx"
        report = export_onnx(model, digits.input_shape, path, fmt="lowbit", layer_bits=bits,
                             max_opset=opset)
        assert report["opset"] <= opset
        two_bit = next(n for n, b in bits.items() if b == 2)
        assert report["weights"][two_bit] == narrowest
        sizes[opset] = report["bytes"]
    assert sizes[25] < sizes[21] < sizes[20]


def test_latency_objective_times_the_onnx_file_in_onnxruntime(trained, digits, monkeypatch):
    from slimtune.objectives import latency as lat
    from slimtune.objectives.latency import LatencyConfig
    from slimtune.objectives.measure import Measured

    layers = list(SearchSpace.from_model(trained).layers)
    plan = _plans(layers)["4bit_sparse"]
    student = apply(trained, plan, digits.input_shape).eval()
    timed = []
    real = lat.time_session

    def spy(session, x, **kw):
        timed.append(([i.name for i in session.get_inputs()], x.shape))
        return real(session, x, min_run_time=0.01)

    monkeypatch.setattr(lat, "time_session", spy)
    for fmt in ("float", "lowbit", "qdq"):
        m = Measured.of(student, NAME, CLASSES, digits.input_shape, plan, digits.val,
                        latency=LatencyConfig("onnxruntime", batch=5, onnx=fmt),
                        calibrate=digits.train)
        ms = m.results(["latency"])["latency_ms"]
        assert 0 < ms < 1000
    assert timed == [(["input"], (5, *digits.input_shape))] * 3
    m = Measured.of(student, NAME, CLASSES, digits.input_shape, plan, digits.val,
                    latency=LatencyConfig("onnxruntime", onnx="qdq"))
    with pytest.raises(ConfigError, match="needs training images"):
        m.latency_ms()
    for bad, needle in [({"runtime": "tflite"}, "`--latency-runtime` must be"),
                        ({"batch": 0}, "`--latency-batch` must be"),
                        ({"onnx": "int8"}, "`--latency-format` must be")]:
        with pytest.raises(ConfigError, match=needle):
            LatencyConfig(**bad)


def test_a_trial_times_its_onnx_file_when_the_search_says_so(trained, digits, monkeypatch):
    """The settings travel SearchConfig -> TrialSpec -> the trial's measurement."""
    from slimtune.objectives import latency as lat
    from slimtune.objectives.latency import LatencyConfig
    from slimtune.search import SearchConfig
    from slimtune.search.trial import TrialSpec, run_trial

    config = SearchConfig(objectives=("accuracy", "size", "latency"),
                          latency_runtime="onnxruntime", latency_batch=4)
    assert config.latency == LatencyConfig("onnxruntime", 4, "qdq")
    assert {k: config.to_dict()[k] for k in ("latency_runtime", "latency_batch",
                                             "latency_format")} == {
        "latency_runtime": "onnxruntime", "latency_batch": 4, "latency_format": "qdq"}
    with pytest.raises(ConfigError, match="`--latency-runtime` must be one of"):
        SearchConfig(latency_runtime="tvm")

    timed = []
    real = lat.time_session

    def spy(session, x, **kw):
        timed.append(x.shape)
        return real(session, x, min_run_time=0.01)

    monkeypatch.setattr(lat, "time_session", spy)
    layers = list(SearchSpace.from_model(trained).layers)
    spec = TrialSpec(model=NAME, data="digits", plan=_plans(layers)["4bit_sparse"].to_dict(),
                     epochs=0, lr=1e-3, batch_size=64, seed=0, objectives=config.objectives,
                     early_stop=False, latency=config.latency)
    out = run_trial(spec, trained.state_dict())
    assert out["status"] == "complete" and out["latency_ms"] > 0
    assert timed == [(4, *digits.input_shape)]
