"""Search spaces and compression plans."""

from slimtune.spaces.plan import ALLOWED_BITS, CompressionPlan, LayerPlan
from slimtune.spaces.space import PRUNING_MODES, SearchSpace, compressible_layers

__all__ = [
    "ALLOWED_BITS", "CompressionPlan", "LayerPlan", "PRUNING_MODES", "SearchSpace",
    "compressible_layers",
]
