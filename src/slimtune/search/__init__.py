"""Study creation, the Ray runner, the trial function and the Pareto front."""

import sys
import types

from slimtune.search.config import SAMPLERS, SearchConfig
from slimtune.search.engine import SearchEvents, SearchResult, search, warm_start_plans
from slimtune.search.pareto import FrontPoint, pareto_front
from slimtune.search.study import Run, open_run

__all__ = [
    "SAMPLERS", "SearchConfig", "SearchEvents", "SearchResult", "search", "warm_start_plans",
    "FrontPoint", "pareto_front", "Run", "open_run",
]


class _CallableModule(types.ModuleType):
    """``slimtune.search(config)`` / ``slimtune.search(trials=10, ...)`` runs a search."""

    def __call__(self, config: SearchConfig | None = None, events: SearchEvents | None = None,
                 **kwargs: object) -> SearchResult:
        if config is None:
            config = SearchConfig(**kwargs)  # type: ignore[arg-type]
        elif kwargs:
            raise TypeError("pass either a SearchConfig or keyword options, not both")
        return search(config, events)


sys.modules[__name__].__class__ = _CallableModule
