"""The prune primitives, now in :mod:`slimtune.ops.prune` (below the knobs that use them);
imported here under their old names."""

from slimtune.ops.prune import (  # noqa: F401
    MagnitudeMask,
    PruneConfig,
    current_mask,
    magnitude_mask,
    prune,
    pruned_count,
    target_layers,
)
