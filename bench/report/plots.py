"""WeightFormer ablations: top-1 against one setting at a time, the others at the grid's default.

The default of a setting is its value in the runs of the plain variant (`weightformer`, or
`weightformer_ft` for fine-tuned runs) of the same (arch, dataset), else its most common value.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from bench.io import atomic_write_bytes
from bench.report import style
from bench.report.diagnostics import interval, per_group
from bench.report.frame import SAVE_METADATA, WF_METHODS, column, figure_bytes, method_rank

# axis -> (record column, x-axis label with its unit)
AXES = {
    "n_teachers": ("wf_n_teachers", "teachers per ensemble, N (networks)"),
    "cross": ("wf_cross", "[cross] token (cross-layer information flow)"),
    "shift_weight": ("wf_shift_weight", "shift-consistency loss weight (0 = off)"),
    "depth": ("wf_depth", "WeightFormer depth (layers)"),
    "d_model": ("wf_d_model", "WeightFormer width, d_model (units)"),
    "output": ("wf_output", "output parameterisation"),
    "temperature": ("wf_temperature", "softmax temperature (dimensionless)"),
    "align": ("wf_align", "teacher alignment before tokenising"),
    "init": ("init", "teacher pool initialisation"),
    "ft_epochs": ("wf_ft_epochs", "fine-tuning (epochs)"),
    "ft_fraction": ("wf_ft_fraction", "fine-tuning data (fraction of the training set)"),
    "teacher_part": ("teacher_part", "teachers (meta-train = seen, held-out = unseen)"),
}
# Bytes depend on nothing but the data: no creation dates, no software versions.


def norm(value):
    """Comparable, hashable form: None for absent, bool, float for numbers, else str."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return str(value)


def mode(values: list) -> object:
    counts = Counter(values)
    return sorted(counts, key=lambda v: (-counts[v], str(v)))[0] if counts else None


def wf_axes(runs: pd.DataFrame) -> pd.DataFrame:
    """WeightFormer runs with one normalised column per axis, `series` = (method, arch / dataset
    [pool init]) and `series_any_init` (the same without the init: the init axis's series)."""
    wf = runs[runs.method.isin(WF_METHODS)].copy()
    for axis, (col, _) in AXES.items():
        # dtype object keeps None (an axis a method does not have, e.g. fine-tuning epochs of plain
        # WeightFormer runs) as None: a float column would turn it into NaN, which equals nothing.
        wf[f"axis_{axis}"] = pd.Series([norm(v) for v in column(wf, col)], index=wf.index, dtype=object)
    named = [isinstance(p, str) and p != f"{a}-{d}-{s}-{i}" for p, a, d, s, i in
             zip(column(wf, "pool"), wf.arch, wf.dataset, column(wf, "scale"), column(wf, "init"))]
    wf["series_any_init"] = [f"{m}, {a} / {d}" + (f" [{p}]" if n else "")
                             for m, a, d, p, n in zip(wf.method, wf.arch, wf.dataset, column(wf, "pool"), named)]
    wf["series"] = [f"{m}, {setting}" for m, setting in zip(wf.method, wf.setting)]
    return wf


def at_defaults(group: pd.DataFrame, method: str, axis: str) -> pd.DataFrame:
    """The runs of one series whose every axis other than `axis` holds its default."""
    plain = group[group.variant == method]
    keep = pd.Series(True, index=group.index)
    for other in AXES:
        if other != axis:
            col = group[f"axis_{other}"]
            default = mode(list((plain if len(plain) else group)[f"axis_{other}"]))
            keep &= pd.Series([v == default for v in col], index=group.index)
    return group[keep]


def ablation_table(runs: pd.DataFrame) -> pd.DataFrame:
    """axis, series, setting, value, mean, std (n-1), n of top-1, and the 95% t interval's half-width
    over distinct groups of teachers (`groups`, `ci_half`): the numbers behind every plot."""
    wf, rows = wf_axes(runs), []
    for axis in AXES:
        for series, group in wf.groupby("series_any_init" if axis == "init" else "series", sort=True):
            kept = at_defaults(group, group.method.iloc[0], axis)
            for _, runs_at in kept.groupby(kept[f"axis_{axis}"].map(repr), sort=True):
                v = runs_at[f"axis_{axis}"].iloc[0]
                if v is not None:
                    top1 = runs_at.top1.dropna()
                    mean, half = interval(per_group(runs_at, "top1"))
                    rows.append({"axis": axis, "series": series, "setting": series.split(", ", 1)[1], "value": v,
                                 "mean": top1.mean(), "std": top1.std(), "n": len(top1),
                                 "groups": int(per_group(runs_at, "top1").notna().sum()), "ci_half": half})
    rows.sort(key=lambda r: (list(AXES).index(r["axis"]), r["series"], str(type(r["value"])), r["value"]))
    table = pd.DataFrame(rows, columns=["axis", "series", "setting", "value", "mean", "std", "n", "groups", "ci_half"])
    # Only axes the records vary: two distinct values at least within one series.
    varied = set(table.groupby(["axis", "series"]).value.agg(lambda v: len(set(map(repr, v)))).loc[lambda n: n >= 2]
                 .index.get_level_values("axis"))
    return table[table.axis.isin(varied)].reset_index(drop=True)


REFERENCES = ("single", "ensemble", "kd")


def references(runs: pd.DataFrame, methods: tuple[str, ...] = REFERENCES) -> pd.DataFrame:
    """setting, method, mean, ci_half, groups of `methods` (their plain variants, meta-train
    teachers) per setting: the reference lines of the ablation panels (single, ensemble, KD) and of
    the headline figure."""
    rows = []
    plain = runs[runs.method.isin(list(methods)) & (runs.variant == runs.method) &
                 (runs.teacher_part == "meta_train")]
    for (setting, method), r in plain.groupby(["setting", "method"], sort=True):
        mean, half = interval(per_group(r, "top1"))
        rows.append({"setting": setting, "method": method, "mean": mean, "ci_half": half,
                     "groups": int(per_group(r, "top1").notna().sum())})
    return pd.DataFrame(rows, columns=["setting", "method", "mean", "ci_half", "groups"])


def series_order(series: set[str], settings: list[str] | None) -> list[str]:
    """Series ("method, setting") as the main table lays them out: methods in its row order, then
    settings in its column order (others after, by name)."""
    where = {s: i for i, s in enumerate(settings or [])}
    split = {s: s.split(", ", 1) for s in series}
    return sorted(series, key=lambda s: (method_rank(split[s][0]), split[s][0],
                                         where.get(split[s][1], len(where)), split[s][1]))


def plot_axis(table: pd.DataFrame, axis: str, grid: str, refs: pd.DataFrame | None = None,
              settings: list[str] | None = None) -> dict[str, bytes]:
    """PNG and PDF of one axis: one panel per series (method, setting) in table order, top-1 mean
    with its 95% t interval over distinct groups, the setting's single / ensemble / KD as
    reference lines with their intervals as bands."""
    values = sorted({norm(v) for v in table.value}, key=lambda v: (str(type(v)), v))
    numeric = all(isinstance(v, float) for v in values)
    where = (lambda v: v) if numeric else {v: i for i, v in enumerate(values)}.get
    series = series_order(set(table.series), settings)
    fig, axes = style.panels(len(series), width=4.2, height=3.2)
    refs = refs if refs is not None else pd.DataFrame(columns=["setting", "method", "mean", "ci_half", "groups"])
    for ax, s in zip(axes, series):
        rows = table[table.series == s].copy()
        rows["x"] = [where(norm(v)) for v in rows.value]
        rows = rows.sort_values("x")
        ax.errorbar(rows.x, rows["mean"], yerr=rows.ci_half.fillna(0), marker="o", capsize=3,
                    linestyle="-" if numeric else "none", color="tab:blue",
                    label=f"WeightFormer ({style.groups_text(rows.groups)})")
        for r in refs[refs.setting == rows.setting.iloc[0]].itertuples():
            colour, dash = style.REFERENCE_STYLE[r.method]
            ax.axhline(r.mean, color=colour, linestyle=dash, linewidth=1.1,
                       label=f"{style.REFERENCE_NAMES[r.method]}, meta-train teachers ({r.groups} groups)")
            if not pd.isna(r.ci_half):
                ax.axhspan(r.mean - r.ci_half, r.mean + r.ci_half, color=colour, alpha=0.12, linewidth=0)
        if not numeric:
            ax.set_xticks(range(len(values)), [style.name(v) for v in values])
            ax.set_xlim(-0.5, len(values) - 0.5)
        elif len(values) <= 8:  # ticks at the values tried, whole numbers without ".0"
            ax.set_xticks(values, [style.name(v) for v in values])
        style.tidy(ax, s, AXES[axis][1], "test top-1 accuracy (%)")
    style.legend_outside(fig, axes, title="lines: mean; bands, bars: 95% t interval")
    fig.suptitle(f"{grid}: WeightFormer ablation, {axis} (mean, 95% t interval over distinct groups)", fontsize=10)
    return figure_bytes(fig)


def write_ablations(runs: pd.DataFrame, folder: Path, grid: str, extra: dict[str, dict[str, bytes]] | None = None,
                    settings: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """plots/<axis>.{png,pdf} for every varied axis (panels in the order of `settings`, the main
    table's columns), and the `extra` figures ({name: {ext: bytes}}); returns the numbers and the
    axes drawn."""
    table = ablation_table(runs)
    axes = [a for a in AXES if (table.axis == a).any()]
    written = set()
    for axis in axes:
        for fmt, data in plot_axis(table[table.axis == axis], axis, grid, references(runs), settings).items():
            written.add(atomic_write_bytes(folder / "plots" / f"{axis}.{fmt}", data))
    for name, figure in (extra or {}).items():
        for fmt, data in figure.items():
            written.add(atomic_write_bytes(folder / "plots" / f"{name}.{fmt}", data))
    for old in (folder / "plots").glob("*"):  # plots of an axis the records no longer vary
        if old.suffix[1:] in SAVE_METADATA and old not in written:
            old.unlink()
    if (folder / "plots").is_dir() and not any((folder / "plots").iterdir()):
        (folder / "plots").rmdir()
    return table, axes
