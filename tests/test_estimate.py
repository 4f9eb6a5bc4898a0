"""The dry-run's cost estimate: FLOP counts against hand counts, its formulas, its output."""
import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from bench.grid import load_grid
from bench.data import SPLIT_SIZES, load_dataset
from bench.estimate import job_flops, model_forward_flops, forward_flops, weightformer_flops
from bench.models import build_model
from bench.method_options import WFConfig
from bench.jobs import STAGES, Roots
from bench.sweep import main


def test_forward_flops_of_a_small_network_match_a_hand_count():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1),
                        nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    # multiply-adds: out channels x in channels x kernel area x output pixels; a linear: in x out
    macs = 8 * 3 * 3 * 3 * (8 * 8) + 4 * 8 * 3 * 3 * (4 * 4) + 64 * 10
    assert model_forward_flops(net, image_size=8) == 2 * macs


def test_weightformer_count_by_layer_shape_equals_a_count_of_the_whole_step():
    cfg = WFConfig.from_mapping({"d_model": 32, "depth": 2, "heads": 4}, "test")
    from bench.weightformer.model import WeightFormer
    from bench.weights.tokens import weight_layers

    with torch.device("meta"):
        model = build_model("vgg11", 10, 16, "tiny")
        layers = weight_layers(model, "vgg11")
        wf = WeightFormer(layers, cfg, 3)
    for given in (3, 2):
        tokens = [torch.empty(given, l.n_tokens, l.token_width, device="meta") for l in layers]
        with FlopCounterMode(display=False) as forward:
            out = wf(tokens)
        with FlopCounterMode(display=False) as backward:
            sum(o.sum() for o in out).backward()
        assert weightformer_flops("vgg11", 10, 16, "tiny", cfg, 3, given) == \
            (forward.get_total_flops(), backward.get_total_flops())


def test_split_sizes_are_those_of_the_loaded_splits():
    for name in ("digits", "multiview", "testbed", "testbed_hard", "testbed_harder", "testbed_source"):
        assert {s: len(load_dataset(name, split=s)) for s in SPLIT_SIZES[name]} == SPLIT_SIZES[name]
    assert set(SPLIT_SIZES["testbed"]) == {"train", "val", "test", "transfer"}


def tiny_jobs(tmp_path):
    grid = load_grid("main_table_scratch", "tiny")
    roots = Roots.resolve(str(tmp_path / "t"), str(tmp_path / "r"))
    return grid, {name: stage.plan(grid, roots) for name, stage in STAGES.items()}


def with_epochs(spec, epochs):
    return {**spec, "recipe": {**spec["recipe"], "epochs": epochs}}


def test_estimate_scales_linearly_with_epochs(tmp_path):
    _, jobs = tiny_jobs(tmp_path)
    teacher = jobs["teachers"][0].spec
    one = job_flops("teachers", with_epochs(teacher, 1))
    assert [job_flops("teachers", with_epochs(teacher, e)) for e in (2, 7)] == pytest.approx([2 * one, 7 * one])
    kd = next(j.spec for j in jobs["methods"] if j.spec["method"] == "kd")
    kd_at = lambda e: job_flops("methods", {**kd, "options": {**kd["options"], "epochs": e}})
    # The student's work grows with its epochs; the cached teachers' forwards (the testbed has one
    # view per image) are paid once: affine in the epochs, with a positive fixed part.
    assert kd_at(3) - kd_at(1) == pytest.approx(2 * (kd_at(2) - kd_at(1)))
    assert kd_at(1) > kd_at(2) - kd_at(1)
    meta = jobs["meta_train"][0].spec
    steps = lambda s: job_flops("meta_train", {**meta, "wf": {**meta["wf"], "steps": s}})
    assert steps(40) - steps(10) == pytest.approx(3 * (steps(20) - steps(10)))  # the cache's fill, once
    assert steps(10) > steps(20) - steps(10)


def test_the_soup_controls_estimates_count_their_work(tmp_path):
    _, jobs = tiny_jobs(tmp_path)
    kd = next(j.spec for j in jobs["methods"]
              if j.spec["method"] == "kd" and j.spec["teachers"][0]["arch"] == "vgg11")
    net = kd["teachers"][0]  # VGG: it has BatchNorm statistics to re-estimate

    def flops(method, n=4, **options):
        return job_flops("methods", {**kd, "teachers": kd["teachers"][:n], "method": method, "variant": method,
                                     "options": options})

    # Greedy: one candidate soup (re-estimated, evaluated on val) per member after the best, then
    # the test evaluation; with one member there is nothing to try.
    candidate = flops("greedy_soup", 3) - flops("greedy_soup", 2)
    assert flops("greedy_soup", 4) - flops("greedy_soup", 2) == pytest.approx(2 * candidate)
    assert flops("greedy_soup", 1) < flops("soup") < flops("greedy_soup", 2)
    assert candidate > SPLIT_SIZES[net["dataset"]]["val"] * forward_flops(net["arch"], 10, 16, "tiny")
    # Learned: affine in its steps (the testbed is not augmented: the soft labels are paid once),
    # and a soup's work on top of the fit.
    learned = lambda steps: flops("learned_soup", steps=steps)
    assert learned(40) - learned(10) == pytest.approx(3 * (learned(20) - learned(10)))
    assert learned(10) > flops("soup") + (learned(20) - learned(10))


def dry_run(capsys, *flags):
    main(["--grid", "main_table_scratch", "--scale", "tiny", "--cluster", "local", "--dry-run", *flags])
    return capsys.readouterr().out.splitlines()


def table(lines, title):
    """The rows (split into words) of the indented table under the line starting with `title`,
    its column header left out."""
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("  "):
            break
        rows.append(line.split())
    return {row[0]: row for row in rows}


def test_dry_run_prints_the_pools_and_the_estimate_per_stage_and_in_total(tmp_path, capsys):
    grid, jobs = tiny_jobs(tmp_path)
    lines = dry_run(capsys)
    pools = table(lines, "pools")
    for p in grid.pools:
        assert pools[p.name][1:6] == [p.arch, p.dataset, p.init, str(p.members), str(p.held_out)]
    title = next(line for line in lines if line.startswith("GPU-hours"))
    assert "estimate" in title and "60 TFLOP/s" in title
    rows = table(lines, "GPU-hours")
    assert list(rows) == ["pretrain", "teachers", "meta_train", "methods", "total"]
    # The teachers' FLOPs by hand: members x epochs x (3 x train images + test images) x forward.
    teachers = sum(p.members * int(pools[p.name][6]) * (3 * SPLIT_SIZES[p.dataset]["train"] + SPLIT_SIZES[p.dataset]["test"])
                   * forward_flops(p.arch, 10, 16, "tiny") for p in grid.pools)
    assert float(rows["teachers"][1]) == pytest.approx(teachers, rel=0.01)
    stages = [float(rows[s][1]) for s in ("pretrain", "teachers", "meta_train", "methods")]
    assert float(rows["total"][1]) == pytest.approx(sum(stages), rel=0.01)
    # GPU-hours are the FLOPs at the stated throughput: half the throughput, twice the hours.
    slower = table(dry_run(capsys, "--gpu-tflops", "30"), "GPU-hours")
    assert float(slower["total"][2]) == pytest.approx(2 * float(rows["total"][2]), rel=0.05)
    assert float(rows["total"][2]) == pytest.approx(float(rows["total"][1]) / 60e12 / 3600, rel=0.05)


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_a_throughput_that_is_not_positive_is_refused_with_one_line(value, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--grid", "main_table", "--dry-run", "--gpu-tflops", value])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--gpu-tflops" in err


def test_a_cifar_pool_at_224_px_costs_its_resolution_and_the_dry_run_says_so(tmp_path, capsys):
    """VGG-11 keeps its body from 32 to 224 px, so a teacher's FLOPs grow with the pixels (49x) and a
    little for the ImageNet head's 4,096-wide layers; the dry run shows the resolution and that cost."""
    text = """n_teachers: 1
seeds: 1
pools:
  - {{name: p{size}, arch: vgg11, dataset: cifar10, members: 2, recipe: {{image_size: {size}, epochs: 10, schedule: cosine}}}}
methods: [single]
"""
    flops, lines = {}, {}
    for size in (32, 224):
        path = tmp_path / f"g{size}.yaml"
        path.write_text(text.format(size=size))
        (teacher,) = [j for j in STAGES["teachers"].plan(load_grid(path, "paper"), Roots(tmp_path, tmp_path))
                      if j.spec["member"] == 0]
        flops[size] = job_flops("teachers", teacher.spec)
        main(["--grid", str(path), "--scale", "paper", "--cluster", "local", "--dry-run", "--data-root", str(tmp_path),
              "--teachers-root", str(tmp_path / "t"), "--results-root", str(tmp_path / "r")])
        lines[size] = capsys.readouterr().out.splitlines()
    assert 49 <= flops[224] / flops[32] < 51
    for size in (32, 224):
        row = table(lines[size], "pools")[f"p{size}"]
        assert row[7] == str(size) and float(row[8]) == pytest.approx(forward_flops("vgg11", 10, size, "paper") / 1e9,
                                                                      rel=1e-2)
    hours = {s: float(table(lines[s], "GPU-hours")["teachers"][1]) for s in (32, 224)}
    assert hours[224] / hours[32] == pytest.approx(flops[224] / flops[32], rel=0.02)


def test_disk_per_job_is_the_saved_weights_and_what_training_holds_beside_them(tmp_path):
    from safetensors.torch import save_file

    from bench.estimate import job_disk

    _, jobs = tiny_jobs(tmp_path)
    teacher = jobs["teachers"][0].spec
    model = build_model(teacher["arch"], 10, 16, "tiny")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    saved = (tmp_path / "w.safetensors").stat().st_size  # the bytes a finished run's weights take
    weights = 4 * sum(t.numel() for t in model.state_dict().values())
    assert weights <= saved < weights + 16_384  # the file's header is all the rest
    outputs = 4 * 10 * (SPLIT_SIZES[teacher["dataset"]]["val"] + SPLIT_SIZES[teacher["dataset"]]["test"])
    # AdamW (the tiny recipe): a checkpoint is the weights and two moments, two of them while one commits.
    assert job_disk("teachers", teacher) == (weights + outputs, weights + outputs + 2 * 3 * weights)
    by_method = {j.spec["method"]: job_disk("methods", j.spec) for j in jobs["methods"]
                 if j.spec["teachers"][0]["pool"] == teacher["pool"]}
    assert by_method["kd"] == (weights, weights + 6 * weights)
    assert by_method["weightformer_ft"] == (2 * weights, 2 * weights + 6 * weights)  # predicted and fine-tuned
    assert by_method["single"] == by_method["ensemble"] == by_method["weightformer"] == (0, 0)
    sgd = with_epochs(teacher, 1) | {"recipe": {**teacher["recipe"], "optimizer": "sgd"}}
    assert job_disk("teachers", sgd)[1] == weights + outputs + 2 * 2 * weights  # momentum: one slot
