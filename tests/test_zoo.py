"""A teacher zoo: pools used in part (pool_size), groups fitted alone (fit_group), partner sets,
early-stopped meta-training and a transfer split."""
import pytest
import torch
import torch.nn as nn

from bench.grid import load_grid
from bench.errors import BenchError
from bench.jobs import STAGES, Roots, partner_sets, run_id


ZOO = """
n_teachers: 2
seeds: 3
pools:
  - name: zoo
    arch: vgg11
    dataset: multiview
    members: 40
    held_out: 3
    recipe: {epochs: 1}
methods:
  single/unseen: {teacher_part: held_out}
  weightformer/p4: {pool_size: 4, partner_sets: 1}
  weightformer/fit: {pool_size: 4, fit_group: true}
"""


def plan(tmp_path, text=ZOO):
    path = tmp_path / "zoo.yaml"
    path.write_text(text)
    grid = load_grid(path, "tiny")
    roots = Roots(tmp_path, tmp_path)
    return grid, {name: stage.plan(grid, roots) for name, stage in STAGES.items()}


def test_a_pool_trains_only_the_members_its_jobs_use(tmp_path):
    grid, jobs = plan(tmp_path)
    members = sorted(j.spec["member"] for j in jobs["teachers"])
    # The first 4 meta-train members (pool_size) and the 3 held out (37-39); not 4-36.
    assert members == [0, 1, 2, 3, 37, 38, 39]
    meta = {j.run_id for j in jobs["meta_train"]}
    needed = {n for j in jobs["methods"] for n in j.needs} - meta
    needed |= {run_id(t) for j in jobs["meta_train"] for t in j.spec["teachers"]}
    assert {j.run_id for j in jobs["teachers"]} == needed


def test_pool_size_draws_seen_groups_and_meta_trains_on_the_first_members(tmp_path):
    _, jobs = plan(tmp_path)
    p4 = [j for j in jobs["methods"] if j.spec["variant"] == "weightformer/p4"]
    assert all(set(j.spec["members"]) <= {0, 1, 2, 3} for j in p4)
    assert len({frozenset(j.spec["members"]) for j in p4}) == 3  # distinct groups per seed
    assert all(j.spec["meta_train"]["members"] == [0, 1, 2, 3] for j in p4)
    assert len({run_id(j.spec["meta_train"]) for j in p4}) == 1  # one WeightFormer for every seed


def test_fit_group_meta_trains_one_weightformer_per_seed_on_its_group(tmp_path):
    _, jobs = plan(tmp_path)
    fit = [j for j in jobs["methods"] if j.spec["variant"] == "weightformer/fit"]
    assert all(j.spec["meta_train"]["members"] == j.spec["members"] for j in fit)
    assert len({run_id(j.spec["meta_train"]) for j in fit}) == 3
    assert len(jobs["meta_train"]) == 4  # p4's one + fit's three


def test_partner_sets_share_the_anchor_and_differ_from_the_group(tmp_path):
    grid, jobs = plan(tmp_path)
    for job in (j for j in jobs["methods"] if j.spec["variant"] == "weightformer/p4"):
        (partners,) = job.spec["partners"]
        ks = [t["member"] for t in partners]
        assert ks[0] == job.spec["members"][0] and set(ks) <= {0, 1, 2, 3}
        assert set(ks) != set(job.spec["members"])
        assert all(run_id(t) in job.needs for t in partners[1:])
    # Jobs that do not ask for partners keep their spec (so their run ids) unchanged.
    assert all("partners" not in j.spec for j in jobs["methods"] if j.spec["variant"] != "weightformer/p4")
    pool = grid.pools[0]
    with pytest.raises(BenchError, match="lower partner_sets"):
        partner_sets(pool, [0, 1], 3, 0, "meta_train", pool_size=3)  # anchor 0 + one of {1, 2}: one other set


@pytest.mark.parametrize("old, new, pattern", [
    ("pool_size: 4, partner_sets: 1", "pool_size: 40, partner_sets: 1",
     "methods.weightformer/p4.pool_size: 40 is larger than pool zoo's meta-train part \\(37 members\\)"),
    ("pool_size: 4, fit_group: true", "pool_size: 1, fit_group: true",
     "methods.weightformer/fit.pool_size: 1 members cannot make a group of N = 2"),
    ("pool_size: 4, fit_group: true", "fit_group: true, teacher_part: held_out",
     "methods.weightformer/fit.fit_group: fits the group it is tested on: it needs teacher_part meta_train"),
    ("{teacher_part: held_out}", "{teacher_part: held_out, pools: [zooo]}",
     "methods.single/unseen.pools: unknown value 'zooo'; valid: zoo"),
    ("pool_size: 4, partner_sets: 1", "pool_size: four", "methods.weightformer/p4.pool_size: expected a whole number"),
])
def test_bad_zoo_options_are_refused_at_load(tmp_path, old, new, pattern):
    path = tmp_path / "bad.yaml"
    path.write_text(ZOO.replace(old, new))
    with pytest.raises(BenchError, match=pattern):
        load_grid(path, "tiny")


def test_the_transfer_split_is_new_images_of_the_same_classes():
    from bench.data import load_dataset

    train, transfer = load_dataset("multiview", split="train"), load_dataset("multiview", split="transfer")
    assert len(transfer) == 1000 and transfer.images.shape[1:] == train.images.shape[1:]
    assert sorted(transfer.labels.unique().tolist()) == list(range(10))
    rows = {bytes(x.numpy()) for x in train.images}
    assert not any(bytes(x.numpy()) in rows for x in transfer.images)
    with pytest.raises(BenchError, match="'digits' has no transfer split"):
        load_dataset("digits", split="transfer")


class Quadratic:
    """A task whose 'val' loss is scripted: lowest at the third log point."""

    labels = {}

    def __init__(self, val):
        self.model = nn.Linear(1, 1, bias=False)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.val = list(val)
        self.calls = 0

    def loss(self, step):
        loss = (self.model.weight - 1.0).pow(2).sum()
        return {"loss": loss}

    def log_row(self, step, means, seconds):
        row = {"step": step, "val": self.val[step // 2 - 1], "weight": self.model.weight.item()}
        self.calls += 1
        return row


def test_early_stopping_ends_at_the_best_log_point_and_survives_a_resume(tmp_path):
    from bench.engine.checkpointer import RunFolder
    from bench.engine.loop import fit

    val = [5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 0.1, 0.1]  # best at point 3; patience 3 stops at point 6

    def run(folder, task, steps=16):
        return fit(task, folder, steps=steps, log_every=2, lr=0.1, schedule=lambda s: 1.0, monitor="val",
                   patience=3, quiet=True)

    def folder(name):
        return RunFolder(tmp_path / name, {"run": name}, matches=lambda meta: True)

    torch.manual_seed(0)
    task = Quadratic(val)
    history, _ = run(folder("a"), task)
    assert [r["step"] for r in history] == [2, 4, 6, 8, 10, 12]  # never reached the 0.1 at step 14
    assert task.model.weight.item() == pytest.approx(history[2]["weight"])  # the best point's weights
    # Interrupted after point 4 (a run told to stop at 8 steps leaves the checkpoint a kill there
    # would), then resumed from it: points 5 and 6 only, the same stop and the best weights kept.
    torch.manual_seed(0)
    run(folder("b"), Quadratic(val), steps=8)
    resumed = Quadratic(val)
    history_b, _ = run(folder("b"), resumed)
    assert [r["step"] for r in history_b] == [2, 4, 6, 8, 10, 12]
    assert resumed.calls == 2  # points 5 and 6 only
    assert resumed.model.weight.item() == pytest.approx(history_b[2]["weight"])


E2E = """
n_teachers: 2
seeds: 2
pools:
  - name: zoo
    arch: vgg11
    dataset: multiview
    members: 30
    held_out: 3
    recipe: {epochs: 1}
methods:
  single/unseen: {teacher_part: held_out}
  ensemble/unseen: {teacher_part: held_out}
  kd/unseen_transfer: {teacher_part: held_out, epochs: 1, distill_on: transfer}
  weightformer/p3: {pool_size: 3, partner_sets: 1, <<: &wf {steps: 24, d_model: 16, depth: 1, heads: 2,
                    checkpoint_every: 2, patience: 2, val_groups: 2, val_images: 64}}
  weightformer/p3_unseen: {pool_size: 3, teacher_part: held_out, partner_sets: 1, <<: *wf}
  weightformer/p5_transfer_unseen: {pool_size: 5, teacher_part: held_out, distill_on: transfer, <<: *wf}
  weightformer/fit: {pool_size: 3, fit_group: true, <<: *wf}
"""


def test_a_zoo_grid_runs_and_reports_its_diagnostics(tmp_path):
    import pandas as pd

    from bench.run_records import load_records
    from bench.sweep import main

    grid = tmp_path / "zoo.yaml"
    grid.write_text(E2E)
    roots = ["--teachers-root", str(tmp_path / "teachers"), "--results-root", str(tmp_path / "results")]
    # The sweep's own command, in this process (the command line is tests/test_sweep.py's): it
    # raises SystemExit when a job fails.
    main(["--grid", str(grid), "--cluster", "debug", *roots])
    table = load_records(tmp_path / "results" / "zoo")
    assert set(table.status) == {"done"}
    # The first 5 meta-train members used (pool sizes 3 and 5), the 3 held out; members 5-26 never trained.
    assert sorted(table[table.stage == "teachers"].member) == [0, 1, 2, 3, 4, 27, 28, 29]
    meta = table[table.stage == "meta_train"]
    assert len(meta) == 2 + 2  # p3, p5 on transfer, and fit's one per seed
    for r in meta.itertuples():
        vals = [p["val_kl"] for p in r.curve]
        best = vals.index(min(vals))
        assert r.best_step == r.curve[best]["step"] and r.steps_run == r.curve[-1]["step"]
        assert r.steps_run == 24 or len(vals) - 1 - best == 2  # the limit, or stopped 2 checks after the best
    methods = table[table.stage == "methods"].set_index(["variant", "seed"])
    p3 = methods.loc["weightformer/p3"]
    assert (p3.wf_members == 3).all() and p3.partner_agreement.between(0, 100).all()
    assert p3.anchor_agreement.between(0, 100).all() and (p3.test_anchor_kl_from_ensemble > 0).all()
    assert set(methods.loc["kd/unseen_transfer"].distill_on) == {"transfer"}
    assert (methods.loc["kd/unseen_transfer"].test_kl_from_ensemble > 0).all()
    assert set(meta.wf_distill_on.dropna()) == {"transfer"}
    # Paired rows share their groups: every unseen row of a seed has the same held-out members.
    unseen = table[(table.stage == "methods") & (table.teacher_part == "held_out")]
    assert unseen.groupby("seed").teacher_members.agg(lambda m: len({tuple(sorted(x)) for x in m})).eq(1).all()

    from bench.report import report

    report("zoo", tmp_path / "results", grid_file=grid)
    out = tmp_path / "results" / "zoo" / "report"
    for name in ("diagnostics.md", "ladder.md", "pool_size.csv", "plots/pool_size.png", "plots/pool_size.pdf",
                 "plots/meta_training.png", "meta_training.csv"):
        assert (out / name).is_file(), name
    ladder = pd.read_csv(out / "ladder.csv")
    assert list(ladder.rung) == ["one group", "seen", "unseen"] and (ladder.groups == 2).all()
    sizes = pd.read_csv(out / "pool_size.csv")
    by_series = sizes.groupby("series").pool_size.agg(lambda v: sorted(v.dropna()))
    assert by_series["WeightFormer, unseen"] == [3.0] and by_series["WeightFormer, seen"] == [3.0]
    assert by_series["WeightFormer, unseen, eq. 1 on transfer"] == [5.0]
    assert {"single (unseen groups)", "ensemble (unseen groups)", "KD on transfer (unseen groups)"} <= set(sizes.series)
    assert (sizes.groups == 2).all()
