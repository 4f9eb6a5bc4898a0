"""WeightFormer ablations: top-1 against one setting at a time, the others at the grid's default
(ablations.csv; figures.plot_axis draws them), and the baselines drawn beside them.

The default of a setting is its value in the runs of the plain variant (`weightformer`, or
`weightformer_ft` for fine-tuned runs) of the same (arch, dataset), else its most common value.
"""
from __future__ import annotations

from collections import Counter

import pandas as pd

from bench.report.render import WF_METHODS, column
from bench.report.statistics import interval, per_group

# axis -> its x-axis label with its unit. The record column of an axis is wf_<axis> (WeightFormer's
# config), but for the teachers' own settings, recorded under their own names (TEACHER_COLUMNS).
LABELS = {
    "n_teachers": "teachers per ensemble, N (networks)", "cross": "[cross] token (cross-layer information flow)",
    "shift_weight": "shift-consistency loss weight (0 = off)", "depth": "WeightFormer depth (layers)",
    "d_model": "WeightFormer width, d_model (units)", "output": "output parameterisation",
    "temperature": "softmax temperature (dimensionless)", "align": "teacher alignment before tokenising",
    "init": "teacher pool initialisation", "ft_epochs": "fine-tuning (epochs)",
    "ft_fraction": "fine-tuning data (fraction of the training set)",
    "teacher_part": "teachers (meta-train = seen, held-out = unseen)",
}
TEACHER_COLUMNS = ("init", "teacher_part")
# axis -> (record column, x-axis label)
AXES = {axis: (axis if axis in TEACHER_COLUMNS else f"wf_{axis}", label) for axis, label in LABELS.items()}
# Grid options that say where a row runs, not how: a row limited to one pool is the same
# configuration as the default row on that pool.
WHERE_OPTIONS = ("option_archs", "option_inits", "option_pools")


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
    """The runs of one series whose every axis other than `axis`, and every grid option that is no
    axis (a zoo's pool size, steps, transfer split), holds its default: one point of a plot is one
    configuration, never an average of unlike ones."""
    plain = group[group.variant == method]
    base = plain if len(plain) else group
    keep = pd.Series(True, index=group.index)
    options = [c for c in group.columns
               if c.startswith("option_") and c[len("option_"):] not in AXES and c not in WHERE_OPTIONS]
    for col in [f"axis_{other}" for other in AXES if other != axis] + options:
        values = [norm(v) for v in group[col]]
        default = mode([norm(v) for v in base[col]])
        keep &= pd.Series([v == default for v in values], index=group.index)
    return group[keep]


def ablation_table(runs: pd.DataFrame, metric: str = "top1") -> pd.DataFrame:
    """axis, series, setting, value, mean, std (n-1), n of top-1, and the 95% t interval's half-width
    over distinct groups of teachers (`groups`, `ci_half`): the numbers behind every plot."""
    wf, rows = wf_axes(runs), []
    for axis in AXES:
        for series, group in wf.groupby("series_any_init" if axis == "init" else "series", sort=True):
            kept = at_defaults(group, group.method.iloc[0], axis)
            for _, runs_at in kept.groupby(kept[f"axis_{axis}"].map(repr), sort=True):
                v = runs_at[f"axis_{axis}"].iloc[0]
                if v is not None:
                    top1 = pd.to_numeric(column(runs_at, metric), errors="coerce").dropna()
                    mean, half = interval(per_group(runs_at, metric))
                    rows.append({"axis": axis, "series": series, "setting": series.split(", ", 1)[1], "value": v,
                                 "mean": top1.mean(), "std": top1.std(), "n": len(top1),
                                 "groups": int(per_group(runs_at, metric).notna().sum()), "ci_half": half})
    rows.sort(key=lambda r: (list(AXES).index(r["axis"]), r["series"], str(type(r["value"])), r["value"]))
    table = pd.DataFrame(rows, columns=["axis", "series", "setting", "value", "mean", "std", "n", "groups", "ci_half"])
    # Only the series whose records vary the axis: two distinct values at least (a panel of one
    # point says nothing about the setting).
    varied = set(table.groupby(["axis", "series"]).value.agg(lambda v: len(set(map(repr, v)))).loc[lambda n: n >= 2]
                 .index)
    keep = pd.Series([k in varied for k in zip(table.axis, table.series)], index=table.index, dtype=bool)
    return table[keep].reset_index(drop=True)


REFERENCES = ("single", "ensemble", "kd")


def references(runs: pd.DataFrame, methods: tuple[str, ...] = REFERENCES, metric: str = "top1",
               by_part: bool = False) -> pd.DataFrame:
    """setting, method, teacher_part, mean, ci_half, groups of `methods` per setting: the reference
    lines of the ablation panels (single, ensemble, KD) and of the headline figure. Each method's
    plainest variant there (the one setting the fewest grid options: `kd`, else `kd/zoo` before
    `kd/zoo_transfer`), on the meta-train teachers, or with `by_part` on each part of the pool; `init`:
    how that setting's pool was initialised."""
    rows = []
    options = [c for c in runs.columns if c.startswith("option_")]
    chosen = runs[runs.method.isin(list(methods)) & (by_part | (runs.teacher_part == "meta_train"))]
    for (setting, method, part), r in chosen.groupby(["setting", "method", "teacher_part"], sort=True):
        set_options = r[options].notna().sum(axis=1) if options else pd.Series(0, index=r.index)
        by_variant = set_options.groupby(r.variant).max()
        plainest = sorted(by_variant.index, key=lambda v: (v != method, by_variant[v], v))[0]
        r = r[r.variant == plainest]
        mean, half = interval(per_group(r, metric))
        rows.append({"setting": setting, "method": method, "teacher_part": part, "mean": mean, "ci_half": half,
                     "groups": int(per_group(r, metric).notna().sum()), "init": column(r, "init").iloc[0]})
    return pd.DataFrame(rows, columns=["setting", "method", "teacher_part", "mean", "ci_half", "groups", "init"])
