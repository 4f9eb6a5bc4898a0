import pytest
from pathlib import Path

from bench.grid import grid_names, load_grid
from bench.errors import BenchError

POOL = """
n_teachers: 2
seeds: 1
pools:
  - arch: vgg11
    dataset: {paper: cifar10, tiny: digits}
    members: 4
    held_out: 1
    recipe: {tiny: {epochs: 1}, paper: {epochs: 240, milestones: [150, 180, 210]}}
methods: [single, ensemble]
"""


def write(tmp_path, text, name="g.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("scale", ["tiny", "paper"])
def test_every_shipped_grid_loads_at_both_scales(scale):
    assert "smoke" in grid_names()
    for name in grid_names():
        grid = load_grid(name, scale)
        assert grid.pools and grid.methods and grid.scale == scale


def test_per_scale_values_are_picked(tmp_path):
    tiny, paper = load_grid(write(tmp_path, POOL), "tiny"), load_grid(write(tmp_path, POOL), "paper")
    assert tiny.pools[0].dataset == "digits" and tiny.pools[0].recipe == {"epochs": 1}
    assert paper.pools[0].dataset == "cifar10" and paper.pools[0].recipe["milestones"] == [150, 180, 210]
    assert tiny.pools[0].meta_train_members == (0, 1, 2) and tiny.pools[0].held_out_members == (3,)
    assert tiny.pools[0].name == "vgg11-digits-tiny-scratch"


def test_an_option_may_be_given_per_architecture(tmp_path):
    from bench.jobs import STAGES, Roots

    text = POOL.replace("members: 4", "members: 5").replace("methods: [single, ensemble]", """  - arch: resnet50
    dataset: digits
    members: 5
    held_out: 1
methods:
  kd: {temperature: {vgg11: 1.0, resnet50: 4.0}, alpha: 0.5}
""")
    grid = load_grid(write(tmp_path, text), "tiny")
    jobs = STAGES["methods"].plan(grid, Roots(tmp_path, tmp_path))
    assert {(j.spec["teachers"][0]["arch"], j.spec["options"]["temperature"]) for j in jobs} == {
        ("vgg11", 1.0), ("resnet50", 4.0)}
    with pytest.raises(BenchError, match=r"methods.kd.temperature: no value for arch 'resnet50' \(given: vgg11\)"):
        load_grid(write(tmp_path, text.replace(", resnet50: 4.0", "")), "tiny")
    with pytest.raises(BenchError, match="temperature"):  # each arch's value is checked
        load_grid(write(tmp_path, text.replace("resnet50: 4.0", "resnet50: -4.0")), "tiny")


@pytest.mark.parametrize("text, words", [
    (POOL.replace("members: 4", "memebers: 4"), ["g.yaml", "pools[0]", "'memebers'", "members, held_out"]),
    (POOL.replace("arch: vgg11", "arch: vgg19"), ["pools[0].arch", "'vgg19'", "resnet50, vgg11, vit_b32"]),
    (POOL.replace("[single, ensemble]", "[single, ensembel]"), ["methods", "'ensembel'", "aligned_soup, ensemble, greedy_soup, kd, learned_soup, self_distill, single, soup"]),
    (POOL.replace("n_teachers: 2", "n_teachers: 4"), ["N = 4", "meta-train part (3 of 4 members)"]),
    (POOL.replace("held_out: 1", "held_out: 4"), ["held_out", "no meta-train members"]),
    (POOL.replace("{epochs: 1}", "{epoch: 1}"), ["recipe", "'epoch'", "epochs"]),
    (POOL.replace("{paper: cifar10, tiny: digits}", "{paper: cifar10}"), ["no value for scale 'tiny'"]),
    (POOL.replace("seeds: 1", "seeds: 0"), ["seeds", ">= 1"]),
    (POOL + "extra: 1\n", ["top level", "'extra'", "description"]),
])
def test_bad_grids_name_file_key_and_valid_values(tmp_path, text, words):
    with pytest.raises(BenchError) as err:
        load_grid(write(tmp_path, text), "tiny")
    message = str(err.value)
    assert all(w in message for w in words), message
    assert "\n" not in message


def test_two_rows_that_run_the_same_jobs_at_a_scale_are_refused_there(tmp_path):
    """A value given only for the other scale, or the default spelled out, makes a second name for
    the same jobs: refused at the scale where they coincide, naming both rows."""
    text = POOL.replace("methods: [single, ensemble]", """methods:
  kd: {temperature: 4.0}
  kd/e4: {temperature: 4.0, epochs: {paper: null, tiny: 4}}
  weightformer: {}
  weightformer/t4: {temperature: 4.0}
""")
    with pytest.raises(BenchError, match=r"methods.kd/e4: runs the same jobs as methods.kd at scale paper; "
                                         r"give it a value of its own there"):
        load_grid(write(tmp_path, text), "paper")
    with pytest.raises(BenchError, match=r"methods.weightformer/t4: runs the same jobs as methods.weightformer "
                                         r"at scale tiny"):
        load_grid(write(tmp_path, text.replace("kd/e4: {temperature: 4.0, epochs: {paper: null, tiny: 4}}",
                                               "kd/e4: {temperature: 4.0, epochs: 4}")), "tiny")
    fixed = text.replace("{paper: null, tiny: 4}", "{paper: 480, tiny: 4}").replace("{temperature: 4.0}\n", "{temperature: 8.0}\n", 2)
    grid = load_grid(write(tmp_path, fixed), "paper")
    assert [m.variant for m in grid.methods] == ["kd", "kd/e4", "weightformer", "weightformer/t4"]
    # The same options on other teachers are other jobs.
    unseen = POOL.replace("methods: [single, ensemble]", "methods:\n  single: {}\n  single/unseen: {teacher_part: held_out}\n")
    assert len(load_grid(write(tmp_path, unseen.replace("held_out: 1", "held_out: 2")), "tiny").methods) == 2


def test_malformed_yaml_names_the_line(tmp_path):
    path = write(tmp_path, POOL.replace("members: 4", "members: [4"))
    with pytest.raises(BenchError, match=r"g.yaml: malformed YAML at line \d+"):
        load_grid(path)


def test_unknown_grid_lists_the_shipped_ones(tmp_path):
    with pytest.raises(BenchError, match="unknown grid 'mian_table'; valid: .*smoke"):
        load_grid("mian_table")
    with pytest.raises(BenchError, match="not found"):
        load_grid(str(tmp_path / "mine.yaml"))


def test_a_folder_given_as_a_grid_is_named_a_folder(tmp_path, monkeypatch, capsys):
    from bench.grid import GRID_DIR, grid_path
    from bench.report import main as report
    from bench.sweep import main as sweep

    with pytest.raises(BenchError, match=f"grid {tmp_path} is a folder; a grid is a .yaml file, or one of: .*smoke"):
        load_grid(str(tmp_path))
    for main in (sweep, report):
        with pytest.raises(SystemExit) as stop:
            main(["--grid", str(tmp_path), "--results-root", str(tmp_path / "results")])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1 and "is a folder" in err, err
    assert not (tmp_path / "results").exists()
    # A folder named like a shipped grid (results/main_table, when run from results/) does not hide it.
    (tmp_path / "main_table").mkdir()
    monkeypatch.chdir(tmp_path)
    assert grid_path("main_table") == GRID_DIR / "main_table.yaml"


def test_figures_split_is_test_unless_a_search_grid_says_val(tmp_path):
    from bench.grid import load_grid

    assert load_grid("main_table", "tiny").figures_split == "test"
    assert load_grid("val_search_pretrained", "tiny").figures_split == "val"
    bad = tmp_path / "bad.yaml"
    bad.write_text("figures_split: train\n" + (Path(__file__).parents[1] / "sweeps" / "kd_search.yaml").read_text()
                   .replace("figures_split: val", ""))
    with pytest.raises(BenchError, match=r"figures_split.*test, val"):
        load_grid(bad, "tiny")
