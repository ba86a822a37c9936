"""The structured primitives, now in :mod:`slimtune.ops.structured` (below the knobs that use them);
imported here under their old names."""

from slimtune.ops.structured import ChannelPruneConfig, channel_prune, kept_channels, output_layers  # noqa: F401
