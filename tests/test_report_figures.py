"""The report's headline figure and claims forest plot: written and linked for a grid with
records, one panel per setting in the table's order, one interval per claim with runs, a rerun's
beside it. The figures are checked as matplotlib objects (what is drawn where), not as pixels."""
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from test_report import PNG, WF, claims_grid, run

from bench.report import report
from bench.report.claims import MARGIN_PP, claim_table, rerun_table
from bench.report.figures import HEADLINE_REFERENCES, VERDICT_COLOURS, claims_forest, cost_figure, headline
from bench.report.render import method_runs
from bench.run_records import load_records

MEMBERS = [[1, 2], [2, 3], [1, 3]]  # three distinct groups of teachers, one per seed
SETTINGS = ["vgg11 / digits", "resnet50 / digits"]


def two_settings(tmp_path):
    """Every headline row on two settings, numbers unlike across them so a point's panel shows."""
    folder = tmp_path / "h" / "records"
    for arch, shift in (("vgg11", 0.0), ("resnet50", -5.0)):
        for method, tops in (("single", [90.0, 91.0, 92.0]), ("ensemble", [95.0, 95.5, 96.5]),
                             ("soup", [85.0, 86.0, 84.0]), ("kd", [94.0, 94.5, 95.0])):
            run(folder, method, [t + shift for t in tops], arch=arch, teacher_members=MEMBERS)
        run(folder, "weightformer", [96.0 + shift] * 3, arch=arch, teacher_members=MEMBERS, **WF)
        run(folder, "weightformer", [93.0 + shift, 94.0 + shift, 95.0 + shift], variant="weightformer/unseen",
            arch=arch, teacher_part="held_out", teacher_members=[[7, 8], [8, 9], [7, 9]], **WF)
    return tmp_path / "h"


def points(ax) -> list[tuple[float, float]]:
    """(x, y) of every errorbar point of a panel, in drawing order."""
    return [(float(x), float(y)) for c in ax.containers for x, y in zip(*c.lines[0].get_data())]


def bar_extent(container) -> tuple[float, float] | None:
    """(low, high) of a horizontal error bar; None for a point drawn without one."""
    bars = container.lines[2]
    if not bars:
        return None
    (x0, _), (x1, _) = bars[0].get_segments()[0]
    return float(x0), float(x1)


def test_figures_are_written_and_linked_atop_the_index(tmp_path):
    root = two_settings(tmp_path)
    report("h", tmp_path)
    plots = root / "report" / "plots"
    for name in ("headline", "claims"):  # (no record here has a cost: no cost figure)
        assert (plots / f"{name}.png").read_bytes().startswith(PNG)
        assert (plots / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    index = (root / "report" / "index.md").read_text()
    figures = index.split("## Figures\n", 1)[1].split("## Provenance", 1)[0]
    assert "[plots/headline.png](plots/headline.png)" in figures and "[plots/claims.png](plots/claims.png)" in figures
    for line in ("single network (grey, dotted)", "ensemble (green, dashed)", "uniform soup (purple, dash-dot)",
                 f"±{MARGIN_PP:g} pp", "solid vertical line: 0"):
        assert line in figures
    assert "rerun" not in figures  # no rerun here: its markers are neither drawn nor explained


def test_headline_has_one_panel_per_setting_in_the_tables_order(tmp_path):
    done = method_runs(load_records(two_settings(tmp_path)))
    order = SETTINGS  # the table's column order, not the names' (resnet50 would come first)
    fig = headline(done, order, "h")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == order
    rows = ["single", "ensemble", "kd", "soup", "weightformer", "weightformer/unseen"]  # the main table's
    for ax, shift in zip(panels, (0.0, -5.0)):
        assert [t.get_text() for t in ax.get_xticklabels()] == rows
        drawn = dict(points(ax))
        assert drawn[rows.index("single")] == pytest.approx(91.0 + shift)  # mean over the three groups
        assert drawn[rows.index("weightformer/unseen")] == pytest.approx(94.0 + shift)
        lines = {line.get_label(): line.get_ydata()[0] for line in ax.get_lines() if "mean" in line.get_label()}
        assert len(lines) == len(HEADLINE_REFERENCES)
        assert lines["uniform soup mean (meta-train teachers)"] == pytest.approx(85.0 + shift)
        assert lines["ensemble mean (meta-train teachers)"] == pytest.approx(95.666666 + shift)
    legend = fig.legends[0]
    assert legend.get_title().get_text() == "per point: 3 groups of teachers"
    assert any("held-out teachers" in t.get_text() for t in legend.get_texts())
    assert not any("held_out" in t.get_text() or "meta_train" in t.get_text() for t in legend.get_texts())


def forest_panels(fig) -> dict[str, object]:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}


def test_forest_has_one_interval_per_claim_with_runs(tmp_path):
    claims = claim_table(method_runs(load_records(claims_grid(tmp_path))), ["vgg11 / digits"])
    with_runs = claims[claims.groups > 0]
    assert 0 < len(with_runs) < len(claims)  # the unseen-teacher claim has no runs: no row
    ax = forest_panels(claims_forest(claims, None, "c"))["vgg11 / digits"]
    assert len(ax.containers) == len(with_runs)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(with_runs.claim)
    for c, r in zip(ax.containers, with_runs.itertuples()):
        assert float(c.lines[0].get_xdata()[0]) == pytest.approx(r.diff_pp)
        assert to_hex(c.lines[0].get_color()) == to_hex(VERDICT_COLOURS[r.verdict])
        expected = None if pd.isna(r.ci_low) else pytest.approx((r.ci_low, r.ci_high))
        assert bar_extent(c) == expected  # WF > single: one group, a point without a bar
    verticals = sorted(float(line.get_xdata()[0]) for line in ax.get_lines() if len(set(line.get_xdata())) == 1
                       and len(line.get_xdata()) == 2)
    assert verticals == [-MARGIN_PP, 0.0, MARGIN_PP]


def test_forest_sets_a_reruns_interval_beside_each_claim(tmp_path):
    here = claim_table(method_runs(load_records(claims_grid(tmp_path / "here"))), ["vgg11 / digits"])
    there = tmp_path / "there" / "c" / "records"
    run(there, "single", [90.4, 90.5, 90.6], teacher_members=MEMBERS)
    run(there, "ensemble", [91.0, 95.6, 93.5], teacher_members=MEMBERS)
    moved = rerun_table(here, claim_table(method_runs(load_records(there.parent)), ["vgg11 / digits"]))
    fig = claims_forest(here, moved, "c")
    ax = forest_panels(fig)["vgg11 / digits"]
    both = moved[moved.verdict_rerun != "missing"]
    assert len(both) == 1 and len(ax.containers) == (here.groups > 0).sum() + len(both)
    hollow = [c for c in ax.containers if c.lines[0].get_markerfacecolor() == "white"]
    assert len(hollow) == 1
    r = both.iloc[0]
    assert float(hollow[0].lines[0].get_xdata()[0]) == pytest.approx(r.diff_pp_rerun)
    assert bar_extent(hollow[0]) == pytest.approx((r.ci_low_rerun, r.ci_high_rerun))
    assert to_hex(hollow[0].lines[0].get_color()) == to_hex(VERDICT_COLOURS[r.verdict_rerun])
    assert any("rerun with other seeds" in t.get_text() for t in fig.legends[0].get_texts())


def test_cost_figure_places_each_student_at_its_time_and_the_unmade_networks_as_lines(tmp_path):
    folder = tmp_path / "k" / "records"
    run(folder, "single", [90.0, 91.0, 92.0], teacher_members=MEMBERS, train_s=0.0)
    run(folder, "ensemble", [95.0, 95.5, 96.5], teacher_members=MEMBERS, train_s=0.0, infer_forwards=2)
    run(folder, "kd", [94.0, 94.5, 95.0], teacher_members=MEMBERS, train_s=[18.0, 20.0, 22.0])
    run(folder, "weightformer", [93.0, 94.0, 95.0], teacher_members=MEMBERS, train_s=0.0, predict_s=0.5, **WF)
    done = method_runs(load_records(tmp_path / "k"))
    fig = cost_figure(done, ["vgg11 / digits"], "k")
    ax = next(ax for ax in fig.axes if ax.get_visible())
    assert ax.get_xscale() == "log"
    assert sorted(points(ax)) == [pytest.approx((0.5, 94.0)), pytest.approx((20.0, 94.5))]  # WF, then KD
    assert sorted(t.get_text() for t in ax.texts) == ["kd", "weightformer"]
    lines = {line.get_label(): line.get_ydata()[0] for line in ax.get_lines() if "no student" in line.get_label()}
    assert lines == {"single network (no student to make)": pytest.approx(91.0),
                     "ensemble (no student to make; 2 forwards per image)": pytest.approx(95.666666)}
    run(folder, "kd", [94.0, 94.5, 95.0], teacher_members=MEMBERS)  # no seconds recorded: nothing to place
    for f in folder.glob("weightformer*"):
        f.unlink()
    assert cost_figure(method_runs(load_records(tmp_path / "k")), ["vgg11 / digits"], "k") is None


def test_a_search_grids_figures_show_the_val_split_its_choices_read(tmp_path):
    folder = tmp_path / "v" / "records"
    for method, tops in (("single", [90.0, 91.0, 92.0]), ("ensemble", [95.0, 95.5, 96.5]), ("soup", [85.0] * 3)):
        run(folder, method, tops, teacher_members=MEMBERS, val_top1=[t - 10 for t in tops])
    done = method_runs(load_records(tmp_path / "v"))
    for split, shift in (("test", 0.0), ("val", -10.0)):
        ax = next(ax for ax in headline(done, ["vgg11 / digits"], "v", split).axes if ax.get_visible())
        assert ax.get_ylabel() == f"{split} top-1 accuracy (%)"
        assert dict(points(ax))[0] == pytest.approx(91.0 + shift)  # single, the first row
        lines = {line.get_label(): line.get_ydata()[0] for line in ax.get_lines() if "mean" in line.get_label()}
        assert lines["ensemble mean (meta-train teachers)"] == pytest.approx(95.666666 + shift)


def test_meta_training_curves_are_named_by_what_varied(tmp_path):
    """Three meta-trainings of one pool: each legend entry names what it sets apart from the pool's
    most common settings (no run hashes), and the y label promises no dashed val curves when none
    was checked."""
    from bench.report.diagnostics import curve_rows
    from bench.run_records import load_records, write_record

    folder = tmp_path / "m" / "records"
    for rid, steps, lr in (("a", 300, 1e-3), ("b", 300, 3e-3), ("c", 1000, 1e-3)):
        write_record(folder, {"run_id": rid, "status": "done", "stage": "meta_train", "pool": "vgg11-p",
                              "wf_steps": steps, "wf_lr": lr, "wf_parameters": 7, "wf_depth": 2,
                              "curve": [{"step": 100, "kl": 0.5}, {"step": 200, "kl": 0.4}]})
    curves = curve_rows(load_records(tmp_path / "m"))
    assert sorted(set(curves.label)) == ["vgg11-p: lr 0.003", "vgg11-p: steps 1000", "vgg11-p: the common settings"]
    from bench.report.figures import curve_ylabel

    assert curve_ylabel(curves) == "eq. 1 KL (nats; solid: training batches)"
    assert curve_ylabel(curves.assign(val_kl=0.3)) == "eq. 1 KL (nats; solid: training batches, dashed: val)"
