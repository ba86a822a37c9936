"""Ray: start or join a cluster, check resources, run trial functions as tasks.

The driver is the only writer of the Optuna study; Ray tasks only compute and return.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from slimtune.errors import ResourceError, SlimtuneError

__all__ = ["RayCluster"]


class RayCluster:
    """A Ray connection for one search. Started here -> shut down here; joined -> left alone."""

    def __init__(self, address: str | None, num_cpus: int | None = None) -> None:
        import ray

        self._ray = ray
        self.started_here = False
        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        kwargs: dict[str, Any] = dict(
            include_dashboard=False, logging_level=logging.ERROR, log_to_driver=True,
            configure_logging=True,
        )
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:  # "local": a new instance, even where `ray start` runs a cluster here
                ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1,
                         object_store_memory=256 * 1024 * 1024, **kwargs)
        except ConnectionError as exc:
            hint = ("" if os.environ.get("RAY_AUTH_MODE") == "token" else
                    " (a cluster started by `ray start` authenticates with a token: set "
                    "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN as on its nodes)")
            raise SlimtuneError(f"cannot join the Ray cluster at {address!r}: "
                                f"{' '.join(str(exc).split())}{hint}") from None
        self.started_here = True

    def max_concurrent(self, cpus_per_trial: float, gpus_per_trial: float) -> int:
        res = self._ray.cluster_resources()
        cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
        if cpus_per_trial > cpus:
            raise ResourceError(
                f"`--cpus-per-trial {cpus_per_trial:g}` is more than the cluster's {cpus:g} CPUs"
            )
        if gpus_per_trial > 0 and gpus_per_trial > gpus:
            raise ResourceError(
                f"`--gpus-per-trial {gpus_per_trial:g}` asks for GPUs but the Ray cluster has "
                f"{gpus:g}; use --gpus-per-trial 0 or join a cluster with GPUs (--address)"
            )
        n = math.floor(cpus / cpus_per_trial + 1e-9)
        if gpus_per_trial > 0:
            n = min(n, math.floor(gpus / gpus_per_trial + 1e-9))
        return max(1, n)

    def shutdown(self) -> None:
        if self.started_here:
            self._ray.shutdown()
