"""Reports: markdown and PNG plots from a run directory."""

from ropesearch.report.build import build_report

__all__ = ["build_report"]
