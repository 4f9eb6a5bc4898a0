import math
import re
import statistics
import subprocess
import sys
from itertools import dropwhile, takewhile
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from bench.grid import load_grid
from bench.errors import BenchError
from bench.paths import project_root
from bench.jobs import STAGES, Roots
from bench.report import cell_stats, cost_table, main, report
from bench.report.claims import MARGIN_PP, claim_table, paired_ci, paired_differences, seeds_needed, verdict
from bench.report.render import md_table, method_runs, tex_table
from bench.run_records import load_records, write_record

PNG = b"\x89PNG\r\n\x1a\n"


def md_cells(text: str, title: str | None = None) -> pd.DataFrame:
    """The cells of the first Markdown table in `text` (under `## title` if given), header as columns."""
    if title:
        text = text.split(f"## {title}\n", 1)[1]
    lines = list(takewhile(lambda line: line.startswith("|"),
                           dropwhile(lambda line: not line.startswith("|"), text.splitlines())))
    rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    assert all(re.fullmatch(r":?-+:?", c) for c in rows[1]), lines[1]
    return pd.DataFrame(rows[2:], columns=rows[0])


def records(tmp_path):
    folder = tmp_path / "g" / "records"
    values = {("ensemble", "vgg11"): [98.0, 99.0, 97.0], ("single", "vgg11"): [96.5, 97.5],
              ("single", "resnet50"): [95.0]}
    for (method, arch), tops in values.items():
        for seed, top1 in enumerate(tops):
            write_record(folder, {"run_id": f"{method}-{arch}-{seed}", "status": "done", "stage": "methods",
                                  "method": method, "arch": arch, "dataset": "digits", "seed": seed,
                                  "top1": top1, "top5": 100.0, "nll": 0.1, "ece": 1.0})
    write_record(folder, {"run_id": "t0", "status": "done", "stage": "teachers", "method": "single",
                          "arch": "vgg11", "dataset": "digits", "top1": 1.0})  # not a table run
    write_record(folder, {"run_id": "bad", "status": "failed", "stage": "methods", "method": "ensemble",
                          "arch": "resnet50", "dataset": "digits", "seed": 0, "reason": "teacher 3 not found"})
    return values


def run(folder, method, top1s, variant=None, arch="vgg11", dataset="digits", **fields):
    """One done record per seed; `fields` values may be lists (per seed)."""
    for seed, top1 in enumerate(top1s):
        label = (variant or method).replace("/", "+")
        rec = {"run_id": f"{label}-{arch}-{dataset}-{fields.get('teacher_part', 'm')}-{seed}",
               "status": "done", "stage": "methods", "method": method, "arch": arch, "dataset": dataset,
               "scale": "tiny", "init": "scratch", "seed": seed, "top1": top1, "top5": 100.0, "nll": 0.1,
               "ece": 1.0, **{k: v[seed] if isinstance(v, list) else v for k, v in fields.items()}}
        if variant:
            rec["variant"] = variant
        write_record(folder, rec)


# A plain weightformer record has no fine-tuning fields (those axes are missing, not a value).
WF = dict(wf_n_teachers=4, wf_cross=True, wf_shift_weight=0.0, wf_depth=2, wf_d_model=64, wf_output="direct",
          wf_temperature=1.0, wf_align="none")


def claims_grid(tmp_path):
    """Constructed cases, one per verdict (see test_claim_verdicts)."""
    folder = tmp_path / "c" / "records"
    run(folder, "single", [90.4, 90.5, 90.6])
    run(folder, "ensemble", [95.3, 95.6, 95.5])  # clearly better than single
    run(folder, "kd", [95.35, 95.55, 95.5])  # clearly equal to the ensemble
    run(folder, "self_distill", [90.35, 90.45, 90.65])  # equal to single (Δ a hair below 0), so not better
    run(folder, "weightformer", [97.0], **WF)  # one seed
    run(folder, "weightformer_ft", [80.0, 81.0, 80.5], **{**WF, "wf_ft_epochs": 2})  # clearly worse
    return tmp_path / "c"


def test_cells_are_mean_std_and_n_over_seeds(tmp_path):
    values = records(tmp_path)
    stats = cell_stats(load_records(tmp_path / "g")).set_index(["method", "setting"])
    cell = stats.loc[("ensemble", "vgg11 / digits")]
    assert cell["mean"] == pytest.approx(98.0) and cell["n"] == 3
    assert cell["std"] == pytest.approx(statistics.stdev(values[("ensemble", "vgg11")]))
    table = md_cells(report("g", tmp_path), "top-1 (%)").set_index("method")
    assert list(table.index) == ["single", "ensemble"]  # the paper's row order
    assert table.loc["single", "vgg11 / digits"] == "97.00 ± 0.71 (n=2, 2 groups)"
    assert table.loc["single", "resnet50 / digits"] == "95.00 (n=1)"
    assert table.loc["ensemble", "resnet50 / digits"] == "missing"  # its only run failed


def test_report_files_and_failed_runs(tmp_path):
    records(tmp_path)
    text = report("g", tmp_path)
    assert "teacher 3 not found" in text
    assert (tmp_path / "g" / "report" / "main_table.md").read_text() == text
    assert (tmp_path / "g" / "report" / "main_table.csv").read_text().startswith(
        "method,variant,setting,metric,mean,std,n")
    assert "teacher 3 not found" in (tmp_path / "g" / "report" / "failed.md").read_text()
    with pytest.raises(BenchError, match="no records"):
        report("other", tmp_path)


def test_rows_are_variants_in_method_order_and_best_is_bold(tmp_path):
    folder = tmp_path / "v" / "records"
    run(folder, "weightformer", [97.0, 98.0], variant="weightformer/unseen", teacher_part="held_out", **WF)
    run(folder, "weightformer", [96.0, 97.0], variant="weightformer", **WF)
    run(folder, "kd", [99.0, 99.5])
    run(folder, "single", [95.0, 96.0])
    text = report("v", tmp_path)
    table = md_cells(text, "top-1 (%)").set_index("method")
    assert list(table.index) == ["single", "kd", "weightformer", "weightformer/unseen"]
    assert table.loc["kd", "vgg11 / digits"] == "**99.25 ± 0.35 (n=2, 2 groups)**"
    assert table.loc["weightformer", "vgg11 / digits"] == "96.50 ± 0.71 (n=2, 2 groups)"
    assert "**0.1000" not in text  # every NLL ties: nothing is best


def test_paired_interval_by_hand():
    diffs = pd.Series([0.2, 1.8, 0.5, 1.1])
    mean, sd = diffs.mean(), diffs.std()
    half = scipy_stats.t.ppf(0.975, 3) * sd / 2
    assert paired_ci(diffs) == pytest.approx((mean, mean - half, mean + half))


def test_pairs_are_per_group_and_a_repeated_group_counts_once():
    a = pd.DataFrame({"seed": [0, 1, 2, 3], "top1": [91.0, 92.0, 93.0, 95.0],
                      "teacher_members": [[3, 1, 2], [1, 2, 3], [4, 5, 6], [7, 8, 9]]})
    b = pd.DataFrame({"seed": [0, 1, 2, 3, 4], "top1": [90.0, 90.0, 90.0, 90.0, 80.0],
                      "teacher_members": [[1, 2, 3], [2, 3, 1], [4, 5, 6], [9, 8, 0], [1, 1, 1]]})
    diffs = paired_differences(a, b)
    # seeds 0 and 1 share one group (in another order): one difference, their mean; seed 3's
    # groups differ between the sides and seed 4 has no A run: no pair.
    assert diffs.to_dict() == {"1,2,3": pytest.approx(1.5), "4,5,6": pytest.approx(3.0)}


def test_seeds_needed_is_the_first_n_whose_interval_decides():
    sd = 1.5
    half = lambda k: scipy_stats.t.ppf(0.975, k - 1) * sd / math.sqrt(k)
    # ">" with Δ ≤ 0: decided once the half-width drops below max(|Δ|, margin - |Δ|) = 0.6 (within the
    # margin); with Δ > 0 only clearing 0 decides: below |Δ| = 0.4
    for mean, gap in ((-0.4, 0.6), (0.4, 0.4)):
        n = seeds_needed(">", mean, sd)
        assert half(n) < gap <= half(n - 1)
        assert verdict(">", mean - half(n), mean + half(n))[0] != "inconclusive"
        assert verdict(">", mean - half(n - 1), mean + half(n - 1))[0] == "inconclusive"
    n = seeds_needed("≈", 1.5, 0.8)  # "≈": the interval must clear the margin: |1.5 - 1| = 0.5
    assert half_width(n, 0.8) < 0.5 <= half_width(n - 1, 0.8)
    assert seeds_needed(">", 0.0, 1.0) is not None  # within the margin is a decision too
    assert seeds_needed("≈", MARGIN_PP, 1.0) is None  # on the boundary: no number of seeds decides


def half_width(n: int, sd: float) -> float:
    return scipy_stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)


def test_identical_replicates_are_no_evidence(tmp_path):
    folder = tmp_path / "same" / "records"
    run(folder, "single", [90.0, 90.0, 90.0], teacher_members=[[1, 2], [1, 2], [1, 2]])
    run(folder, "ensemble", [95.0, 95.0, 95.0], teacher_members=[[1, 2], [2, 1], [1, 2]])
    table = claim_table(method_runs(load_records(tmp_path / "same")), ["vgg11 / digits"]).set_index("claim")
    row = table.loc["ensemble > single"]
    assert (row["verdict"], row["groups"], row["reason"]) == ("inconclusive", 1, "1 distinct group: too few")
    text = report("same", tmp_path)
    assert md_cells(text, "top-1 (%)").set_index("method").loc["ensemble", "vgg11 / digits"] == \
        "**95.00 ± 0.00 (n=3, 1 group)**"
    run(tmp_path / "flat" / "records", "single", [90.0, 91.0], teacher_members=[[1, 2], [3, 4]])
    run(tmp_path / "flat" / "records", "ensemble", [92.0, 93.0], teacher_members=[[1, 2], [3, 4]])
    row = claim_table(method_runs(load_records(tmp_path / "flat")), ["vgg11 / digits"]).set_index("claim").loc[
        "ensemble > single"]
    assert row["verdict"] == "inconclusive" and "no spread" in row["reason"] and math.isnan(row["ci_low"])


def test_verdict_rules():
    assert verdict(">", 0.2, 3.0)[0] == "supported"
    assert verdict(">", -3.0, -0.1)[0] == "not supported"
    assert verdict(">", -0.5, 0.5) == ("not supported", f"CI within ±{MARGIN_PP:g} pp, Δ ≤ 0: approximately equal")
    # a small lead whose CI touches 0 is no verdict: "supported" (CI above 0) and "not supported"
    # never border each other, so a rerun cannot turn one into the other by a hair
    assert verdict(">", -0.1, 0.3)[0] == "inconclusive" and verdict(">", 0.01, 0.3)[0] == "supported"
    assert verdict(">", -0.3, 0.1)[0] == "not supported"
    assert verdict(">", -0.5, 2.5)[0] == "inconclusive"
    assert verdict("≈", -0.9, 0.9)[0] == "supported"
    assert verdict("≈", 1.2, 3.0)[0] == "not supported" and verdict("≈", -3.0, -1.1)[0] == "not supported"
    assert verdict("≈", 0.5, 1.5)[0] == "inconclusive"


def test_claim_verdicts(tmp_path):
    root = claims_grid(tmp_path)
    table = claim_table(method_runs(load_records(root)), ["vgg11 / digits"]).set_index("claim")
    assert table.loc["ensemble > single", "verdict"] == "supported"
    assert table.loc["ensemble > single", "diff_pp"] == pytest.approx(4.9666667)
    assert table.loc["ensemble > single", ["n_a", "n_b", "groups"]].tolist() == [3, 3, 3]
    assert table.loc["KD ≈ ensemble", "verdict"] == "supported"
    assert table.loc["self-distillation > single", "verdict"] == "not supported"
    assert table.loc["WF > single", "verdict"] == "inconclusive"
    assert table.loc["WF > single", "reason"] == "1 distinct group: too few"
    assert table.loc["WF+FT > ensemble", "verdict"] == "not supported"
    assert table.loc["WF+FT > ensemble", "ci_high"] < 0
    unseen = table.loc["WF works on unseen teachers"]
    assert (unseen["verdict"], unseen["reason"]) == ("inconclusive", "no unseen-teacher runs")
    report("c", tmp_path)
    md = (root / "report" / "claims.md").read_text()
    assert f"within ±{MARGIN_PP:g} pp" in md
    rows = md_cells(md).iloc[:, :4].values.tolist()
    assert ["Allen-Zhu & Li", "ensemble > single", "vgg11 / digits", "supported"] in rows
    # A grid that plans no WeightFormer (Allen-Zhu & Li's) lists none of its claims; a planned side
    # without runs stays listed, inconclusive.
    runs = method_runs(load_records(root))
    planned = claim_table(runs[runs.method != "self_distill"], ["vgg11 / digits"],
                          planned={"single", "ensemble", "kd", "self_distill"}).set_index("claim")
    assert set(planned.paper) == {"Allen-Zhu & Li"} and len(planned) == 3
    assert planned.loc["self-distillation > single", "verdict"] == "inconclusive"


def test_the_index_opens_with_every_claims_verdict_per_setting(tmp_path):
    root = claims_grid(tmp_path)
    report("c", tmp_path)
    text = (root / "report" / "index.md").read_text()
    verdicts = text[text.index("## Verdicts"):text.index("## Figures")]
    table = md_cells(verdicts).set_index("claim")
    claims = claim_table(method_runs(load_records(root)), ["vgg11 / digits"]).set_index("claim")
    assert list(table.columns) == ["vgg11 / digits"] and set(table.index) == set(claims.index)
    assert table.loc["ensemble > single", "vgg11 / digits"] == "supported (+4.97)"
    assert table.loc["WF works on unseen teachers", "vgg11 / digits"] == "inconclusive"  # no runs: no Δ
    assert text.index("## Verdicts") < text.index("## Provenance")


def test_unseen_teachers_claim(tmp_path):
    folder = tmp_path / "u" / "records"
    # The unseen WF is compared with single on held-out teachers (its own `/unseen` variant), not with
    # single on the seen part, which here is better than both.
    run(folder, "single", [99.0, 99.5, 100.0], teacher_part="meta_train")
    run(folder, "single", [90.0, 90.5, 91.0], variant="single/unseen", teacher_part="held_out")
    run(folder, "weightformer", [94.0, 94.8, 94.7], variant="weightformer/unseen", teacher_part="held_out", **WF)
    table = claim_table(method_runs(load_records(tmp_path / "u")), ["vgg11 / digits"]).set_index("claim")
    row = table.loc["WF works on unseen teachers"]
    assert (row["verdict"], row["a"], row["b"]) == ("supported", "weightformer/unseen", "single/unseen")


def planned_grid(tmp_path):
    """A grid file and records for its runs: kd's seed 2 never ran, ensemble's seed 1 failed,
    plus an unreadable record."""
    path = tmp_path / "p.yaml"
    path.write_text("n_teachers: 2\nseeds: 3\npools:\n  - {arch: vgg11, dataset: digits, members: 3}\n"
                    "methods: [single, ensemble, kd]\n")
    folder = tmp_path / "p" / "records"
    for job in STAGES["methods"].plan(load_grid(path, "tiny"), Roots(tmp_path, tmp_path)):
        m, seed = job.spec["method"], job.spec["seed"]
        if (m, seed) == ("kd", 2):
            continue
        failed = (m, seed) == ("ensemble", 1)
        write_record(folder, {"run_id": job.run_id, "stage": "methods", "method": m, "arch": "vgg11",
                              "dataset": "digits", "scale": "tiny", "init": "scratch", "seed": seed,
                              "status": "failed" if failed else "done", "reason": "out of memory" if failed else None,
                              "top1": None if failed else 90.0 + seed + 3 * (m != "single"), "top5": 100.0,
                              "nll": 0.2, "ece": 2.0, "train_s": 50.0 if m == "kd" else None,
                              "commit": "abc1234", "hardware": "2 x Test GPU", "finished": f"2026-01-0{seed + 1}T10:00:00"})
    (folder / "zz-corrupt.json").write_text("{not json")
    return path


def test_missing_cells_failed_runs_and_corrupt_records(tmp_path):
    path = planned_grid(tmp_path)
    with pytest.warns(UserWarning, match="zz-corrupt.json"):
        text = report("p", tmp_path, grid_file=path)
    table = md_cells(text, "top-1 (%)").set_index("method")
    assert table.loc["kd", "vgg11 / digits"] == "93.50 ± 0.71 (n=2 of 3, 2 groups)"
    assert table.loc["ensemble", "vgg11 / digits"] == "**94.00 ± 1.41 (n=2 of 3, 2 groups)**"
    failed = (tmp_path / "p" / "report" / "failed.md").read_text()
    assert "out of memory" in failed and "kd on vgg11 / digits: 2 of 3 runs finished" in failed
    assert "ensemble on vgg11 / digits: 2 of 3 runs finished, 1 failed" in failed and "zz-corrupt.json" in failed
    index = (tmp_path / "p" / "report" / "index.md").read_text()
    assert "commit(s): abc1234" in index and "2026-01-01T10:00:00 to 2026-01-03T10:00:00" in index
    assert "hardware: 2 x Test GPU" in index and "[claims.md](claims.md)" in index
    # A grid without any finished run still reports what is missing.
    for f in (tmp_path / "p" / "records").glob("*.json"):
        f.unlink()
    text = report("p", tmp_path, grid_file=path)
    assert md_cells(text, "top-1 (%)").set_index("method").loc["single", "vgg11 / digits"] == "missing (0 of 3 runs)"


def test_a_truncated_record_is_skipped_in_one_line(tmp_path):
    """The command names the record it skips in one line, not Python's warning with a line of the
    report's own source."""
    path = planned_grid(tmp_path)
    (tmp_path / "p" / "records" / "zz-corrupt.json").unlink()
    victim = sorted((tmp_path / "p" / "records").glob("*.json"))[0]
    victim.write_bytes(victim.read_bytes()[:40])  # as a copy cut short leaves it
    r = subprocess.run([sys.executable, "-m", "bench.report", "--grid", str(path), "--results-root", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"warning: skipping unreadable record p/records/{victim.name}: "), r.stderr


def wf_ablation_grid(tmp_path):
    folder = tmp_path / "w" / "records"
    run(folder, "weightformer", [96.0, 96.5, 97.0], variant="weightformer", **WF)
    run(folder, "weightformer", [95.0, 95.4], variant="weightformer/depth4", **{**WF, "wf_depth": 4})
    run(folder, "weightformer", [94.0, 94.2], variant="weightformer/depth6", **{**WF, "wf_depth": 6})
    run(folder, "weightformer", [93.0, 93.3], variant="weightformer/nocross", **{**WF, "wf_cross": False})
    # Varies two axes at once: on neither plot.
    run(folder, "weightformer", [50.0, 50.0], variant="weightformer/odd", **{**WF, "wf_cross": False, "wf_depth": 4})
    # Fine-tuned runs carry fine-tuning axes the plain ones lack (missing there, not unequal).
    run(folder, "weightformer_ft", [97.0, 97.5], variant="weightformer_ft", **{**WF, "wf_ft_epochs": 2})
    run(folder, "weightformer_ft", [97.5, 98.0], variant="weightformer_ft/ep4", **{**WF, "wf_ft_epochs": 4})
    run(folder, "kd", [95.5, 95.9], train_s=100.0)
    return tmp_path / "w"


def test_ablation_plots_and_deterministic_rerun(tmp_path):
    root = wf_ablation_grid(tmp_path)
    report("w", tmp_path)
    out = root / "report"
    for axis in ("depth", "cross", "ft_epochs"):
        assert (out / "plots" / f"{axis}.png").read_bytes().startswith(PNG)
        assert (out / "plots" / f"{axis}.pdf").read_bytes().startswith(b"%PDF")
    assert not (out / "plots" / "d_model.png").exists()  # one value only: no plot
    numbers = pd.read_csv(out / "ablations.csv")
    depth = numbers[(numbers.axis == "depth") & (numbers.series == "weightformer, vgg11 / digits")]
    depth = depth.set_index(depth.value.map(float))  # the column holds every axis's values: text
    assert depth["mean"].to_dict() == pytest.approx({2.0: 96.5, 4.0: 95.2, 6.0: 94.1})
    assert depth.loc[2.0, "n"] == 3 and depth.loc[4.0, "std"] == pytest.approx(statistics.stdev([95.0, 95.4]))
    first = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    report("w", tmp_path)
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == first


def test_an_ablation_point_is_one_configuration_and_each_part_has_its_own_baselines(tmp_path):
    """A zoo-like series: WeightFormers meta-trained on pools of 8 and 128 (a grid option, no axis),
    seen and unseen. The teacher_part point of the seen teachers is the pool-128 one alone (90, not
    the average with pool 8's 50), beside the baselines of the same part; KD's plainest variant
    (no transfer split) is the one drawn."""
    from bench.report.ablations import ablation_table, references
    from bench.report.render import method_runs as runs_of

    folder = tmp_path / "z" / "records"
    wf = dict(WF, pool="vgg11-zoo")
    for variant, part, size, tops in (("weightformer/pool8", "meta_train", 8, [50.0, 51.0]),
                                      ("weightformer/pool128", "meta_train", 128, [90.0, 91.0]),
                                      ("weightformer/pool128_b", "meta_train", 128, [89.0, 92.0]),
                                      ("weightformer/pool128_unseen", "held_out", 128, [93.0, 94.0])):
        run(folder, "weightformer", tops, variant=variant, teacher_part=part, option_pool_size=size,
            teacher_members=[[2 * s, 2 * s + 1] for s in range(2)], **wf)
    for variant, part, tops, extra in (("kd/zoo", "meta_train", [80.0, 81.0], {}),
                                       ("kd/zoo_transfer", "meta_train", [60.0, 61.0], {"option_distill_on": "transfer"}),
                                       ("single/zoo_unseen", "held_out", [70.0, 72.0], {})):
        run(folder, variant.split("/")[0], tops, variant=variant, teacher_part=part, pool="vgg11-zoo",
            teacher_members=[[2 * s, 2 * s + 1] for s in range(2)], **extra)
    runs = runs_of(load_records(tmp_path / "z"))
    table = ablation_table(runs)
    parts = table[table.axis == "teacher_part"].set_index("value")
    assert parts.loc["meta_train", "mean"] == pytest.approx(90.5) and parts.loc["meta_train", "n"] == 4
    assert parts.loc["held_out", "mean"] == pytest.approx(93.5)
    refs = references(runs, by_part=True).set_index(["method", "teacher_part"])
    assert refs.loc[("kd", "meta_train"), "mean"] == pytest.approx(80.5)
    assert refs.loc[("single", "held_out"), "mean"] == pytest.approx(71.0)
    assert ("single", "held_out") not in references(runs).set_index(["method", "teacher_part"]).index


def test_a_row_limited_to_one_pool_is_a_point_of_that_pools_series(tmp_path):
    """`pools: [...]` says where a row runs, not how: the depth-4 row run on one pool only is a point
    of that pool's depth plot beside the default row that runs on every pool; a row that also
    changes a grid option (steps) is not."""
    from bench.report.ablations import ablation_table
    from bench.report.render import method_runs as runs_of

    folder = tmp_path / "o" / "records"
    one_pool = [["vgg11-digits-tiny-scratch"]] * 2  # per seed
    run(folder, "weightformer", [90.0, 91.0], variant="weightformer", option_steps=1000, **WF)
    run(folder, "weightformer", [80.0, 81.0], variant="weightformer/depth4", option_steps=1000,
        option_pools=one_pool, **{**WF, "wf_depth": 4})
    run(folder, "weightformer", [70.0, 71.0], variant="weightformer/depth6", option_steps=300,
        option_pools=one_pool, **{**WF, "wf_depth": 6})
    depth = ablation_table(runs_of(load_records(tmp_path / "o"))).query("axis == 'depth'")
    assert sorted(depth.value.map(float)) == [2.0, 4.0]
    assert depth.set_index(depth.value.map(float)).loc[4.0, "mean"] == pytest.approx(80.5)


def test_costs_and_repayment(tmp_path):
    folder = tmp_path / "k" / "records"
    run(folder, "kd", [95.0, 95.2], train_s=[100.0, 110.0], infer_forwards=1)
    run(folder, "ensemble", [96.0, 96.2], infer_forwards=4)
    run(folder, "weightformer", [95.0, 95.0], train_s=0.0, predict_s=5.0, meta_train_s=500.0, infer_forwards=1, **WF)
    run(folder, "weightformer_ft", [95.0, 95.0], train_s=200.0, predict_s=5.0, meta_train_s=500.0, **WF)
    costs = cost_table(method_runs(load_records(tmp_path / "k")), []).set_index("variant")
    assert costs.loc["kd", "time_to_student_s"] == pytest.approx(105.0)
    assert costs.loc["weightformer", "vs_kd"] == pytest.approx(5 / 105)
    assert costs.loc["weightformer", "repay_ensembles"] == "5"  # ceil(500 / 100)
    assert costs.loc["weightformer_ft", "repay_ensembles"] == "never"
    assert math.isnan(costs.loc["ensemble", "time_to_student_s"])
    report("k", tmp_path)
    costs_md = (tmp_path / "k" / "report" / "costs.md").read_text()
    assert ["ensemble", "vgg11 / digits", "2", "—", "—", "4", "—", "—"] in md_cells(costs_md).iloc[:, :8].values.tolist()


def test_latex_and_csv(tmp_path):
    root = claims_grid(tmp_path)
    report("c", tmp_path)
    tex = (root / "report" / "main_table.tex").read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"self\_distill",
                 r"weightformer\_ft", r"\textbf{97.00 (n=1)}"):
        assert rule in tex
    assert "self_distill" not in tex.replace(r"self\_distill", "")
    assert r"WF $\approx$ ensemble" in (root / "report" / "claims.tex").read_text()
    back = pd.read_csv(root / "report" / "main_table.csv")
    ours = cell_stats(load_records(root), "top1").set_index("variant")["mean"]
    assert back[back.metric == "top1"].set_index("variant")["mean"].to_dict() == ours.to_dict()
    claims = pd.read_csv(root / "report" / "claims.csv")
    assert set(claims.verdict) == {"supported", "not supported", "inconclusive"}


def test_anchors_against_published_numbers(tmp_path):
    folder = tmp_path / "a" / "records"
    for method, tops in {"single": [97.0, 97.2], "ensemble": [98.0, 98.1], "kd": [97.9, 98.0],
                         "self_distill": [97.5, 97.7]}.items():
        run(folder, method, tops, arch="wrn28_10")
    report("a", tmp_path)
    text = (tmp_path / "a" / "report" / "anchors.md").read_text()
    assert "96.70 ± 0.21" in text and "ordering only (scales differ)" in text
    assert "Ordering here: ensemble > kd > self_distill > single; published: kd > ensemble" in text
    assert "pairwise orderings agreeing: 5 of 6" in text


def test_cli_out_formats_and_top_index(tmp_path, capsys):
    records(tmp_path)
    main(["--results-root", str(tmp_path), "--out", str(tmp_path / "out"), "--format", "md,csv"])
    assert "97.00 ± 0.71 (n=2, 2 groups)" in capsys.readouterr().out
    assert (tmp_path / "out" / "g" / "main_table.csv").exists() and not (tmp_path / "out" / "g" / "claims.tex").exists()
    assert "[g](g/index.md)" in (tmp_path / "out" / "index.md").read_text()
    with pytest.raises(SystemExit) as exit_:
        main(["--results-root", str(tmp_path), "--format", "html"])
    assert exit_.value.code == 2


def test_markdown_and_latex_keep_cell_text_escape_and_bold():
    table = pd.DataFrame({"method": ["a|b", "self_distill"], "top-1 (%)": ["0.1000", "1 ± 2"]})
    bold = pd.DataFrame({"method": [False, False], "top-1 (%)": [False, True]})
    md = md_table(table, bold)
    assert r"a\|b" in md and "0.1000" in md  # a pipe in a cell does not split it; numbers stay text
    assert md_cells(md).values.tolist() == [[r"a\|b", "0.1000"], ["self_distill", "**1 ± 2**"]]
    tex = tex_table(table, "50% of top_1", bold, align="lr")
    assert r"\caption{50\% of top\_1}" in tex and r"\begin{tabular}{lr}" in tex
    assert r"self\_distill & \textbf{1 $\pm$ 2} \\" in tex and r"method & top-1 (\%) \\" in tex


# Modules that are training code: the report must not load them.
TRAINING = ("bench.engine", "bench.train", "bench.pool", "bench.stages", "bench.weightformer", "timm")
LIGHT_METHOD_MODULES = ("bench.methods", "bench.methods.base")  # the registry; option schemas are bench.method_options


def test_the_report_loads_no_training_code():
    probe = "import sys, bench.report; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            cwd=project_root()).stdout.split()
    training = [m for m in loaded if any(m == t or m.startswith(f"{t}.") for t in TRAINING)
                or (m.startswith("bench.methods.") and m not in LIGHT_METHOD_MODULES)]
    assert training == []


def test_a_run_with_a_non_finite_metric_is_named_and_left_out_of_its_cell(tmp_path):
    folder = tmp_path / "g" / "records"
    run(folder, "single", [96.0, 97.0, 98.0])
    # A record holds a NaN or inf as null (bench.run_records): seed 3's NLL did not come out finite.
    write_record(folder, {"run_id": "single-nan", "status": "done", "stage": "methods", "method": "single",
                          "arch": "vgg11", "dataset": "digits", "scale": "tiny", "init": "scratch", "seed": 3,
                          "top1": 10.0, "top5": 50.0, "nll": float("nan"), "ece": float("inf")})
    text = report("g", tmp_path)
    tables = text.split("## Runs without")[0].lower()
    assert "nan" not in tables and "inf" not in tables
    nll = md_cells(text, "NLL (nats)")
    assert "(n=3" in nll.iloc[0, 1]  # the non-finite run is not averaged in
    assert "single on vgg11 / digits, seed 3 (run single-nan): nll, ece not finite" in text
    failed = (tmp_path / "g" / "report" / "failed.md").read_text()
    assert "## Runs without a finite value (1)" in failed and "nll, ece not finite" in failed


def test_records_from_a_dirty_tree_are_marked_in_the_report_and_on_the_front_page(tmp_path):
    folder = tmp_path / "d" / "records"
    run(folder, "single", [90.0, 91.0, 92.0], commit=["abc123", "abc123-dirty", "abc123"])
    run(folder, "ensemble", [95.0, 95.5, 96.0], commit="abc123")
    main(["--results-root", str(tmp_path)])
    index = (tmp_path / "d" / "report" / "index.md").read_text()
    assert "- from a dirty tree: 1 of 6 records name a commit with uncommitted changes" in index
    row = next(line for line in (tmp_path / "index.md").read_text().splitlines() if line.startswith("| [d]"))
    assert row.endswith("| 6, 1 from a dirty tree |") and "| 1 / 0 / 0 (3); 7 without runs |" in row, row
    for record in folder.glob("*.json"):  # the same runs from a clean commit: nothing marked
        record.write_text(record.read_text().replace("abc123-dirty", "abc123"))
    main(["--results-root", str(tmp_path)])
    assert "dirty" not in (tmp_path / "d" / "report" / "index.md").read_text()
    assert "| 6, all from clean commits |" in (tmp_path / "index.md").read_text()


def test_rerun_sets_each_claim_beside_the_same_grid_run_with_other_seeds(tmp_path):
    here = claims_grid(tmp_path / "here")
    there = tmp_path / "there" / "c" / "records"
    run(there, "single", [90.4, 90.5, 90.6], teacher_members=[[7, 8], [8, 9], [7, 9]])
    run(there, "ensemble", [95.3, 95.6, 95.5], teacher_members=[[7, 8], [8, 9], [7, 9]])  # same: supported
    run(there, "kd", [91.0, 90.0, 92.5], teacher_members=[[7, 8], [8, 9], [7, 9]])  # KD ≈ ensemble: flips
    run(there, "self_distill", [91.0, 93.5, 90.6], teacher_members=[[7, 8], [8, 9], [7, 9]])  # to inconclusive
    report("c", here.parent, rerun=tmp_path / "there")
    md = (here / "report" / "rerun.md").read_text()
    rows = md_cells(md).set_index(["claim", "setting"])
    assert rows.loc[("ensemble > single", "vgg11 / digits"), "change"] == "same"
    assert rows.loc[("KD ≈ ensemble", "vgg11 / digits"), "change"] == "flip"
    assert rows.loc[("self-distillation > single", "vgg11 / digits"), "change"] == "to inconclusive"
    # No WF runs in the rerun: those claims are not compared, whatever their verdict here.
    assert rows.loc[("WF > single", "vgg11 / digits"), ["rerun", "change"]].tolist() == ["missing", "missing"]
    assert ("3 claims with runs in both; flips between supported and not supported: 1; moves to or from "
            "inconclusive: 1 (33%); 5 without runs in one of them") in md
    # Here the records name no members (each seed its own group); the rerun's groups are other sets.
    assert "- vgg11 / digits: 3 groups here, 3 in the rerun, 0 in both" in md
    assert "[rerun.md](rerun.md)" in (here / "report" / "index.md").read_text()
    report("c", here.parent)  # a later report without --rerun keeps the comparison and its link
    assert "[rerun.md](rerun.md)" in (here / "report" / "index.md").read_text()
    main(["--results-root", str(here.parent)])  # the front page of every grid reported
    top = (here.parent / "index.md").read_text()
    assert "| [c](c/report/index.md) |" in top and "| 1 flips, 1 of 3 moved |" in top, top
    with pytest.raises(BenchError, match="--rerun .*empty: no finished method runs of grid 'c'"):
        (tmp_path / "empty" / "c" / "records").mkdir(parents=True)
        write_record(tmp_path / "empty" / "c" / "records", {"run_id": "t", "status": "done", "stage": "teachers"})
        report("c", here.parent, rerun=tmp_path / "empty")

def test_a_rerun_under_the_results_root_is_reported_without_being_named(tmp_path, monkeypatch, capsys):
    """The README's rerun goes to <results>/rerun: the plain report finds it, and writes the bytes
    the report given --rerun wrote, from any working directory."""
    root = tmp_path / "results"
    claims_grid(root)
    run(root / "rerun" / "c" / "records", "single", [90.4, 90.5, 90.6], teacher_members=[[7, 8], [8, 9], [7, 9]])
    run(root / "rerun" / "c" / "records", "ensemble", [95.3, 95.6, 95.5], teacher_members=[[7, 8], [8, 9], [7, 9]])
    monkeypatch.chdir(tmp_path)
    report("c", Path("results"), rerun=Path("results/rerun"))  # python -m bench.report --rerun results/rerun
    named = {p.name: p.read_bytes() for p in (root / "c" / "report").glob("*.*")}
    assert {"rerun.md", "rerun.csv"} <= set(named) and b"records under results/rerun" in named["rerun.md"]
    for name in ("rerun.md", "rerun.csv"):
        (root / "c" / "report" / name).unlink()
    monkeypatch.chdir(root / "c")
    main(["--results-root", str(root)])  # every grid with records: "c" (results/rerun holds none itself)
    assert "report: " in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (root / "c" / "report").glob("*.*")} == named


def test_rerun_needs_one_grid(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--results-root", str(tmp_path), "--rerun", str(tmp_path / "there")])
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: --rerun sets one grid's claims beside its rerun's: name the grid with --grid\n"
