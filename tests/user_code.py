"""User code the tests load by import path, as `module:function` and `module:factory`."""

from __future__ import annotations

import torch
from torch import nn


def tiny_data():
    """(train, val, test) pairs of tensors: digits-like 1 x 8 x 8 images, 4 classes."""
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(4, 1, 8, 8, generator=g)

    def make(n):
        y = torch.arange(n) % 4
        return protos[y] + 0.3 * torch.randn(n, 1, 8, 8, generator=g), y

    return make(200), make(60), make(60)


def make_model(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    c = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(c, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, num_classes),
    )


def cheap_trial(spec, teacher_state):
    """Plan-dependent numbers at once; trials 3 and 5 raise like a broken layer would."""
    number = spec.seed % 100003
    if number in (3, 5):
        raise RuntimeError(f"layer cannot be handled (trial {number})")
    layers = list(spec.plan["layers"].values())
    s = sum(lp["sparsity"] for lp in layers) / len(layers)
    bits = sum(lp["bits"] for lp in layers) / len(layers)
    return {"accuracy": 1.0 - 0.5 * s, "size_bytes": int(5000 * (1 - s) * bits) + 1,
            "flops": int(600_000 * (1 - s)) + 1, "dense_flops": 633_728, "bitops": 0,
            "artifact": b"", "seconds": 0.0}


class Barrier:
    """Counts trials inside the trial function (a Ray actor: see ``gated_trial``)."""

    def __init__(self, parties: int) -> None:
        self.parties, self.arrived, self.inside, self.peak = parties, 0, 0, 0

    def arrive(self) -> None:
        self.arrived += 1
        self.inside += 1
        self.peak = max(self.peak, self.inside)

    def leave(self) -> None:
        self.inside -= 1

    def open(self) -> bool:
        return self.arrived >= self.parties

    def stats(self) -> dict:
        return {"arrived": self.arrived, "inside": self.inside, "peak": self.peak}


BARRIER_NAME = "slimtune-test-barrier"


def gated_trial(spec, teacher_state):
    """The real trial function, entered by the first trials only once ``parties`` of them
    are inside it at the same time (the named Ray actor ``BARRIER_NAME`` counts them), so a
    test sees how many trials the engine and Ray really run at once, however fast or slow
    Ray starts its worker processes. Raises after 120 s if they never all arrive."""
    import time

    import ray

    from slimtune.search.trial import run_trial

    barrier = ray.get_actor(BARRIER_NAME)
    ray.get(barrier.arrive.remote())
    try:
        deadline = time.monotonic() + 120
        while not ray.get(barrier.open.remote()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"trials never ran at once: {ray.get(barrier.stats.remote())}")
            time.sleep(0.05)
        return run_trial(spec, teacher_state)
    finally:
        barrier.leave.remote()


def nan_teacher_trial(spec, teacher_state):
    """The real trial function; in trial 1 the output layer's bias is NaN, so the logits
    and the distillation loss are NaN and the trial raises as a diverging one would."""
    import math

    from slimtune.search.trial import run_trial

    if spec.seed % 100003 == 1:
        last_bias = [k for k in teacher_state if k.endswith("bias")][-1]
        teacher_state = {**teacher_state,
                         last_bias: teacher_state[last_bias].clone().fill_(math.nan)}
    return run_trial(spec, teacher_state)


def smooth_trial(spec, teacher_state):
    """Plan-dependent numbers at once, never failing (``cheap_trial`` without its errors)."""
    layers = list(spec.plan["layers"].values())
    s = sum(lp["sparsity"] for lp in layers) / len(layers)
    keep = sum(lp["keep_ratio"] for lp in layers) / len(layers)
    bits = sum(lp["bits"] for lp in layers) / len(layers)
    return {"accuracy": 1.0 - 0.3 * s - 0.2 * (1 - keep),
            "size_bytes": int(5000 * (1 - s) * bits * keep) + 1,
            "flops": int(600_000 * (1 - s) * keep) + 1, "dense_flops": 633_728, "bitops": 0,
            "artifact": b"", "seconds": 0.0}


class _FailsInTraining(nn.Module):
    """Runs in eval mode (the up-front check, the teacher's metrics) and raises in training
    mode with an error message full of rich markup."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(),
                                 nn.Linear(16, num_classes))

    def forward(self, x):  # type: ignore[no-untyped-def]
        if self.training:
            raise ValueError("bad [/] [bold]plan[/bold]")
        return self.net(x)


def markup_failing_model(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return _FailsInTraining(num_classes)


#: the accuracy every plan shows at rung 0 in ``rung_job``: higher than any fine-tuned one,
#: so a rung-0 result on the front would be seen at once
RUNG0_ACCURACY = 0.999


def rung_job(spec, teacher_state):
    """A multi-fidelity job with plan-dependent numbers at once. It checks the engine's
    wiring as a real job would need it: a job continuing a plan is given the weights the
    job below it returned (it raises otherwise), and it returns its own when told."""
    t = spec.trial
    if spec.state_in is not None:
        saved = spec.state_in.decode()
        if saved != f"{t.seed} {spec.start:g}":
            raise RuntimeError(f"the state given holds {saved!r}, not this plan's")
    state = f"{t.seed} {spec.stop:g}".encode() if spec.state_out else None
    layers = list(t.plan["layers"].values())
    s = sum(lp["sparsity"] for lp in layers) / len(layers)
    keep = sum(lp["keep_ratio"] for lp in layers) / len(layers)
    bits = sum(lp["bits"] for lp in layers) / len(layers)
    final = 1.0 - 0.3 * s - 0.2 * (1 - keep)
    acc = RUNG0_ACCURACY if spec.stop == 0 else final * (0.6 + 0.4 * spec.stop / t.epochs)
    return {"status": "complete", "accuracy": acc, "rung": spec.rung, "epochs": spec.stop,
            "epochs_trained": spec.stop - spec.start,
            "size_bytes": int(5000 * (1 - s) * bits * keep) + 1,
            "flops": int(600_000 * (1 - s) * keep) + 1, "dense_flops": 633_728, "bitops": 0,
            "artifact": b"", "seconds": 0.0, "state": state}
