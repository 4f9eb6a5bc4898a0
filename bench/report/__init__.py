"""`python -m bench.report`: tables, claim verdicts, costs, figures and provenance from run records.

__main__.py    the command line
build.py       one grid's report: every output it writes (listed there), each by one function
records.py     the records a report reads and what the grid file plans for them
tables.py      main tables, costs, failed runs and missing cells
claims.py      claim verdicts from paired t confidence intervals over groups of teachers; anchors beside
               published numbers
statistics.py  groups of teachers as the unit of replication, and the t intervals over them
diagnostics.py what a WeightFormer learnt: diagnostics, capacity ladder, pool size, meta-training curves
ablations.py   the WeightFormer ablations' numbers and the baselines beside them
figures.py     every figure (PNG and PDF): headline, claims' forest plot, ablations, pool size, curves
style.py       the look every figure shares
render.py      what they share: labelling runs, ordering rows and columns, Markdown / LaTeX / CSV
"""
from bench.report.build import report
from bench.report.tables import cell_stats, cost_table

__all__ = ["cell_stats", "cost_table", "main", "report"]


def __getattr__(name: str):
    # `main` lives in __main__.py; imported on first use, since a package that imports its own
    # __main__ makes `python -m bench.report` warn that the module was loaded twice.
    if name == "main":
        from bench.report.__main__ import main
        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
