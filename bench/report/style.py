"""One look for every figure of the report: constrained layout, legends outside the data, the
names a reader knows (never a record's identifiers), panels in the main table's order."""
from __future__ import annotations

import math

# A record's teacher part as a reader names it.
PARTS = {"meta_train": "meta-train teachers", "held_out": "held-out teachers"}
# Reference lines, one look wherever they are drawn: (colour, line style).
REFERENCE_STYLE = {"single": ("tab:gray", ":"), "ensemble": ("tab:green", "--"), "kd": ("tab:red", "-."),
                   "soup": ("tab:purple", (0, (5, 2, 1, 2)))}
REFERENCE_NAMES = {"single": "single network", "ensemble": "ensemble", "kd": "KD", "soup": "uniform soup"}
FONT = {"title": 9, "label": 8, "tick": 7, "legend": 7}


def name(value) -> str:
    """A value as a figure shows it: teacher parts and booleans in words, numbers without ".0"."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return PARTS.get(value, str(value))


def groups_text(groups) -> str:
    """Groups behind the points as a legend says it: "7 groups", or "5–7 groups" where they differ."""
    low, high = int(min(groups)), int(max(groups))
    return f"{low} groups" if low == high else f"{low}–{high} groups"


def pyplot():
    """matplotlib's pyplot on the file-only backend: the report runs where no display is."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def panels(n: int, cols: int = 3, width: float = 4.4, height: float = 3.4, **kwargs):
    """(figure, the first n axes in reading order) on a grid of at most `cols` columns; the
    unused axes of the last row are hidden. Constrained layout keeps titles, tick labels and an
    outside legend from overlapping without hand-tuned margins."""
    plt = pyplot()
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                             layout="constrained", **kwargs)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def legend_outside(fig, axes, title: str | None = None, columns: int = 2) -> None:
    """One legend for the whole figure, below the panels (clear of the data and of the title):
    every distinct label of `axes` once, in the order first drawn."""
    handles, labels = [], []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels and not label.startswith("_"):
                handles.append(h)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(columns, len(handles)), frameon=False,
                   fontsize=FONT["legend"], title=title, title_fontsize=FONT["legend"])


def tidy(ax, title: str, xlabel: str | None, ylabel: str | None) -> None:
    """Title, axis labels and a light grid in the report's sizes."""
    ax.set_title(title, fontsize=FONT["title"])
    if xlabel is not None:
        ax.set_xlabel(xlabel, fontsize=FONT["label"])
    if ylabel is not None:
        ax.set_ylabel(ylabel, fontsize=FONT["label"])
    ax.tick_params(labelsize=FONT["tick"])
    ax.grid(alpha=0.3)
