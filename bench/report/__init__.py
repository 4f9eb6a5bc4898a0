"""`python -m bench.report`: tables, claim verdicts, costs, ablation plots and provenance from run records.

tables.py  the CLI, main tables, costs, failed runs, index pages (the outputs are listed there)
claims.py  claim verdicts from paired t confidence intervals over groups of teachers; anchors beside
           published numbers
figures.py the headline figure and the claims' forest plot
plots.py   ablation figures (PNG and PDF)
style.py   the look every figure shares
frame.py   what they share: labelling runs, ordering rows and columns, Markdown / LaTeX / CSV
"""
from bench.report.tables import cell_stats, cost_table, main, report

__all__ = ["cell_stats", "cost_table", "main", "report"]
