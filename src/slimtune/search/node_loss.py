"""Trials lost with their Ray node (a preempted spot instance, an OOM-killed raylet): run
again on the nodes left, a bounded number of times, and recorded on the trial.

Ray fails every task of a node that dies with ``NodeDiedError`` (its worker process alone:
``WorkerCrashedError``), within a second of the loss. Ray's own task retries would rerun
them silently; the search retries them itself instead, so each retry is recorded in the
trial's ``retries`` attribute and counted in the progress line, and the trial is told once,
when an attempt returns. Ray marks the dead node not ``Alive`` only after its health
checks (about 14 s by default), so the node named in the error counts as gone at once.
If no node left can run a trial (its CPUs and GPUs on one node), the search stops with
one line (:class:`SearchAborted`) and its running trials are requeued for ``--resume``.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from slimtune.errors import SearchAborted

__all__ = ["NodeLoss", "MAX_RETRIES"]

#: attempts after the first that a trial lost with its node gets
MAX_RETRIES = 2
_NODE_ID = re.compile(r"node ID: ([0-9a-f]{16,})")
_NODE_IP = re.compile(r"Node IP: ([^,\s]+)")


def _lost_classes() -> tuple[type[BaseException], ...]:
    import ray.exceptions as rex

    return tuple(getattr(rex, n) for n in ("NodeDiedError", "WorkerCrashedError",
                                           "LocalRayletDiedError", "ObjectLostError")
                 if hasattr(rex, n))


class NodeLoss:
    """The search's record of lost tasks: which trials were retried, which nodes died."""

    def __init__(self, cpus_per_trial: float, gpus_per_trial: float,
                 bound: int = MAX_RETRIES) -> None:
        self.cpus, self.gpus, self.bound = cpus_per_trial, gpus_per_trial, bound
        self.tries: dict[Any, list[dict[str, Any]]] = {}
        self.dead: set[str] = set()  # node ids named by errors (before Ray marks them)
        self.retried = 0
        self.room = 0  # trials the alive nodes can run at once, as of the last loss
        self._lost = _lost_classes()

    @property
    def nodes_lost(self) -> int:
        return len(self.dead)

    def retry(self, key: Any, exc: BaseException) -> bool:
        """Whether the task of ``key`` (a trial) that failed with ``exc`` runs again: it
        was lost with its node or worker, and it has retries left. Raises
        :class:`SearchAborted` when no node left can run a trial."""
        if not isinstance(exc, self._lost):
            return False
        text = " ".join(str(exc).split())
        node = _NODE_ID.search(text)
        if node:
            self.dead.add(node.group(1))
        ip = _NODE_IP.search(text)
        tries = self.tries.setdefault(key, [])
        tries.append({"error": f"{type(exc).__name__}: {text}"[:300],
                      "node": node.group(1) if node else None,
                      "ip": ip.group(1) if ip else None, "time": round(time.time(), 3)})
        if len(tries) > self.bound:
            return False
        self.room = self.capacity()
        if self.room == 0:
            raise SearchAborted(
                f"no Ray node left can run a trial (each needs {self.cpus:g} CPUs"
                f"{f' and {self.gpus:g} GPUs' if self.gpus else ''} on one node) after "
                f"{self.nodes_lost} {'node was' if self.nodes_lost == 1 else 'nodes were'} "
                "lost; add nodes to the cluster and continue the search with --resume")
        self.retried += 1
        return True

    def attrs(self, key: Any) -> dict[str, Any]:
        """The trial's ``retries`` attribute, if it had any."""
        tries = self.tries.get(key)
        return {"retries": tries} if tries else {}

    def capacity(self) -> int:
        """How many trials the alive nodes can run at once (each on one node)."""
        import ray

        n = 0
        for node in ray.nodes():
            if not node.get("Alive") or node.get("NodeID") in self.dead:
                continue
            res = node.get("Resources") or {}
            fit = math.floor(float(res.get("CPU", 0)) / self.cpus + 1e-9)
            if self.gpus > 0:
                fit = min(fit, math.floor(float(res.get("GPU", 0)) / self.gpus + 1e-9))
            n += max(0, fit)
        return n

    def describe(self, key: Any, what: str | None = None) -> str:
        """One line for the progress display about the last loss of ``key`` (``what``:
        how to name it; default "trial KEY")."""
        last = self.tries[key][-1]
        where = f"Ray node {last['ip']}" if last.get("ip") else "its Ray worker"
        return (f"{what or f'trial {key}'} was lost with {where}; it runs again (retry "
                f"{len(self.tries[key])} of {self.bound}) on the nodes left")
