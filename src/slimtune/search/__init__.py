"""Study creation, the Ray runner, the trial function and the Pareto front.

``slimtune.search(...)`` (this package, called) is :func:`slimtune.api.search`;
``slimtune.search.search`` is the engine's :func:`slimtune.search.engine.search`.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from slimtune.search.config import SAMPLERS, SearchConfig
from slimtune.search.engine import SearchEvents, SearchResult, search, warm_start_plans
from slimtune.search.pareto import FrontPoint, pareto_front
from slimtune.search.study import Run, open_run

__all__ = [
    "SAMPLERS", "SearchConfig", "SearchEvents", "SearchResult", "search", "warm_start_plans",
    "FrontPoint", "pareto_front", "Run", "open_run",
]


class _CallableModule(types.ModuleType):
    """``slimtune.search(config)`` / ``slimtune.search(trials=10, ...)`` runs a search: it
    is :func:`slimtune.api.search`."""

    def __call__(self, config: SearchConfig | None = None, events: SearchEvents | None = None,
                 **kwargs: Any) -> SearchResult:
        from slimtune.api import search as run_search

        return run_search(config, events, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
