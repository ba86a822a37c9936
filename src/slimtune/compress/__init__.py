"""Pure transforms ``model -> model``, one config dataclass each, and ``apply``."""

from slimtune.compress.apply import apply, apply_, configs_of
from slimtune.compress.distill import DistillConfig, TrialDiverged, distill, kd_loss
from slimtune.ops.factorize import FactorizeConfig, Factorized, factorize
from slimtune.ops.prune import MagnitudeMask, PruneConfig, magnitude_mask, prune
from slimtune.ops.quantize import (
    FakeQuant,
    QuantizeConfig,
    dequantize,
    quantize,
    quantize_codes,
)
from slimtune.ops.structured import ChannelPruneConfig, channel_prune

__all__ = [
    "apply", "apply_", "configs_of", "ChannelPruneConfig", "channel_prune",
    "DistillConfig", "TrialDiverged", "distill", "kd_loss",
    "FactorizeConfig", "Factorized", "factorize",
    "MagnitudeMask", "PruneConfig", "magnitude_mask", "prune",
    "FakeQuant", "QuantizeConfig", "dequantize", "quantize", "quantize_codes",
]
