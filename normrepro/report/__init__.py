"""The evidence: run records -> tables with statistics, figures, the README's results summary.

Modules: ``runs`` (discovery, loading: :class:`Run`), ``paper`` (the packaged paper.yaml: :class:`Paper`),
``stats`` (CI, paired/Welch tests), ``aggregate`` (grouping, baselines: :class:`Group`), ``provenance`` (git
commits), ``render`` (Markdown/CSV), ``summary`` (README block), ``plots`` (figures), ``registry`` (the
small-scale experiments of ``scripts/reproduce.py``), ``cli`` (``python -m normrepro.report``).
"""
from normrepro.report.aggregate import Group, aggregate, default_metric
from normrepro.report.cli import Report, build_report, main, write_report
from normrepro.report.paper import Paper, PaperCell, load_paper, match_cell
from normrepro.report.provenance import CodeStamp, code_stamp
from normrepro.report.render import render_csv, render_markdown
from normrepro.report.runs import Run, collect_runs, find_run_dirs, incomplete_runs
from normrepro.report.stats import Comparison, Summary, compare, summarize
from normrepro.report.summary import TableSummary, render_summary, splice

__all__ = ["CodeStamp", "Comparison", "Group", "Paper", "PaperCell", "Report", "Run", "Summary", "TableSummary",
           "aggregate", "build_report", "code_stamp", "collect_runs", "compare", "default_metric", "find_run_dirs",
           "incomplete_runs", "load_paper", "main", "match_cell", "render_csv", "render_markdown", "render_summary",
           "splice", "summarize", "write_report"]
