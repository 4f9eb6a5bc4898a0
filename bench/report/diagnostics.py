"""What a WeightFormer learnt: per-variant diagnostics, the capacity ladder, WeightFormer against
the size of its meta-train pool, and every meta-training's curves.

- diagnostics: per (setting, WeightFormer variant) over distinct groups: top-1, WF − anchor (paired
  per group, 95% t interval), KL(ensemble || ·) at T = 1 on test of the student, its anchor and KD
  on the same groups, the student's agreement with its anchor and with the students predicted from
  the same anchor and other partners (`partner_agreement`: near 100 % means the prediction ignores
  the partners), the meta-train pool and how many steps its meta-training ran.
- ladder: on a setting that has a `fit_group` variant, its rows for one fixed group (a WeightFormer
  fitted to each group alone), the pool (seen groups, the same pool size) and unseen groups.
- pool size: WeightFormer's top-1 on seen and unseen groups against the meta-train pool size, with
  single, ensemble and KD on the same unseen groups as reference lines (pool_size.csv; drawn by
  figures.plot_pool_size).
- meta-training curves: train KL (eq. 1) and, where early stopping watched it, val KL per step
  (meta_training.csv; drawn by figures.plot_curves).
"""
from __future__ import annotations

from collections import Counter

import math

import pandas as pd

from bench.report.render import DASH, column, fmt, md_table, tex_table
from bench.report.statistics import groups_of, interval, per_group


def _option(rows: pd.DataFrame, name: str, default=None) -> pd.Series:
    return column(rows, f"option_{name}", default)


def rung(row) -> str:
    if row.get("option_fit_group") is True:
        return "one group"
    return "unseen" if row.get("teacher_part") == "held_out" else "seen"


def _kd_kl(done: pd.DataFrame, setting: str, groups: pd.Series) -> float:
    """KD's mean test KL(ensemble || KD) over the groups given, KD trained on the training split."""
    kd = done[(done.setting == setting) & (done.method == "kd")]
    kd = kd[[v in (None, "train") for v in _option(kd, "distill_on")]]
    if not len(kd) or "test_kl_from_ensemble" not in kd:
        return math.nan
    by_group = per_group(kd, "test_kl_from_ensemble")
    shared = [g for g in groups.index if g in by_group.index]
    return float(by_group[shared].mean()) if shared else math.nan


def diagnostics_table(done: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, WeightFormer variant): the numbers the module's docstring lists."""
    wf = done[done.method == "weightformer"] if "method" in done else done.iloc[:0]
    rows = []
    for (setting, variant), runs in (wf.groupby(["setting", "variant"], sort=True) if len(wf) else []):
        top1 = per_group(runs, "top1")
        diff = (per_group(runs, "top1") - per_group(runs, "anchor_top1")).dropna()
        d, half = interval(diff)
        first = runs.iloc[0]
        rows.append({
            "setting": setting, "variant": variant, "rung": rung(first),
            "pool_size": _int(first.get("wf_members")), "drawn_from": _int(first.get("option_pool_size")),
            "distill_on": first.get("wf_distill_on") if isinstance(first.get("wf_distill_on"), str) else "train",
            "groups": len(top1), "top1": float(top1.mean()), "anchor_top1": float(per_group(runs, "anchor_top1").mean()),
            "wf_minus_anchor": d, "ci_half": half,
            "kl_student": float(per_group(runs, "test_kl_from_ensemble").mean()),
            "kl_anchor": float(per_group(runs, "test_anchor_kl_from_ensemble").mean()),
            "kl_kd": _kd_kl(done, setting, top1),
            "anchor_agreement": float(per_group(runs, "anchor_agreement").mean()),
            "partner_agreement": float(per_group(runs, "partner_agreement").mean()),
            "steps_run": float(pd.to_numeric(column(runs, "wf_steps_run"), errors="coerce").mean()),
        })
    return pd.DataFrame(rows, columns=["setting", "variant", "rung", "pool_size", "drawn_from", "distill_on", "groups", "top1",
                                       "anchor_top1", "wf_minus_anchor", "ci_half", "kl_student", "kl_anchor",
                                       "kl_kd", "anchor_agreement", "partner_agreement", "steps_run"])


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def ladder_table(diag: pd.DataFrame) -> pd.DataFrame:
    """Per setting with a `one group` row: that rung, then the seen and unseen rows of a WeightFormer
    meta-trained on the members its groups were drawn from (`pool_size`; eq. 1 on the training
    split), in that order."""
    rows = []
    for setting, d in diag.groupby("setting", sort=True):
        fitted = d[d.rung == "one group"]
        if not len(fitted):
            continue
        size = fitted.drawn_from.iloc[0]
        rows.append(fitted.iloc[0])
        for name in ("seen", "unseen"):
            match = d[(d.rung == name) & (d.pool_size == size) & (d.drawn_from == size) & (d.distill_on == "train")]
            if len(match):
                rows.append(match.iloc[0])
    return pd.DataFrame(rows, columns=diag.columns).reset_index(drop=True)


HEADER = ["setting", "variant", "rung", "meta-train teachers", "groups", "WF top-1", "anchor top-1",
          "WF − anchor (pp) [95% CI]", "KL(ens‖WF)", "KL(ens‖anchor)", "KL(ens‖KD)", "agrees with anchor (%)",
          "agrees across partners (%)", "steps run"]


def render(table: pd.DataFrame, title: str, grid: str, note: str) -> tuple[str, str]:
    def ci(r) -> str:
        if pd.isna(r.wf_minus_anchor):
            return DASH
        return f"{r.wf_minus_anchor:+.2f}" + ("" if pd.isna(r.ci_half) else
                                               f" [{r.wf_minus_anchor - r.ci_half:+.2f}, {r.wf_minus_anchor + r.ci_half:+.2f}]")

    cells = pd.DataFrame([[r.setting, r.variant, r.rung + ("" if r.distill_on == "train" else f" ({r.distill_on})"),
                           DASH if r.pool_size is None or pd.isna(r.pool_size) else str(int(r.pool_size)),
                           str(r.groups), fmt(r.top1), fmt(r.anchor_top1), ci(r), fmt(r.kl_student, 4),
                           fmt(r.kl_anchor, 4), fmt(r.kl_kd, 4), fmt(r.anchor_agreement, 1),
                           fmt(r.partner_agreement, 1), fmt(r.steps_run, 0)] for r in table.itertuples()],
                         columns=HEADER)
    md = f"# {grid}: {title}\n\n{note}\n\n" + md_table(cells)
    return md, tex_table(cells, f"{grid}: {title}. {note}", align="lll" + "r" * (len(HEADER) - 3))


DIAG_NOTE = ("Means over distinct groups of teachers (groups); WF − anchor paired per group with its 95% t "
             "interval; KL at T = 1 on the test split, KD's on the same groups; agreement: % of test images "
             "with the same top class (across partners: the students predicted from the same anchor with other "
             "partner sets); steps run: meta-training steps before early stopping (or the limit).")
LADDER_NOTE = ("How well WeightFormer fits: one group (a WeightFormer fitted to each group alone), the pool it "
               "was meta-trained on (seen groups) and held-out teachers (unseen groups), one pool size.")


# --- pool size and meta-training curves (drawn in figures.py) ----------------------------------

def pool_size_table(done: pd.DataFrame) -> pd.DataFrame:
    """setting, series, pool_size, mean, ci_half, groups: WeightFormer seen / unseen (and on the transfer
    split) against the meta-train pool size, and the unseen groups' single / ensemble / KD (pool_size NaN)."""
    wf = done[done.method == "weightformer"] if "method" in done else done.iloc[:0]
    wf = wf[[o is not True for o in _option(wf, "fit_group")]]
    rows = []
    for setting, runs in (wf.groupby("setting", sort=True) if len(wf) else []):
        sizes = pd.to_numeric(column(runs, "wf_members"), errors="coerce")
        if sizes.nunique() < 2:
            continue
        on = column(runs, "wf_distill_on", "train")
        # A step limit other than the setting's usual one is its own series (a longer meta-training).
        limits = pd.to_numeric(_option(runs, "steps"), errors="coerce").fillna(-1)
        usual = limits.mode().iloc[0]
        for (part, split, size, limit), r in runs.groupby([runs.teacher_part, on, sizes, limits], sort=True):
            series = ("unseen" if part == "held_out" else "seen") + ("" if split == "train" else f", eq. 1 on {split}") + \
                ("" if limit == usual or limit < 0 else f", {int(limit)} steps")
            m, h = interval(per_group(r, "top1"))
            d, dh = interval((per_group(r, "top1") - per_group(r, "anchor_top1")).dropna())
            rows.append({"setting": setting, "series": f"WeightFormer, {series}", "pool_size": float(size),
                         "mean": m, "ci_half": h, "minus_anchor": d, "minus_anchor_ci_half": dh,
                         "groups": r.pipe(groups_of).nunique()})
        refs = done[(done.setting == setting) & (done.teacher_part == "held_out") &
                    done.method.isin(["single", "ensemble", "kd"])]
        for (method, split), r in refs.groupby([refs.method, column(refs, "option_distill_on", "train")], sort=True):
            m, h = interval(per_group(r, "top1"))
            label = {"single": "single", "ensemble": "ensemble", "kd": "KD"}[method] + \
                ("" if split == "train" else f" on {split}")
            rows.append({"setting": setting, "series": f"{label} (unseen groups)", "pool_size": math.nan,
                         "mean": m, "ci_half": h, "minus_anchor": math.nan, "minus_anchor_ci_half": math.nan,
                         "groups": r.pipe(groups_of).nunique()})
    return pd.DataFrame(rows, columns=["setting", "series", "pool_size", "mean", "ci_half", "minus_anchor",
                                       "minus_anchor_ci_half", "groups"])


def _shown(value) -> str:
    """A setting as a legend shows it: numbers without a trailing .0 (pandas keeps them as floats)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


# Record fields of a meta-training that are bookkeeping, not a setting a legend should name.
CURVE_BOOKKEEPING = ("wf_parameters", "wf_steps_run", "wf_seed", "wf_best_step", "wf_checkpoint_every")


def curve_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """Each finished meta-training's curve, one row per log point: label, step, kl, val_kl. A label
    names the pool and the settings that differ between that pool's meta-trainings (steps 300,
    lr 0.003), so the legend says what varied; a run id is added only where labels would coincide."""
    meta = runs[(runs.stage == "meta_train") & (column(runs, "status") == "done")]
    meta = meta[[isinstance(c, list) for c in column(meta, "curve")]]
    if meta.empty:
        return pd.DataFrame(columns=["label", "step", "kl", "val_kl"])
    meta = meta.assign(pool=column(meta, "pool", "?"))
    settings = [c for c in meta.columns if c.startswith("wf_") and c not in CURVE_BOOKKEEPING]
    labels = {}
    for pool, same in meta.groupby("pool", sort=True):
        varied = [c for c in settings if same[c].map(repr).nunique() > 1]
        common = {c: same[c].map(repr).mode().iloc[0] for c in varied}  # the pool's most common value
        for r in same.itertuples():
            # What this run sets apart from the pool's most common settings (a setting it does not
            # have, NaN, is left out).
            parts = [f"{c[len('wf_'):]} {_shown(getattr(r, c))}" for c in varied
                     if repr(getattr(r, c)) != common[c] and not pd.isna(getattr(r, c))]
            labels[r.run_id] = f"{pool}: " + (", ".join(parts) if parts else "the common settings") if varied \
                else f"{pool}"
    twice = {v for v, n in Counter(labels.values()).items() if n > 1}
    rows = []
    for r in meta.itertuples():
        label = labels[r.run_id] + (f" [{r.run_id[:6]}]" if labels[r.run_id] in twice else "")
        rows += [{"label": label, "step": p["step"], "kl": p["kl"], "val_kl": p.get("val_kl", math.nan)} for p in r.curve]
    return pd.DataFrame(rows, columns=["label", "step", "kl", "val_kl"])
