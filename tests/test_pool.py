"""`python -m bench.pool` trains a pool where a sweep looks for it: the same folder and run ids as
the sweep's teachers stage plans for a grid pool of the same name and recipe."""
import subprocess
import sys

from bench.grid import load_grid
from bench.jobs import Roots, member_dir
from bench.run_records import load_records
from bench.sweep import make_plan

GRID = """
n_teachers: 2
seeds: 1
pools:
  - arch: vgg11
    dataset: digits
    members: 2
    held_out: 0
    recipe: {epochs: 1}
methods: [ensemble]
"""


def test_a_pool_trained_by_bench_pool_is_done_for_a_sweep(tmp_path):
    teachers, results = tmp_path / "teachers", tmp_path / "results"
    r = subprocess.run([sys.executable, "-m", "bench.pool", "--arch", "vgg11", "--dataset", "digits", "--scale",
                        "tiny", "--members", "2", "--epochs", "1", "--teachers-root", str(teachers),
                        "--results-root", str(results)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    grid = tmp_path / "g.yaml"
    grid.write_text(GRID)
    roots = Roots.resolve(str(teachers), str(results))
    plan = make_plan(load_grid(grid, "tiny"), roots)
    jobs = plan.stages["teachers"]
    assert len(jobs) == 2 and {j.run_id for j in jobs} <= plan.done  # nothing to train again
    assert all((member_dir(roots, j.spec) / "model.safetensors").is_file() for j in jobs)
    assert set(load_records(results / "teachers").run_id) == {j.run_id for j in jobs}
    # Another recipe is another member: a grid training 2 epochs finds nothing of it.
    grid.write_text(GRID.replace("epochs: 1", "epochs: 2"))
    assert not make_plan(load_grid(grid, "tiny"), roots).done
