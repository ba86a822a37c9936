"""Views of a run: plain ``*_info`` data (tested without a browser) and the HTML report
that draws it (plotly, one self-contained file)."""

from slimtune.viz.front import FrontInfo, front_info, plan_summary
from slimtune.viz.history import HistoryInfo, history_info
from slimtune.viz.plans import PlanInfo, plan_info
from slimtune.viz.report import REPORT_NAME, ReportInfo, report_info, write_report
from slimtune.viz.table import FrontRow, export_command, table_info

__all__ = ["FrontInfo", "front_info", "plan_summary", "HistoryInfo", "history_info",
           "PlanInfo", "plan_info", "ReportInfo", "report_info", "write_report", "REPORT_NAME",
           "FrontRow", "table_info", "export_command"]
