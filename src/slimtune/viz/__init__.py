"""The front as data, and its interactive plotly report."""

from slimtune.viz.report import FrontInfo, figure, front_info, write_html

__all__ = ["FrontInfo", "figure", "front_info", "write_html"]
