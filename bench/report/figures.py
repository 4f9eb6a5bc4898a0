"""Every figure of the report, as PNG and PDF bytes with no dates or versions in them:

- plots/headline: every main-table row's top-1 per setting, with the baselines as reference lines;
- plots/claims: the claims' forest plot (each claim's paired difference and its interval against 0
  and the margin, beside a rerun's where there is one);
- plots/cost: top-1 against the seconds each method takes to make its student (log scale): the
  cost-accuracy frontier, the networks no method makes (single, ensemble) as reference lines;
- plots/<axis>: the WeightFormer ablations (ablations.py's table), one figure per axis varied;
- plots/pool_size, plots/meta_training: WeightFormer against its meta-train pool size and every
  meta-training's curves (diagnostics.py's tables).

Numbers come from the modules that make the tables: intervals over distinct groups of teachers
(statistics.interval, per_group), the claims' differences and verdicts as claim_table and
rerun_table computed them; nothing here recomputes a statistic.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.ticker import NullFormatter

from bench.io import atomic_write_bytes
from bench.report import style
from bench.report.ablations import AXES, norm, references
from bench.report.claims import MARGIN_PP
from bench.report.render import SAVE_METADATA, figure_bytes, method_rank, order_rows
from bench.report.statistics import LEVEL, interval, per_group
from bench.report.tables import cost_table

HEADLINE_REFERENCES = ("single", "ensemble", "soup")
PART_COLOURS = {"meta_train": "tab:blue", "held_out": "tab:orange"}
VERDICT_COLOURS = {"supported": "tab:green", "not supported": "tab:red", "inconclusive": "tab:gray"}
KEYS = ["paper", "claim", "setting"]
RERUN_COLUMNS = ["verdict_rerun", "diff_pp_rerun", "ci_low_rerun", "ci_high_rerun", "groups_rerun"]


# --- headline ------------------------------------------------------------------------------------

# The figures show test top-1, or, for a search grid (its `figures_split: val`), val top-1: the split its
# choices read.
METRICS = {"test": "top1", "val": "val_top1"}


def accuracy_label(split: str) -> str:
    return f"{split} top-1 accuracy (%)"


def headline_table(done: pd.DataFrame, settings: list[str], split: str = "test") -> pd.DataFrame:
    """setting, variant, method, part, mean, ci_half, groups: each main-table cell's top-1 as the mean over
    distinct groups of teachers with its 95% t interval; rows in the main table's row order within
    its column order, cells without a finished top-1 left out."""
    methods = dict(zip(done.variant, done.method))
    rows = []
    for setting in settings:
        here = done[done.setting == setting]
        for variant in order_rows(methods):
            runs = here[here.variant == variant]
            values = per_group(runs, METRICS[split]).dropna()
            if not len(values):
                continue
            mean, half = interval(values)
            parts = sorted(set(runs.teacher_part))
            rows.append({"setting": setting, "variant": variant, "method": methods[variant],
                         "part": parts[0] if len(parts) == 1 else "mixed",
                         "mean": mean, "ci_half": half, "groups": len(values)})
    return pd.DataFrame(rows, columns=["setting", "variant", "method", "part", "mean", "ci_half", "groups"])


def draw_references(ax, refs: pd.DataFrame) -> None:
    """The baselines' means on meta-train teachers as horizontal lines across the panel."""
    for r in refs.sort_values("method", key=lambda m: m.map(list(HEADLINE_REFERENCES).index)).itertuples():
        colour, dash = style.REFERENCE_STYLE[r.method]
        ax.axhline(r.mean, color=colour, linestyle=dash, linewidth=1.2, zorder=1,
                   label=f"{style.REFERENCE_NAMES[r.method]} mean ({style.PARTS['meta_train']})")


def plot_headline(table: pd.DataFrame, refs: pd.DataFrame, grid: str, split: str = "test"):
    """The figure (not yet saved): one panel per setting in table order, each row's top-1 as a
    point with its 95% t interval, coloured by teacher part, rows along x in table order."""
    settings = list(dict.fromkeys(table.setting))
    rows = order_rows(dict(zip(table.variant, table.method)))
    fig, axes = style.panels(len(settings), width=max(4.0, 0.32 * len(rows) + 1.2), height=3.8)
    for ax, setting in zip(axes, settings):
        t = table[table.setting == setting]
        for part, points in t.groupby("part", sort=False):
            ax.errorbar([rows.index(v) for v in points.variant], points["mean"], yerr=points.ci_half.fillna(0),
                        fmt="o", markersize=4, capsize=2.5, color=PART_COLOURS.get(part, "black"), zorder=3,
                        label=f"top-1 ± {LEVEL:.0%} t interval over groups, {style.PARTS.get(part, 'both parts')}")
        draw_references(ax, refs[refs.setting == setting])
        ax.set_xticks(range(len(rows)), rows, rotation=60, ha="right", rotation_mode="anchor")
        ax.set_xlim(-0.6, len(rows) - 0.4)
        style.tidy(ax, setting, None, accuracy_label(split))
    style.legend_outside(fig, axes, title=f"per point: {style.groups_text(table.groups)} of teachers")
    fig.suptitle(f"{grid}: top-1 per method and setting (mean over distinct groups of teachers, "
                 f"{LEVEL:.0%} t interval)", fontsize=style.FONT["title"] + 1)
    return fig


def headline(done: pd.DataFrame, settings: list[str], grid: str, split: str = "test"):
    """plot_headline of `done`'s finished method runs, or None where none has a top-1."""
    table = headline_table(done, settings, split)
    if table.empty:
        return None
    return plot_headline(table, references(done, HEADLINE_REFERENCES, METRICS[split]), grid, split)


HEADLINE_CAPTION = (f"each method's test top-1 (the main table's rows, left to right) per setting (panels, in the "
                    f"table's column order): a point is the mean over distinct groups of teachers, its bar the "
                    f"{LEVEL:.0%} t interval over those groups (blue: meta-train teachers, orange: held-out "
                    f"teachers; groups per point in the legend); horizontal lines: the mean top-1 on meta-train "
                    f"teachers of the single network (grey, dotted), the ensemble (green, dashed) and the uniform "
                    f"soup (purple, dash-dot), where the grid runs them")


# --- accuracy against cost ----------------------------------------------------------------------------

UNMADE = ("single", "ensemble")  # the rows that make no network: the teachers as they are


def cost_accuracy_table(done: pd.DataFrame, settings: list[str], split: str = "test") -> pd.DataFrame:
    """headline_table's rows with each row's mean time-to-student in seconds (cost_table's: train +
    predict, meta-training left out) and its forward passes per test image."""
    acc = headline_table(done, settings, split)
    cost = cost_table(done, settings)[["variant", "setting", "time_to_student_s", "infer_forwards"]]
    return acc.merge(cost, on=["variant", "setting"], how="left")


def plot_cost(table: pd.DataFrame, grid: str, split: str = "test"):
    """The figure: one panel per setting, each student-making row's top-1 (mean, 95% t interval) at
    its time-to-student on a log axis, labelled; rows that make no network as horizontal lines."""
    settings = list(dict.fromkeys(table.setting))
    fig, axes = style.panels(len(settings), width=4.6, height=3.8)
    for ax, setting in zip(axes, settings):
        t = table[(table.setting == setting) & (table.part == "meta_train")]
        made = t[(t.time_to_student_s > 0) & ~t.method.isin(UNMADE)]
        for r in t[t.method.isin(UNMADE)].itertuples():
            colour, dash = style.REFERENCE_STYLE[r.method]
            forwards = ("" if pd.isna(r.infer_forwards)
                        else f"; {r.infer_forwards:g} forward{'s' if r.infer_forwards > 1 else ''} per image")
            ax.axhline(r.mean, color=colour, linestyle=dash, linewidth=1.2, zorder=1,
                       label=f"{style.REFERENCE_NAMES[r.method]} (no student to make{forwards})")
        ax.errorbar(made.time_to_student_s, made["mean"], yerr=made.ci_half.fillna(0), fmt="o", markersize=4,
                    capsize=2.5, color="tab:blue", zorder=3,
                    label=f"a method's student: top-1 ± {LEVEL:.0%} t interval over groups")
        # Neighbours along x alternate above and below their point, so close rows stay legible.
        for i, r in enumerate(made.sort_values("time_to_student_s").itertuples()):
            ax.annotate(r.variant, (r.time_to_student_s, r.mean), textcoords="offset points",
                        xytext=(4, 3 if i % 2 == 0 else -10), fontsize=style.FONT["tick"])
        if len(made):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # decades only: minor labels collide on a short span
        style.tidy(ax, setting, "time to make the student (s, log scale)", accuracy_label(split))
    style.legend_outside(fig, axes, title=f"meta-train teachers; {style.groups_text(table.groups)} of teachers per point")
    fig.suptitle(f"{grid}: accuracy against the cost of making the student", fontsize=style.FONT["title"] + 1)
    return fig


def cost_figure(done: pd.DataFrame, settings: list[str], grid: str, split: str = "test"):
    """plot_cost of the finished runs, or None where no row both makes a student and has a top-1."""
    table = cost_accuracy_table(done, settings, split)
    if not ((table.time_to_student_s > 0) & ~table.method.isin(UNMADE)).any():
        return None
    return plot_cost(table, grid, split)


COST_CAPTION = (f"each method's test top-1 (mean over distinct groups of meta-train teachers, bar: {LEVEL:.0%} t "
                f"interval) against the seconds it takes to make its student (train + predict, log scale: KD's "
                f"and self-distillation's training, the soups' statistics, WeightFormer's prediction and "
                f"fine-tuning), one panel per setting; WeightFormer's one-off meta-training is left out (costs.md "
                f"gives it and the ensembles that repay it); horizontal lines: the single network and the "
                f"ensemble, which make no student (the ensemble runs N networks per image)")


# --- claims' forest plot -----------------------------------------------------------------------------

def forest_table(claims: pd.DataFrame, rerun: pd.DataFrame | None = None) -> pd.DataFrame:
    """The claims with runs (claim_table rows with at least one group), in the claim table's order,
    with the rerun's verdict and interval beside each (rerun_table's `_rerun` columns; NaN without)."""
    rows = claims[claims.groups > 0][KEYS + ["relation", "verdict", "diff_pp", "ci_low", "ci_high", "groups"]]
    if rerun is not None and len(rerun) and set(RERUN_COLUMNS) <= set(rerun.columns):
        rows = rows.merge(rerun[KEYS + RERUN_COLUMNS], on=KEYS, how="left")
    else:
        rows = rows.assign(**{c: pd.NA for c in RERUN_COLUMNS})
    return rows.reset_index(drop=True)


def has_rerun(table: pd.DataFrame) -> pd.Series:
    """Rows whose rerun has runs of both sides (rerun_table marks the others `missing`)."""
    verdicts = table.verdict_rerun.astype(object)
    return verdicts.isin(list(VERDICT_COLOURS)) & pd.to_numeric(table.diff_pp_rerun, errors="coerce").notna()


def draw_interval(ax, y: float, mean: float, low, high, verdict: str, rerun: bool = False) -> None:
    """One claim's mean difference and its interval as a horizontal bar; a mean without an
    interval (too few groups, no spread) as a point alone. A rerun's: hollow and lighter."""
    err = [[mean - low], [high - mean]] if pd.notna(low) and pd.notna(high) else None
    colour = VERDICT_COLOURS.get(verdict, "black")
    ax.errorbar([mean], [y], xerr=err, fmt="o", markersize=4 if rerun else 5, capsize=2, color=colour,
                alpha=0.5 if rerun else 1.0, markerfacecolor="white" if rerun else colour, zorder=3)


def verdict_keys(ax, reruns: bool) -> None:
    """Legend entries for the verdict colours and the rerun's marker, drawn as empty lines so the
    legend shows every verdict whether or not the records reach it."""
    for verdict, colour in VERDICT_COLOURS.items():
        ax.plot([], [], "o", color=colour, label=verdict)
    if reruns:
        ax.plot([], [], "o", color="tab:gray", markerfacecolor="white", alpha=0.5,
                label="rerun with other seeds (hollow, lighter; colour: its verdict)")


def plot_forest(table: pd.DataFrame, grid: str):
    """The figure (not yet saved): one panel per setting in table order, one row per claim in
    claim order, each with its paired mean difference and interval coloured by verdict, the
    rerun's just below it; vertical lines at 0 and at ±MARGIN_PP."""
    settings = list(dict.fromkeys(table.setting))
    claims = list(dict.fromkeys(table.claim))
    reruns = bool(has_rerun(table).any())
    fig, axes = style.panels(len(settings), width=4.4, height=0.34 * len(claims) * (1.5 if reruns else 1) + 1.4,
                             sharex=True, sharey=True)
    verdict_keys(axes[0], reruns)
    for ax, setting in zip(axes, settings):
        t = table[table.setting == setting]
        for r, rerun in zip(t.itertuples(), has_rerun(t)):
            y = claims.index(r.claim)
            draw_interval(ax, y - (0.18 if reruns else 0), r.diff_pp, r.ci_low, r.ci_high, r.verdict)
            if rerun:
                draw_interval(ax, y + 0.18, float(r.diff_pp_rerun), r.ci_low_rerun, r.ci_high_rerun,
                              r.verdict_rerun, rerun=True)
        ax.axvline(0, color="black", linewidth=0.9, zorder=1, label="0: no difference")
        for edge in (-MARGIN_PP, MARGIN_PP):
            ax.axvline(edge, color="0.45", linestyle="--", linewidth=0.9, zorder=1,
                       label=f"±{MARGIN_PP:g} pp: the margin of ≈ (approximately equal)")
        ax.set_yticks(range(len(claims)), claims)
        ax.set_ylim(len(claims) - 0.5, -0.5)  # the first claim on top, as in claims.md
        style.tidy(ax, setting, "Δ top-1, A − B (pp)", None)
    style.legend_outside(fig, axes, columns=3)
    fig.suptitle(f"{grid}: claims, paired Δ top-1 with its {LEVEL:.0%} t interval over distinct groups of teachers",
                 fontsize=style.FONT["title"] + 1)
    return fig


def claims_forest(claims: pd.DataFrame, rerun: pd.DataFrame | None, grid: str):
    """plot_forest of the claims with runs, or None where no claim has any."""
    table = forest_table(claims, rerun)
    return None if table.empty else plot_forest(table, grid)


def forest_caption(rerun: bool) -> str:
    return (f"each claim's paired difference top-1(A) − top-1(B) in pp (rows: the claims of claims.md, panels: "
            f"settings in the table's order): the point is the mean over distinct groups of teachers, the bar its "
            f"{LEVEL:.0%} paired t interval (a point without a bar: fewer than two groups or no spread); colour: "
            f"the verdict (green supported, red not supported, grey inconclusive); solid vertical line: 0, no "
            f"difference; dashed vertical lines: ±{MARGIN_PP:g} pp, the margin within which A ≈ B"
            + ("; hollow, lighter points just below: the same claim on the rerun with other seeds (rerun.md), "
               "coloured by the rerun's verdict" if rerun else ""))


# --- ablations ----------------------------------------------------------------------------------

def series_order(series: set[str], settings: list[str] | None) -> list[str]:
    """Series ("method, setting") as the main table lays them out: methods in its row order, then
    settings in its column order (others after, by name)."""
    where = {s: i for i, s in enumerate(settings or [])}
    split = {s: s.split(", ", 1) for s in series}
    return sorted(series, key=lambda s: (method_rank(split[s][0]), split[s][0],
                                         where.get(split[s][1], len(where)), split[s][1]))


# The teacher_part panels' baselines, drawn as hollow points beside WeightFormer's at each part.
PART_MARKERS = {"single": "v", "ensemble": "D", "kd": "^"}
# Axes whose every point has baselines of its own, drawn beside it: the refs column that names the point.
BESIDE = {"teacher_part": "teacher_part", "init": "init"}
# Categorical axes drawn in the tables' order: the meta-train (seen) teachers first, as the main table's rows.
VALUE_ORDER = {"teacher_part": ["meta_train", "held_out"]}


def plot_axis(table: pd.DataFrame, axis: str, grid: str, refs: pd.DataFrame | None = None,
              settings: list[str] | None = None, split: str = "test") -> dict[str, bytes]:
    """PNG and PDF of one axis: one panel per series (method, setting) in table order, top-1 mean
    with its 95% t interval over distinct groups, the setting's single / ensemble / KD as
    reference lines with their intervals as bands."""
    values = sorted({norm(v) for v in table.value}, key=lambda v: (str(type(v)), v))
    if axis in VALUE_ORDER:  # a categorical axis with an order of its own (the table's), not the names'
        values = sorted(values, key=lambda v: VALUE_ORDER[axis].index(v) if v in VALUE_ORDER[axis] else len(values))
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
        mine = refs[refs.setting == rows.setting.iloc[0]]
        if axis == "init":  # a series spans pools: each pool's baselines, not the first pool's across all
            base = rows.setting.iloc[0]
            same = pd.Series([s == base or s.startswith(f"{base} [") for s in refs.setting], index=refs.index, dtype=bool)
            mine = refs[same & (refs.teacher_part == "meta_train")]
        if axis in BESIDE:  # each part's (pool's) own baselines beside its point, not one part's across both
            for r in mine.itertuples():
                x = where(norm(getattr(r, BESIDE[axis])))
                if x is None:
                    continue
                offset = 0.12 * (1 + list(style.REFERENCE_STYLE).index(r.method))
                ax.errorbar(x + offset, r.mean, yerr=0 if pd.isna(r.ci_half) else r.ci_half,
                            marker=PART_MARKERS.get(r.method, "s"), capsize=3, linestyle="none",
                            color=style.REFERENCE_STYLE[r.method][0], mfc="white",
                            label=f"{style.REFERENCE_NAMES[r.method]}, same teachers")
        else:
            for r in mine[mine.teacher_part == "meta_train"].itertuples():
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
        style.tidy(ax, s, AXES[axis][1], accuracy_label(split))
    style.legend_outside(fig, axes, title="points: mean over groups, bars: 95% t interval" if axis in BESIDE
                         else "lines: mean; bands, bars: 95% t interval")
    what = "seen and unseen teachers" if axis == "teacher_part" else f"ablation, {axis}"
    fig.suptitle(f"{grid}: WeightFormer, {what} (mean, 95% t interval over distinct groups)", fontsize=10)
    return figure_bytes(fig)


# --- what a WeightFormer learnt -----------------------------------------------------------------

# The pool-size series' colours: none of the reference lines' (grey, green, red, purple, brown), so
# each colour means one thing.
SERIES_COLOURS = ("tab:blue", "tab:orange", "tab:cyan", "tab:pink", "tab:olive", "black")


def plot_pool_size(table: pd.DataFrame, grid: str, settings: list[str] | None = None) -> dict[str, bytes]:
    """One column of panels per setting: above, WeightFormer's top-1 against pool size (log2 axis,
    95% intervals over groups) with the unseen groups' references as horizontal lines with shaded
    intervals; below, WeightFormer − its anchor paired per group (free of the teachers' own spread).
    Columns in the order of `settings` (the main table's), others after by name."""
    present = set(table.setting)
    settings = [s for s in settings or [] if s in present] + sorted(present - set(settings or []))
    fig, axes = style.pyplot().subplots(2, len(settings), figsize=(6.4 * len(settings), 7.4), squeeze=False,
                                        sharex="col", gridspec_kw={"height_ratios": [3, 2]}, layout="constrained")
    styles = {"single": ("tab:gray", ":"), "ensemble": ("tab:green", "--"), "KD": ("tab:red", "-."),
              "KD on transfer": ("tab:purple", (0, (5, 2, 1, 2, 1, 2)))}
    for ax, low, setting in zip(axes[0], axes[1], settings):
        t = table[table.setting == setting]
        ran = sorted(set(t.pool_size.dropna()))
        for i, (series, rows) in enumerate(t[t.pool_size.notna()].groupby("series", sort=True)):
            rows = rows.sort_values("pool_size")
            # A line only joins neighbouring pool sizes that both ran: none is drawn through a size
            # this series skipped.
            joined = [ran.index(b) - ran.index(a) == 1 for a, b in zip(rows.pool_size, rows.pool_size[1:])]
            line = "-" if len(rows) > 1 and all(joined) else "none"
            colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
            ax.errorbar(rows.pool_size, rows["mean"], yerr=rows.ci_half.fillna(0), marker="o", capsize=3,
                        color=colour, linestyle=line, label=f"{series} (n = {rows.groups.min()} groups)")
            low.errorbar(rows.pool_size, rows.minus_anchor, yerr=rows.minus_anchor_ci_half.fillna(0), marker="o",
                         capsize=3, color=colour, linestyle=line)
        low.axhline(0, color="black", linewidth=0.8)
        low.set_ylabel("WF − anchor, paired (pp)")
        low.set_xlabel("meta-train pool size (teachers)")
        low.grid(alpha=0.3)
        for r in t[t.pool_size.isna()].itertuples():
            colour, dash = styles.get(r.series.split(" (")[0], ("tab:brown", "-"))
            ax.axhline(r.mean, color=colour, linestyle=dash, linewidth=1.2, label=f"{r.series} (n = {r.groups})")
            if not pd.isna(r.ci_half):
                ax.axhspan(r.mean - r.ci_half, r.mean + r.ci_half, color=colour, alpha=0.12, linewidth=0)
        sizes = sorted(set(t.pool_size.dropna()))
        ax.set_xscale("log", base=2)
        low.set_xticks(sizes, [f"{s:g}" for s in sizes])
        ax.set_ylabel("test top-1 accuracy (%)")
        ax.set_title(setting, fontsize=10)
        ax.grid(alpha=0.3)
    style.legend_outside(fig, list(axes[0]))
    fig.suptitle(f"{grid}: WeightFormer vs meta-train pool size (mean, 95% t interval over distinct groups)",
                 fontsize=10)
    return figure_bytes(fig)


def curve_ylabel(curves: pd.DataFrame) -> str:
    return "eq. 1 KL (nats; solid: training batches" + (", dashed: val)" if curves.val_kl.notna().any() else ")")


def plot_curves(curves: pd.DataFrame, grid: str) -> dict[str, bytes]:
    """Train KL (solid) and, where the meta-training checked it, val KL (dashed, same colour) per
    meta-training, log y; the y label names the dashed lines only where there are any."""
    plt = style.pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.4), layout="constrained")
    groups = list(curves.groupby("label", sort=True))
    # One colour per meta-training: the 10 default colours while they suffice, else 20 paired shades.
    palette = [f"C{i}" for i in range(10)] if len(groups) <= 10 else list(plt.get_cmap("tab20").colors)
    for i, (label, c) in enumerate(groups):
        colour = palette[i % len(palette)]
        ax.plot(c.step, c.kl, color=colour, linewidth=1, label=label)
        if c.val_kl.notna().any():
            ax.plot(c.step, c.val_kl, color=colour, linewidth=1, linestyle="--")
    ax.set_yscale("log")
    ax.set_xlabel("meta-training step")
    ax.set_ylabel(curve_ylabel(curves))
    ax.set_title(f"{grid}: meta-training curves", fontsize=10)
    ax.grid(alpha=0.3)
    style.legend_outside(fig, [ax])
    return figure_bytes(fig)


# --- into the report -------------------------------------------------------------------------------

def kept_rerun(folder: Path) -> pd.DataFrame | None:
    """rerun.csv of an earlier report given a rerun, which the report keeps and links; None if none."""
    path = folder / "rerun.csv"
    return pd.read_csv(path) if path.is_file() else None


def report_figures(done: pd.DataFrame, settings: list[str], claims: pd.DataFrame, rerun: pd.DataFrame | None,
                   folder: Path, grid: str, split: str = "test") -> tuple[dict[str, dict[str, bytes]], str]:
    """({name: {format: bytes}} of the headline and claims figures the records give, the index's
    Figures section linking them with their captions; "" without figures). `rerun`: this report's
    rerun_table, else the one an earlier report left in `folder`, drawn as the index still links it."""
    figs, lines = {}, []
    rerun = kept_rerun(folder) if rerun is None else rerun
    forest = forest_table(claims, rerun)
    on = lambda caption: caption.replace("test top-1", f"{split} top-1")  # noqa: E731
    made = {"headline": (headline(done, settings, grid, split), on(HEADLINE_CAPTION)),
            "claims": (None if forest.empty else plot_forest(forest, grid), forest_caption(bool(has_rerun(forest).any()))),
            "cost": (cost_figure(done, settings, grid, split), on(COST_CAPTION))}
    for name, (fig, caption) in made.items():
        if fig is not None:
            figs[name] = figure_bytes(fig)
            lines.append(f"- [plots/{name}.png](plots/{name}.png), [pdf](plots/{name}.pdf): {caption}.")
    return figs, ("## Figures\n\n" + "\n".join(lines) + "\n\n" if lines else "")


def write_plots(folder: Path, figures: dict[str, dict[str, bytes]]) -> None:
    """plots/<name>.<format> of every figure ({name: {format: bytes}}); the plots of an earlier
    report that these records no longer give (an axis they no longer vary) are removed."""
    written = set()
    for name, figure in figures.items():
        for fmt, data in figure.items():
            written.add(atomic_write_bytes(folder / "plots" / f"{name}.{fmt}", data))
    for old in (folder / "plots").glob("*"):
        if old.suffix[1:] in SAVE_METADATA and old not in written:
            old.unlink()
    if (folder / "plots").is_dir() and not any((folder / "plots").iterdir()):
        (folder / "plots").rmdir()
