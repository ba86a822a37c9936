"""Study creation, the Ray runner, the trial function and the Pareto front."""

from slimtune.search.config import SAMPLERS, SearchConfig
from slimtune.search.engine import SearchEvents, SearchResult, search, warm_start_plans
from slimtune.search.pareto import FrontPoint, pareto_front
from slimtune.search.study import Run, open_run

__all__ = [
    "SAMPLERS", "SearchConfig", "SearchEvents", "SearchResult", "search", "warm_start_plans",
    "FrontPoint", "pareto_front", "Run", "open_run",
]
