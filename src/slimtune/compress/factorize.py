"""The factorize primitives, now in :mod:`slimtune.ops.factorize` (below the knobs that use them);
imported here under their old names."""

from slimtune.ops.factorize import (  # noqa: F401
    FactorizeConfig,
    Factorized,
    _split,
    factorize,
    factorized_rank,
    full_rank,
)
