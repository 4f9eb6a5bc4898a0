"""Shared pieces of the report: the finished method runs as one table, row order, and
Markdown / LaTeX (booktabs) / CSV rendering through pandas that gives the same bytes for the same input."""
from __future__ import annotations

import io
import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from bench.grid import default_pool_name
from bench.methods import METHODS

# Rows in the registry's order (the registry alone, no method's code: the report loads no
# training code), so that a method added there needs no line here.
METHOD_ORDER = tuple(METHODS)
WF_METHODS = tuple(name for name, entry in METHODS.items() if entry.needs_meta_train)
DASH = "—"


def column(df: pd.DataFrame, name: str, default=None) -> pd.Series:
    """`df[name]` with absent values (or an absent column) replaced by `default`."""
    if name not in df:
        return pd.Series([default] * len(df), index=df.index, dtype=object)
    values = df[name].astype(object)
    return values.where(values.notna(), default)


def setting_label(arch: str, dataset: str, init: str | None, pool: str | None = None, scale: str | None = None) -> str:
    # Pools of one (arch, dataset) but another initialisation are separate columns; so is a pool the
    # grid names itself (a teacher zoo beside the default pool of the same setting).
    missing = init is None or (isinstance(init, float) and math.isnan(init))
    label = f"{arch} / {dataset}" + ("" if missing or init == "scratch" else f" [{init}]")
    named = isinstance(pool, str) and pool and not missing and pool != default_pool_name(arch, dataset, scale, init)
    return label + (f" [{pool}]" if named and isinstance(scale, str) else "")


# What each pool initialisation means for the question a table answers: the paper tested its claims
# on teachers fine-tuned from one pretrained network, where weight averaging already works.
REGIMES = {
    "pretrained": "fine-tuned from one pretrained network (the paper's regime)",
    "shared": "trained from one shared initialisation, differing in data order (ours)",
    "scratch": "trained from scratch, independently (Allen-Zhu & Li's regime; ours for the paper's claims)",
}


def regime_line(runs: pd.DataFrame) -> str:
    """One line naming the teacher regime of every setting in `runs` (by the pools' init)."""
    inits = [i for i in dict.fromkeys(column(runs, "init")) if isinstance(i, str)]
    if not inits:
        return ""
    named = "; ".join(f"{'[' + i + '] ' if len(inits) > 1 else ''}{REGIMES.get(i, i)}" for i in inits)
    return f"Teachers: {named}.\n"


def label_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs of the methods stage, with `variant` (the row key: the record's variant, else its
    method), `teacher_part` (absent = meta_train) and `setting` (the table column)."""
    done = runs[runs.stage == "methods"].copy()
    done["variant"] = [v if isinstance(v, str) and v else m for v, m in
                       zip(column(done, "variant"), done.method)]
    done["teacher_part"] = column(done, "teacher_part", "meta_train")
    done["setting"] = [setting_label(a, d, i, p, s) for a, d, i, p, s in
                       zip(done.arch, done.dataset, column(done, "init"), column(done, "pool"), column(done, "scale"))]
    for metric in ("top1", "top5", "nll", "ece", "val_top1"):
        done[metric] = pd.to_numeric(column(done, metric), errors="coerce")
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

def md_table(table: pd.DataFrame, bold: pd.DataFrame | None = None) -> str:
    """The table's columns (not its index) as a Markdown pipe table; `bold`, of the same shape,
    marks cells bold. Cells are text already: tabulate must not reformat what looks like a number."""
    def escape(column: pd.Series) -> pd.Series:
        return column.astype(str).str.replace("|", r"\|", regex=False)

    cells = table.apply(escape)
    if bold is not None:
        cells = cells.where(~bold.to_numpy(dtype=bool), "**" + cells + "**")
    cells.columns = escape(pd.Series(table.columns)).tolist()
    return cells.to_markdown(index=False, disable_numparse=True) + "\n"


TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
TEX_SYMBOLS = {"±": r"$\pm$", "≈": r"$\approx$", "—": "---", "–": "--", "Δ": r"$\Delta$", "−": "$-$",
               "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$", ">": r"$>$", "<": r"$<$"}


def tex_escape(text) -> str:
    """LaTeX for a cell, header or caption: pandas' own escaping (`escape="latex"`) knows none of
    the symbols above and leaves captions alone."""
    text = "".join(TEX_SPECIAL.get(c, c) for c in str(text))
    return "".join(TEX_SYMBOLS.get(c, c) for c in text)


def tex_table(table: pd.DataFrame, caption: str, bold: pd.DataFrame | None = None, align: str | None = None) -> str:
    """The table's columns as a booktabs table (needs \\usepackage{booktabs}); `bold` as in
    `md_table`; default alignment: the first column left, the others right."""
    styler = table.style.hide(axis="index").format(tex_escape).format_index(tex_escape, axis=1)
    if bold is not None:
        styler = styler.apply(lambda _: np.where(bold.to_numpy(dtype=bool), "textbf:--rwrap;", ""), axis=None)
    return styler.to_latex(caption=tex_escape(caption), environment="table", position="ht",
                           position_float="centering", hrules=True,
                           column_format=align or "l" + "r" * (table.shape[1] - 1))


def csv_text(df: pd.DataFrame) -> bytes:
    # repr-precision floats (pandas' default) round-trip exactly through read_csv.
    return df.to_csv(index=False, lineterminator="\n").encode()


def fmt(value, digits: int = 2, missing: str = DASH) -> str:
    return missing if value is None or pd.isna(value) else f"{value:.{digits}f}"


# Matplotlib stamps its version and the time into PNG and PDF files: left out, a rerun of the
# report on the same records writes the same bytes.
SAVE_METADATA = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None}}


def figure_bytes(fig) -> dict[str, bytes]:
    """The figure as PNG and PDF bytes (SAVE_METADATA); the figure is closed."""
    import matplotlib.pyplot as plt

    out = {}
    for kind, metadata in SAVE_METADATA.items():
        buf = io.BytesIO()
        fig.savefig(buf, format=kind, dpi=150, bbox_inches="tight", metadata=metadata)
        out[kind] = buf.getvalue()
    plt.close(fig)
    return out
