"""The papers' claims as verdicts on a grid's records, and the published Allen-Zhu & Li anchors.

A claim compares the top-1 of two methods on one setting, paired: the runs of one seed share its
group of teachers, so each group gives one difference A - B (in percentage points, pp), and the
mean difference over distinct groups with its 95% paired-t confidence interval decides the verdict.
Runs on the same group (a repeated group) count once, as the mean of their differences: identical
replicates are no evidence. An inconclusive claim says how many groups its observed spread would
need to be decided.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from bench.report.render import DASH, column, fmt, md_table, tex_table
from bench.report.statistics import LEVEL, groups_of, half_width, paired_ci

MARGIN_PP = 1.0  # "approximately equal": the CI of the difference lies within ±MARGIN_PP of top-1
MIN_GROUPS = 2  # a paired t interval needs two differences
MAX_SEEDS = 10_000  # "seeds needed" beyond this is reported as more than it
RULES = (f"Each seed's group of teachers gives one paired difference top-1(A) − top-1(B) (both methods on "
         f"that group); Δ is their mean over distinct groups and the CI its {LEVEL:.0%} paired t interval. "
         f"A ≈ B (approximately equal) is supported when the CI lies within ±{MARGIN_PP:g} pp, not supported "
         f"when it lies entirely outside, inconclusive otherwise. A > B is supported when the CI lies above "
         f"0, not supported when it lies below 0, or within ±{MARGIN_PP:g} pp with Δ ≤ 0 (approximately equal and "
         f"A not ahead), inconclusive otherwise (so a small lead whose CI touches 0 is inconclusive, never "
         f"a verdict a rerun could turn into its opposite). Fewer than {MIN_GROUPS} distinct groups, or differences "
         f"with no spread at all, are inconclusive; an inconclusive claim gives the number of groups "
         f"(seeds) at which its observed mean and spread would decide it.")
UNSEEN = "weightformer@held_out"  # the side "WeightFormer on teachers never used for meta-training"


@dataclass(frozen=True)
class Claim:
    paper: str
    text: str
    a: str  # a variant (seen teachers), or UNSEEN
    relation: str  # ">" or "≈"
    b: str
    # A control of one regime (the soups of the paper's): its row is left out of a grid that runs
    # no `b` at all (the scratch table), rather than shown as a claim without evidence.
    control: bool = False


CLAIMS = (
    Claim("WeightFormer", "WF ≈ ensemble", "weightformer", "≈", "ensemble"),
    Claim("WeightFormer", "WF > single", "weightformer", ">", "single"),
    Claim("WeightFormer", "WF > KD", "weightformer", ">", "kd"),
    Claim("WeightFormer", "WF+FT > ensemble", "weightformer_ft", ">", "ensemble"),
    Claim("WeightFormer", "WF works on unseen teachers", UNSEEN, ">", "single"),
    # The controls of the paper's regime (teachers fine-tuned from one network, where weight averaging
    # works): WeightFormer earns its meta-training only if it beats the free soup and the learned
    # one (N x L mixing coefficients fitted with eq. 1: WeightFormer without the Transformer).
    Claim("WeightFormer", "WF > uniform soup", "weightformer", ">", "soup", control=True),
    Claim("WeightFormer", "WF > learned soup", "weightformer", ">", "learned_soup", control=True),
    Claim("Allen-Zhu & Li", "ensemble > single", "ensemble", ">", "single"),
    Claim("Allen-Zhu & Li", "KD ≈ ensemble", "kd", "≈", "ensemble"),
    Claim("Allen-Zhu & Li", "self-distillation > single", "self_distill", ">", "single"),
)


def seeds_needed(relation: str, mean: float, sd: float, margin: float = MARGIN_PP, level: float = LEVEL) -> int | None:
    """The fewest groups at which a paired t interval of this mean and spread would reach a verdict
    (None: more than MAX_SEEDS, e.g. a mean sitting on a boundary). For ">" the interval must
    clear 0 on the mean's side, or, with the mean at or below 0, fit within ±margin; for "≈" fit
    within ±margin or clear it."""
    if relation == ">":
        gap = mean if mean > 0 else max(-mean, margin + mean)
    else:
        gap = abs(abs(mean) - margin)
    if sd == 0:
        return MIN_GROUPS
    for n in range(MIN_GROUPS, MAX_SEEDS + 1):
        if half_width(sd, n, level) < gap:
            return n
    return None


def verdict(relation: str, lo: float, hi: float, margin: float = MARGIN_PP) -> tuple[str, str]:
    """(verdict, reason) for a symmetric CI [lo, hi] of A − B in pp (its mean: the midpoint).

    "A > B" is not supported by a CI within the margin only where the mean is at or below 0: a
    lead whose CI touches 0 from above is inconclusive, so that "supported" (CI above 0) and "not
    supported" never border each other and a rerun moves a verdict to inconclusive before it could
    turn it over."""
    within = -margin <= lo and hi <= margin
    if relation == ">":
        if lo > 0:
            return "supported", "CI above 0"
        if hi < 0:
            return "not supported", "CI below 0"
        if within and lo + hi <= 0:
            return "not supported", f"CI within ±{margin:g} pp, Δ ≤ 0: approximately equal"
        if within:
            return "inconclusive", "CI within the margin but Δ > 0 and the CI contains 0"
        return "inconclusive", "CI contains 0 and reaches beyond the margin"
    if within:
        return "supported", f"CI within ±{margin:g} pp"
    if lo > margin or hi < -margin:
        return "not supported", f"CI outside ±{margin:g} pp"
    return "inconclusive", f"CI overlaps the ±{margin:g} pp margin"


def side(runs: pd.DataFrame, name: str, part: str) -> tuple[pd.DataFrame, str]:
    """The runs of one claim side on one setting, and its label: the method's runs on that teacher
    part, of its plain variant if there (`kd`), else its `/unseen` variant, else the first."""
    method, part = ("weightformer", "held_out") if name == UNSEEN else (name, part)
    rows = runs[(runs.method == method) & (runs.teacher_part == part)]
    variants = sorted(set(rows.variant))
    pick = next((v for v in (method, f"{method}/unseen") if v in variants), variants[0] if variants else method)
    label = pick + (" (unseen)" if part == "held_out" and not pick.endswith("unseen") else "")
    rows = rows[(rows.variant == pick) & rows.top1.notna()]
    return rows, label


def paired_differences(a: pd.DataFrame, b: pd.DataFrame) -> pd.Series:
    """top-1(A) − top-1(B) per distinct group: runs paired by seed on the same group, the pairs of
    a repeated group averaged into one difference. Indexed by group."""
    a, b = a.assign(group=groups_of(a)), b.assign(group=groups_of(b))
    pairs = a[["seed", "group", "top1"]].merge(b[["seed", "group", "top1"]], on=["seed", "group"],
                                               suffixes=("_a", "_b"))
    diffs = (pairs.top1_a - pairs.top1_b).groupby(pairs.group).mean()
    return diffs.astype(float)


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
           "n_a": len(a), "n_b": len(b), "groups": 0, "seeds_needed": pd.NA, "reason": ""}
    if claim.a == UNSEEN and not len(a):
        return {**row, "reason": "no unseen-teacher runs"}
    if not len(a) or not len(b):
        return {**row, "reason": "no runs of " + " or ".join(l for l, s in ((label_a, a), (label_b, b)) if not len(s))}
    diffs = paired_differences(a, b)
    row["groups"] = len(diffs)
    if not len(diffs):
        return {**row, "reason": "no seed has both sides on one group of teachers"}
    if len(diffs) < MIN_GROUPS:
        return {**row, "diff_pp": float(diffs.mean()), "seeds_needed": MIN_GROUPS,
                "reason": f"{len(diffs)} distinct group: too few"}
    if float(diffs.std(ddof=1)) == 0:
        return {**row, "diff_pp": float(diffs.mean()),
                "reason": f"the same difference on all {len(diffs)} groups: no spread, no interval"}
    diff, lo, hi = paired_ci(diffs)
    v, reason = verdict(claim.relation, lo, hi)
    needed = seeds_needed(claim.relation, diff, float(diffs.std(ddof=1))) if v == "inconclusive" else pd.NA
    if v == "inconclusive":
        reason += f"; ~{needed} groups would decide it" if needed is not None else \
            f"; more than {MAX_SEEDS} groups would be needed"
    return {**row, "verdict": v, "diff_pp": diff, "ci_low": lo, "ci_high": hi, "seeds_needed": needed,
            "reason": reason}


def claim_table(runs: pd.DataFrame, settings: list[str], planned: set[str] | None = None) -> pd.DataFrame:
    """One row per claim per setting (in claim order, then the table's column order). `planned`:
    the sides the grid file plans (methods, and "<method>@held_out" where one runs on held-out
    teachers); a claim one of whose sides it never runs (Allen-Zhu & Li's grid has no WeightFormer)
    is not listed, a planned side without runs is (inconclusive, no runs)."""
    ran = set(column(runs, "method"))
    asked = lambda c: planned is None or {c.a, c.b} <= planned  # noqa: E731
    rows = [{"setting": s, **judge(c, runs[runs.setting == s])} for c in CLAIMS
            if (not c.control or c.b in ran) and asked(c) for s in settings]
    cols = ["paper", "claim", "setting", "a", "relation", "b", "verdict", "diff_pp", "ci_low", "ci_high", "n_a",
            "n_b", "groups", "seeds_needed", "reason"]
    return pd.DataFrame(rows, columns=cols)


def claims_render(table: pd.DataFrame, grid: str, regime: str = "") -> tuple[str, str]:
    """(Markdown, LaTeX) of the claim table; `regime` (a line naming the teachers' regime) heads it."""
    header = ["paper", "claim", "setting", "verdict", "Δ top-1 (pp)", "95% CI (pp)", "groups", "runs (A, B)",
              "reason"]
    cells = pd.DataFrame([[r.paper, r.claim, r.setting, r.verdict, fmt(r.diff_pp),
                          DASH if pd.isna(r.ci_low) else f"[{r.ci_low:.2f}, {r.ci_high:.2f}]", str(r.groups),
                          f"{r.n_a}, {r.n_b}", r.reason] for r in table.itertuples()], columns=header)
    md = (f"# {grid}: claims\n\nA and B are the two sides of each claim (A = the left side), in percentage "
          f"points (pp); groups: the distinct groups of teachers behind the paired differences. {RULES}\n\n"
          + (f"{regime}\n" if regime else "") + md_table(cells))
    return md, tex_table(cells, f"{grid}: claims. {RULES}", align="llllrrrrl")


# --- a rerun with other seeds ----------------------------------------------------------------

def change(here: str, there: str) -> str:
    """How a verdict moved between two runs: same, flip (supported <-> not supported), or a move
    to or from inconclusive."""
    if here == there:
        return "same"
    if "inconclusive" not in (here, there):
        return "flip"
    return "to inconclusive" if there == "inconclusive" else "from inconclusive"


def rerun_table(here: pd.DataFrame, there: pd.DataFrame) -> pd.DataFrame:
    """Two claim tables (claim_table) of one grid side by side, claim by claim: this run's and a
    rerun's (other seeds, so other groups of teachers), and how each verdict moved."""
    keys = ["paper", "claim", "setting"]
    cols = ["verdict", "diff_pp", "ci_low", "ci_high", "groups"]
    both = here[keys + cols].merge(there[keys + cols], on=keys, how="left", suffixes=("", "_rerun"))
    # A claim without runs in either is not compared (its "inconclusive" says nothing about a rerun).
    missing = both.groups_rerun.fillna(0).eq(0) | both.groups.eq(0)
    both["verdict_rerun"] = both["verdict_rerun"].where(~missing, "missing")
    both["change"] = [change(a, b) if b != "missing" else "missing"
                      for a, b in zip(both.verdict, both.verdict_rerun)]
    return both


def shared_groups(here: pd.DataFrame, there: pd.DataFrame) -> dict[str, tuple[int, int, int]]:
    """Per setting: (groups here, groups in the rerun, groups in both), over the method runs' groups
    of teachers (as sets, each teacher part apart): a rerun is independent where none is shared."""
    def groups(runs: pd.DataFrame) -> dict[str, set[str]]:
        tagged = runs.assign(group=groups_of(runs).astype(str) + "@" + runs.teacher_part.astype(str))
        return {s: set(g.group) for s, g in tagged.groupby("setting")}
    a, b = groups(here), groups(there)
    return {s: (len(a[s]), len(b.get(s, set())), len(a[s] & b.get(s, set()))) for s in a}


def rerun_summary(table: pd.DataFrame) -> str:
    counts = table.change.value_counts()
    compared = len(table) - int(counts.get("missing", 0))
    moved = int(counts.get("to inconclusive", 0) + counts.get("from inconclusive", 0))
    return (f"{compared} claims with runs in both; flips between supported and not supported: "
            f"{int(counts.get('flip', 0))}; moves to or from inconclusive: {moved} ({moved / max(1, compared):.0%})"
            + (f"; {int(counts['missing'])} without runs in one of them" if counts.get("missing") else ""))


def rerun_render(table: pd.DataFrame, shared: dict[str, tuple[int, int, int]], grid: str, rerun: str) -> str:
    def side(r, suffix: str) -> str:
        v = getattr(r, "verdict" + suffix)
        ci_low = getattr(r, "ci_low" + suffix)
        if v == "missing":
            return v
        ci = "" if pd.isna(ci_low) else f" [{ci_low:.2f}, {getattr(r, 'ci_high' + suffix):.2f}]"
        n = int(getattr(r, "groups" + suffix))
        return f"{v} ({fmt(getattr(r, 'diff_pp' + suffix))}{ci}, {n} group{'s' * (n != 1)})"
    cells = pd.DataFrame([[r.claim, r.setting, side(r, ""), side(r, "_rerun"), r.change] for r in table.itertuples()],
                         columns=["claim", "setting", "this run", "rerun", "change"])
    lines = [f"- {s}: {n} groups here, {m} in the rerun, {k} in both" for s, (n, m, k) in shared.items()]
    return (f"# {grid}: claims against a rerun with other seeds\n\nThis run's verdicts beside those of the "
            f"same grid's records under {rerun} (Δ top-1 in pp, 95% paired t interval, distinct groups). A verdict "
            f"that survives a rerun keeps its side; a flip between supported and not supported would undo it.\n\n"
            f"{rerun_summary(table)}\n\nGroups of teachers per setting (as sets; the rerun is independent "
            f"where none is shared):\n\n" + "\n".join(lines) + "\n\n" + md_table(cells))


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
