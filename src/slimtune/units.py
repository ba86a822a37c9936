"""Sizes and counts as people read them (``163.5 kB``, ``633.73k``): the CLI's tables and
the report's share one spelling; and bits per stored weight, which they all show."""

from __future__ import annotations

from typing import Any

__all__ = ["fmt_bytes", "fmt_count", "bits_per_weight"]


def fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)  # pragma: no cover


def fmt_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def bits_per_weight(size_bytes: Any, stored_weights: Any) -> float | None:
    """``8 x size_bytes / stored_weights``: what a file costs per weight it stores,
    everything in it counted (None when either number is missing)."""
    if not isinstance(stored_weights, int | float) or isinstance(stored_weights, bool) \
            or stored_weights <= 0 or not isinstance(size_bytes, int | float):
        return None
    return 8.0 * size_bytes / stored_weights
