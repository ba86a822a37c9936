"""Latency objective: median wall time of a forward pass, in milliseconds, in the runtime
the model will ship in.

- ``torch``: the decoded PyTorch model, timed with ``torch.utils.benchmark``;
- ``onnxruntime``: the ONNX file ``slimtune export --onnx FORMAT`` would write (``qdq`` by
  default: int8 weights and activations, ONNX Runtime's integer kernels), timed in an
  ``onnxruntime.InferenceSession`` on the CPU with the trial's threads.

Both time batches of :attr:`LatencyConfig.batch` inputs (1 by default), after warm-up runs,
as the median of repeated runs lasting at least ``min_run_time`` seconds. What makes a plan
fast in ONNX Runtime: fewer channels and lower rank (smaller dense kernels) and int8
kernels (``qdq``); unstructured zeros in a dense kernel do not (BENCHMARKS.md, issue 16).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtune.errors import ConfigError

__all__ = ["LatencyConfig", "RUNTIMES", "latency_ms", "onnx_latency_ms", "time_session"]

RUNTIMES = ("torch", "onnxruntime")
#: calibration images of a qdq file that is only timed (its ranges do not change its speed)
_TIMING_CALIBRATION = 32


@dataclass(frozen=True)
class LatencyConfig:
    """How the latency objective times a model: ``runtime`` (:data:`RUNTIMES`), inputs per
    batch, and the ONNX format timed in onnxruntime (``float``, ``lowbit`` or ``qdq``)."""

    runtime: str = "torch"
    batch: int = 1
    onnx: str = "qdq"

    def __post_init__(self) -> None:
        from slimtune.export.onnx_options import FORMATS

        if self.runtime not in RUNTIMES:
            raise ConfigError(f"`--latency-runtime` must be one of {', '.join(RUNTIMES)}, but "
                              f"got {self.runtime!r}")
        if isinstance(self.batch, bool) or int(self.batch) < 1:
            raise ConfigError(f"`--latency-batch` must be at least 1, but got {self.batch!r}")
        if self.onnx not in FORMATS:
            raise ConfigError(f"`--latency-format` must be one of {', '.join(FORMATS)}, but "
                              f"got {self.onnx!r}")


def latency_ms(
    model: nn.Module,
    input_shape: tuple[int, ...],
    device: torch.device | str = "cpu",
    min_run_time: float = 0.2,  # seconds of timed runs, after warm-up
    batch: int = 1,
) -> float:
    """Median of repeated forward passes of ``batch`` inputs in PyTorch, measured with
    ``torch.utils.benchmark`` (which synchronizes CUDA and uses the current number of torch
    threads)."""
    import logging

    # torch.utils.benchmark imports cpp_extension, which warns "No CUDA runtime is found"
    # on CPU machines that have nvcc installed: harmless here, and noise in every trial
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import benchmark

    model = model.to(device).eval()
    x = torch.randn(int(batch), *input_shape, device=device)
    with torch.no_grad():
        for _ in range(3):
            model(x)

    def forward() -> None:
        with torch.no_grad():  # scoped: a global set_grad_enabled would leak into the caller
            model(x)

    timer = benchmark.Timer(stmt="forward()", globals={"forward": forward},
                            num_threads=torch.get_num_threads())
    return float(timer.blocked_autorange(min_run_time=min_run_time).median * 1e3)


def time_session(session: Any, x: Any, min_run_time: float = 0.2, min_runs: int = 10,
                 warmup: int = 3) -> float:
    """Median milliseconds of ``session.run`` on the input ``x`` (numpy), over at least
    ``min_runs`` runs and ``min_run_time`` seconds, after ``warmup`` runs."""
    name = session.get_inputs()[0].name
    feed = {name: x}
    for _ in range(warmup):
        session.run(None, feed)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_run_time:
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def onnx_latency_ms(model: nn.Module, input_shape: tuple[int, ...], plan: Any,
                    config: LatencyConfig, calibrate: Any | None = None,
                    min_run_time: float = 0.2) -> float:
    """Median milliseconds of the model's ``config.onnx`` ONNX file in onnxruntime (CPU,
    ``torch.get_num_threads()`` intra-op threads), batches of ``config.batch`` inputs.
    ``calibrate`` (the training split) gives a qdq file its calibration images; a lowbit
    file of a plan that quantizes no layer is the float file, and is timed as one."""
    import numpy as np

    from slimtune.export.onnx import calibration_images, export_onnx, quantized_layers, session

    bits = quantized_layers(model, plan)
    fmt = "float" if config.onnx == "lowbit" and not bits else config.onnx
    calibration = None
    if fmt == "qdq":
        if calibrate is None:
            raise ConfigError("`--latency-format qdq` needs training images to calibrate on, "
                              "and the trial has none")
        calibration = calibration_images(calibrate, _TIMING_CALIBRATION)
    with tempfile.TemporaryDirectory(prefix="slimtune-latency-") as tmp:
        path = Path(tmp) / f"model.{fmt}.onnx"
        export_onnx(model, input_shape, path, fmt=fmt, layer_bits=bits,
                    calibration=calibration, check_batch=2)
        run = session(path, threads=torch.get_num_threads())
        x = np.random.default_rng(0).standard_normal(
            (int(config.batch), *input_shape)).astype(np.float32)
        return time_session(run, x, min_run_time=min_run_time)
