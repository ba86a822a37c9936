"""Latency objective: median wall time of a batch-1 forward pass, in milliseconds."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["latency_ms"]


def latency_ms(
    model: nn.Module,
    input_shape: tuple[int, ...],
    device: torch.device | str = "cpu",
    min_run_time: float = 0.2,  # seconds of timed runs, after warm-up
) -> float:
    """Median of repeated batch-1 forward passes, measured with ``torch.utils.benchmark``
    (which synchronizes CUDA and uses the current number of torch threads)."""
    import logging

    # torch.utils.benchmark imports cpp_extension, which warns "No CUDA runtime is found"
    # on CPU machines that have nvcc installed: harmless here, and noise in every trial
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import benchmark

    model = model.to(device).eval()
    x = torch.randn(1, *input_shape, device=device)
    with torch.no_grad():
        for _ in range(3):
            model(x)
    def forward() -> None:
        with torch.no_grad():  # scoped: a global set_grad_enabled would leak into the caller
            model(x)

    timer = benchmark.Timer(stmt="forward()", globals={"forward": forward},
                            num_threads=torch.get_num_threads())
    return float(timer.blocked_autorange(min_run_time=min_run_time).median * 1e3)
