"""The papers' claims as verdicts on a grid's records, and the published Allen-Zhu & Li anchors.

A claim compares the top-1 of two sets of runs on one setting: the difference of means in
percentage points (pp) and its 95% Welch-t confidence interval decide the verdict.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from scipy import stats

from bench.report.frame import DASH, fmt, md_table, tex_table

MARGIN_PP = 1.0  # "approximately equal": the CI of the difference lies within ±MARGIN_PP of top-1
LEVEL = 0.95
RULES = (f"A ≈ B (approximately equal) is supported when the {LEVEL:.0%} CI of mean top-1(A) − mean "
         f"top-1(B) lies within ±{MARGIN_PP:g} pp, not supported when it lies entirely outside, inconclusive "
         f"otherwise. A > B is supported when the CI lies above 0, not supported when it lies below 0 or "
         f"within ±{MARGIN_PP:g} pp (approximately equal, so A is not better), inconclusive otherwise. "
         f"CIs are Welch t intervals over seeds; fewer than 2 seeds on a side is inconclusive.")
UNSEEN = "weightformer@held_out"  # the side "WeightFormer on teachers never used for meta-training"


@dataclass(frozen=True)
class Claim:
    paper: str
    text: str
    a: str  # a variant (seen teachers), or UNSEEN
    relation: str  # ">" or "≈"
    b: str


CLAIMS = (
    Claim("WeightFormer", "WF ≈ ensemble", "weightformer", "≈", "ensemble"),
    Claim("WeightFormer", "WF > single", "weightformer", ">", "single"),
    Claim("WeightFormer", "WF > KD", "weightformer", ">", "kd"),
    Claim("WeightFormer", "WF+FT > ensemble", "weightformer_ft", ">", "ensemble"),
    Claim("WeightFormer", "WF works on unseen teachers", UNSEEN, ">", "single"),
    Claim("Allen-Zhu & Li", "ensemble > single", "ensemble", ">", "single"),
    Claim("Allen-Zhu & Li", "KD ≈ ensemble", "kd", "≈", "ensemble"),
    Claim("Allen-Zhu & Li", "self-distillation > single", "self_distill", ">", "single"),
)


def welch_ci(a: pd.Series, b: pd.Series, level: float = LEVEL) -> tuple[float, float, float]:
    """mean(a) − mean(b) and its Welch t confidence interval (both sides need n >= 2)."""
    na, nb = len(a), len(b)
    diff = float(a.mean() - b.mean())
    va, vb = float(a.var(ddof=1)) / na, float(b.var(ddof=1)) / nb
    if va + vb == 0:  # no spread on either side: the difference is exact
        return diff, diff, diff
    df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * math.sqrt(va + vb)
    return diff, diff - half, diff + half


def verdict(relation: str, lo: float, hi: float, margin: float = MARGIN_PP) -> tuple[str, str]:
    """(verdict, reason) for a CI [lo, hi] of A − B in pp."""
    within = -margin <= lo and hi <= margin
    if relation == ">":
        if lo > 0:
            return "supported", "CI above 0"
        if hi < 0:
            return "not supported", "CI below 0"
        if within:
            return "not supported", f"CI within ±{margin:g} pp: approximately equal"
        return "inconclusive", "CI contains 0 and reaches beyond the margin"
    if within:
        return "supported", f"CI within ±{margin:g} pp"
    if lo > margin or hi < -margin:
        return "not supported", f"CI outside ±{margin:g} pp"
    return "inconclusive", f"CI overlaps the ±{margin:g} pp margin"


def side(runs: pd.DataFrame, name: str, part: str) -> tuple[pd.Series, str]:
    """Top-1 of one claim side on one setting, and its label: the method's runs on that teacher
    part, of its plain variant if there (`kd`), else its `/unseen` variant, else the first."""
    method, part = ("weightformer", "held_out") if name == UNSEEN else (name, part)
    rows = runs[(runs.method == method) & (runs.teacher_part == part)]
    variants = sorted(set(rows.variant))
    pick = next((v for v in (method, f"{method}/unseen") if v in variants), variants[0] if variants else method)
    label = pick + (" (unseen)" if part == "held_out" and not pick.endswith("unseen") else "")
    return rows[rows.variant == pick].top1.dropna(), label


def judge(claim: Claim, runs: pd.DataFrame) -> dict:
    """One claim on one setting's finished method runs."""
    # Baselines compare on the same teachers: the seen part, or the held-out one in a grid of
    # unseen teachers only; the unseen claim compares with single on held-out teachers if run.
    parts = set(runs.teacher_part)
    part = "meta_train" if "meta_train" in parts or not parts else "held_out"
    a, label_a = side(runs, claim.a, part)
    b_part = "held_out" if claim.a == UNSEEN and "held_out" in set(runs[runs.method == claim.b].teacher_part) \
        else part
    b, label_b = side(runs, claim.b, b_part)
    row = {"paper": claim.paper, "claim": claim.text, "a": label_a, "relation": claim.relation, "b": label_b,
           "verdict": "inconclusive", "diff_pp": math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "n_a": len(a), "n_b": len(b), "reason": ""}
    if claim.a == UNSEEN and not len(a):
        return {**row, "reason": "no unseen-teacher runs"}
    if not len(a) or not len(b):
        return {**row, "reason": "no runs of " + " or ".join(l for l, s in ((label_a, a), (label_b, b)) if not len(s))}
    if len(a) < 2 or len(b) < 2:
        return {**row, "diff_pp": float(a.mean() - b.mean()), "reason": f"too few seeds (n={len(a)} vs {len(b)})"}
    diff, lo, hi = welch_ci(a, b)
    v, reason = verdict(claim.relation, lo, hi)
    return {**row, "verdict": v, "diff_pp": diff, "ci_low": lo, "ci_high": hi, "reason": reason}


def claim_table(runs: pd.DataFrame, settings: list[str]) -> pd.DataFrame:
    """One row per claim per setting (in claim order, then the table's column order)."""
    rows = [{"setting": s, **judge(c, runs[runs.setting == s])} for c in CLAIMS for s in settings]
    cols = ["paper", "claim", "setting", "a", "relation", "b", "verdict", "diff_pp", "ci_low", "ci_high", "n_a",
            "n_b", "reason"]
    return pd.DataFrame(rows, columns=cols)


def claims_render(table: pd.DataFrame, grid: str) -> tuple[str, str]:
    """(Markdown, LaTeX) of the claim table."""
    header = ["paper", "claim", "setting", "verdict", "Δ top-1 (pp)", "95% CI (pp)", "n (A, B)", "reason"]
    cells = pd.DataFrame([[r.paper, r.claim, r.setting, r.verdict, fmt(r.diff_pp),
                          DASH if pd.isna(r.ci_low) else f"[{r.ci_low:.2f}, {r.ci_high:.2f}]", f"{r.n_a}, {r.n_b}",
                          r.reason] for r in table.itertuples()], columns=header)
    md = (f"# {grid}: claims\n\nA and B are the two sides of each claim (A = the left side); Δ = mean top-1(A) − "
          f"mean top-1(B), in percentage points (pp). {RULES}\n\n" + md_table(cells))
    return md, tex_table(cells, f"{grid}: claims. {RULES}", align="llllrrrl")


# --- Allen-Zhu & Li's published WRN-28-10 numbers ---------------------------------------------

PUBLISHED = {  # top-1 %, (mean, std or None); single over 10 seeds, ensembles of 10
    "cifar10": {"single": (96.70, 0.21), "ensemble": (97.20, None), "kd": (97.22, None),
                "self_distill": (97.13, None)},
    "cifar100": {"single": (81.51, 0.16), "ensemble": (84.69, None), "kd": (83.81, None),
                 "self_distill": (83.56, None)},
}
ANCHOR_METHODS = ("single", "ensemble", "kd", "self_distill")
ANCHOR_ARCH = "wrn28_10"


def ranking(means: dict[str, float]) -> str:
    return " > ".join(sorted(means, key=lambda m: (-means[m], m))) if means else DASH


def agreeing_pairs(ours: dict[str, float], theirs: dict[str, float]) -> str:
    pairs = [(x, y) for i, x in enumerate(ANCHOR_METHODS) for y in ANCHOR_METHODS[i + 1:]
             if x in ours and y in ours and x in theirs and y in theirs]
    agree = sum((ours[x] > ours[y]) == (theirs[x] > theirs[y]) for x, y in pairs)
    return f"{agree} of {len(pairs)}" if pairs else DASH


def anchors(runs: pd.DataFrame, settings: list[str], counterpart: dict[tuple[str, str], str]) -> str | None:
    """anchors.md: this suite's WRN rows beside the published ones, by setting; None without WRN runs.
    `counterpart` maps a pool's (arch, dataset) to the paper-scale data set it stands for."""
    wrn = runs[(runs.arch == ANCHOR_ARCH) & (runs.teacher_part == "meta_train")]
    if wrn.empty:
        return None
    parts = ["# Anchors: Allen-Zhu & Li (arXiv 2012.09816), WRN-28-10\n",
             "Published: WRN-28-10 on CIFAR, single network over 10 seeds, ensembles of 10 (paper scale). "
             "When the scales differ the absolute numbers are not comparable; compare the ORDERING.\n"]
    for i, s in enumerate([s for s in settings if s in set(wrn.setting)]):
        rows = wrn[wrn.setting == s]
        dataset = rows.dataset.iloc[0]
        # Without the grid file, the allen_zhu grid's pool order pairs settings with CIFAR-10, -100.
        paper_set = counterpart.get((ANCHOR_ARCH, dataset)) or (dataset if dataset in PUBLISHED or i >= len(PUBLISHED)
                                                 else list(PUBLISHED)[i])
        published = PUBLISHED.get(paper_set, {})
        scales = ", ".join(sorted(map(str, set(rows.scale.dropna())))) or "unknown"
        ours = {m: rows[rows.variant == m].top1 for m in ANCHOR_METHODS if (rows.variant == m).any()}
        table = pd.DataFrame([[m, fmt_runs(ours.get(m)), fmt_published(published.get(m))] for m in ANCHOR_METHODS],
                             columns=["method", "this suite: top-1 %", "published: top-1 %"])
        means = {m: float(v.mean()) for m, v in ours.items()}
        theirs = {m: v[0] for m, v in published.items()}
        same = scales == "paper" and dataset == paper_set
        parts += [f"## {s}\n",
                  f"- this suite: scale {scales}, data set {dataset}, {ANCHOR_ARCH} at that scale",
                  f"- published: paper scale, {paper_set if published else 'no published counterpart'}, WRN-28-10",
                  f"- compare: {'absolute numbers and ordering' if same else 'ordering only (scales differ)'}\n",
                  md_table(table),
                  f"Ordering here: {ranking(means)}; published: {ranking(theirs)}; "
                  f"pairwise orderings agreeing: {agreeing_pairs(means, theirs)}.\n"]
    return "\n".join(parts)


def fmt_runs(top1: pd.Series | None) -> str:
    if top1 is None or not len(top1):
        return "missing"
    return f"{top1.mean():.2f} ± {top1.std():.2f} (n={len(top1)})" if len(top1) > 1 else f"{top1.mean():.2f} (n=1)"


def fmt_published(value) -> str:
    if value is None:
        return DASH
    mean, std = value
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
