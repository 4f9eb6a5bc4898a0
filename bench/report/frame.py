"""Shared pieces of the report: the finished method runs as one table, row order, and plain
Markdown / LaTeX (booktabs) / CSV rendering that gives the same bytes for the same input."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import pandas as pd

METHOD_ORDER = ("single", "ensemble", "kd", "self_distill", "soup", "aligned_soup", "weightformer",
                "weightformer_ft")
WF_METHODS = ("weightformer", "weightformer_ft")
DASH = "—"


def column(df: pd.DataFrame, name: str, default=None) -> pd.Series:
    """`df[name]` with absent values (or an absent column) replaced by `default`."""
    if name not in df:
        return pd.Series([default] * len(df), index=df.index, dtype=object)
    values = df[name].astype(object)
    return values.where(values.notna(), default)


def setting_label(arch: str, dataset: str, init: str | None) -> str:
    # Pools of one (arch, dataset) but another initialisation are separate columns.
    missing = init is None or (isinstance(init, float) and math.isnan(init))
    return f"{arch} / {dataset}" + ("" if missing or init == "scratch" else f" [{init}]")


def label_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs of the methods stage, with `variant` (the row key: the record's variant, else its
    method), `teacher_part` (absent = meta_train) and `setting` (the table column)."""
    done = runs[runs.stage == "methods"].copy()
    done["variant"] = [v if isinstance(v, str) and v else m for v, m in
                       zip(column(done, "variant"), done.method)]
    done["teacher_part"] = column(done, "teacher_part", "meta_train")
    done["setting"] = [setting_label(a, d, i) for a, d, i in zip(done.arch, done.dataset, column(done, "init"))]
    for metric in ("top1", "top5", "nll", "ece"):
        done[metric] = pd.to_numeric(done[metric], errors="coerce")
    return done


def method_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The finished runs of `label_runs`."""
    done = label_runs(runs)
    return done[done.status == "done"]


def method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def order_rows(method_of: dict[str, str]) -> list[str]:
    """Variants by their method's place in the paper's order (others after), then by name."""
    return sorted(method_of, key=lambda v: (method_rank(method_of[v]), method_of[v], v))


def order_columns(present: Iterable[str], settings: Sequence[str]) -> list[str]:
    """The grid's settings in pool order, then any others the records hold, sorted."""
    present = set(present)
    return [s for s in settings if s in present] + sorted(present - set(settings))


# --- rendering ---------------------------------------------------------------------------------

def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], bold=None) -> str:
    """A Markdown table; bold[i][j] marks a cell bold."""
    def cell(text, strong=False):
        text = str(text).replace("|", "\\|")
        return f"**{text}**" if strong else text
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(rows):
        lines.append("| " + " | ".join(cell(t, bool(bold and bold[i][j])) for j, t in enumerate(row)) + " |")
    return "\n".join(lines) + "\n"


TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
TEX_SYMBOLS = {"±": r"$\pm$", "≈": r"$\approx$", "—": "---", "–": "--", "Δ": r"$\Delta$", "−": "$-$",
               "×": r"$\times$",
               "≥": r"$\geq$", "≤": r"$\leq$", ">": r"$>$", "<": r"$<$"}


def tex_escape(text) -> str:
    text = "".join(TEX_SPECIAL.get(c, c) for c in str(text))
    return "".join(TEX_SYMBOLS.get(c, c) for c in text)


def tex_table(header: Sequence[str], rows: Sequence[Sequence[str]], caption: str = "", bold=None,
              align: str | None = None) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}); default: the first column left-aligned."""
    def line(cells):
        return " & ".join(cells) + r" \\"
    body = [line(r"\textbf{" + tex_escape(t) + "}" if bold and bold[i][j] else tex_escape(t)
                 for j, t in enumerate(row)) for i, row in enumerate(rows)]
    lines = [r"\begin{table}[ht]", r"\centering", r"\caption{" + tex_escape(caption) + "}",
             r"\begin{tabular}{" + (align or "l" + "r" * (len(header) - 1)) + "}", r"\toprule",
             line(map(tex_escape, header)),
             r"\midrule", *body, r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def csv_text(df: pd.DataFrame) -> bytes:
    # repr-precision floats (pandas' default) round-trip exactly through read_csv.
    return df.to_csv(index=False, lineterminator="\n").encode()


def fmt(value, digits: int = 2, missing: str = DASH) -> str:
    return missing if value is None or pd.isna(value) else f"{value:.{digits}f}"
