"""Typed method options: checked when a grid loads, one line per bad value; the light registry."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.grid import load_grid
from bench.errors import BenchError
from bench.methods import METHODS, load_method, meta_train_config, method_options
from bench.method_options import (DistillOptions, LearnedSoupOptions, NoOptions, SoupOptions, WeightFormerFTOptions,
                           WeightFormerOptions, wf_config)
from bench.paths import project_root

GRID = """
n_teachers: 2
seeds: 1
pools:
  - arch: vgg11
    dataset: digits
    members: 4
    held_out: 1
methods:
"""


def grid_file(tmp_path, methods: str) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(GRID + methods)
    return path


@pytest.mark.parametrize("methods, message", [
    ("  kd: {temperature: -1}", "methods.kd.temperature: -1 is not a finite number > 0"),
    ("  kd: {alpha: 7}", "methods.kd.alpha: 7 is not a number in [0, 1]"),
    ("  kd: {epochs: 0}", "methods.kd.epochs: 0 is not a whole number >= 1 or null (the pool recipe's)"),
    ("  kd/hot: {temperature: .inf}", "methods.kd/hot.temperature: inf is not a finite number > 0"),
    ("  self_distill: {alpha: -0.1}", "methods.self_distill.alpha: -0.1 is not a number in [0, 1]"),
    ("  soup: {bn_batches: 0}", "methods.soup.bn_batches: 0 is not a whole number >= 1"),
    ("  aligned_soup: {max_iter: 0}", "methods.aligned_soup.max_iter: 0 is not a whole number >= 1"),
    ("  weightformer: {bn_batches: 2.5}", "methods.weightformer.bn_batches: 2.5 is not a whole number >= 1"),
    ("  weightformer: {d_model: 30}", "methods.weightformer.d_model: 30 is not divisible by heads = 4"),
    ("  weightformer_ft: {ft_fraction: 0}", "methods.weightformer_ft.ft_fraction: 0 is not a number in (0, 1]"),
    ("  weightformer_ft: {ft_fraction: 1.5}",
     "methods.weightformer_ft.ft_fraction: 1.5 is not a number in (0, 1]"),
    ("  weightformer_ft: {ft_epochs: true}", "methods.weightformer_ft.ft_epochs: True is not a whole number >= 1"),
    ("  weightformer_ft: {ft_lr: -1}",
     "methods.weightformer_ft.ft_lr: -1 is not a finite number > 0 or null (a tenth of the recipe's lr)"),
    ("  weightformer_ft: {alpha: 2}", "methods.weightformer_ft.alpha: 2 is not a number in [0, 1]"),
    ("  kd: {temprature: 2}",
     "methods.kd: unknown key 'temprature'; valid: temperature, alpha, epochs, distill_on, archs, inits, pools, "
     "n_teachers, teacher_part, pool_size"),
    ("  single: {alpha: 0.5}", "methods.single: unknown key 'alpha'; valid: archs, inits, pools, n_teachers, "
     "teacher_part, pool_size"),
    ("  greedy_soup: {bn_batch: 10}", "methods.greedy_soup: unknown key 'bn_batch'; valid: bn_batches, archs, inits, "
     "pools, n_teachers, teacher_part, pool_size"),
    ("  learned_soup: {step: 10}", "methods.learned_soup: unknown key 'step'; valid: bn_batches, steps, batch_size, "
     "temperature, distill_on, lr, archs, inits, pools, n_teachers, teacher_part, pool_size"),
    ("  learned_soup: {lr: 0}", "methods.learned_soup.lr: 0 is not a finite number > 0"),
    ("  learned_soup: {steps: 0}",
     "methods.learned_soup.steps: 0 is not a whole number >= 1 or null (the scale's default)"),
    ("  learned_soup: {distill_on: test}",
     "methods.learned_soup.distill_on: 'test' is not one of: train, transfer or null (the scale's default)"),
])
def test_a_bad_option_stops_the_grid_with_one_line_naming_file_key_value_and_range(tmp_path, methods, message):
    path = grid_file(tmp_path, methods + "\n")
    with pytest.raises(BenchError) as err:
        load_grid(path, "tiny")
    assert str(err.value) == f"{path}: {message}"


def test_per_scale_option_values_are_checked_at_the_scale_loaded(tmp_path):
    path = grid_file(tmp_path, "  kd: {temperature: {paper: 4, tiny: -1}}\n"
                               "  weightformer: {d_model: {paper: 100, tiny: 32}}\n")
    with pytest.raises(BenchError, match=r"methods\.kd\.temperature: -1 is not"):
        load_grid(path, "tiny")
    # At paper scale d_model 100 meets that scale's default heads = 8.
    with pytest.raises(BenchError, match=r"methods\.weightformer\.d_model: 100 is not divisible by heads = 8"):
        load_grid(path, "paper")


def test_a_weightformer_setting_given_at_one_scale_keeps_the_other_scales_default(tmp_path):
    from bench.method_options import SCALE_DEFAULTS, WFConfig
    path = grid_file(tmp_path, "  weightformer: {steps: {paper: null, tiny: 1000}}\n")
    tiny, paper = (load_grid(path, s).methods[0].options for s in ("tiny", "paper"))
    assert method_options("weightformer", tiny, "w").wf_config("tiny").steps == 1000
    assert method_options("weightformer", paper, "w").wf_config("paper").steps == SCALE_DEFAULTS["paper"]["steps"]
    assert SCALE_DEFAULTS["paper"]["steps"] != WFConfig().steps != 1000
    path = grid_file(tmp_path, "  weightformer: {steps: 0}\n")
    with pytest.raises(BenchError, match=r"steps: 0 is not a whole number >= 1 or null \(the scale's default\)"):
        load_grid(path, "tiny")


def test_the_sweep_refuses_a_bad_option_before_anything_is_planned(tmp_path):
    path = grid_file(tmp_path, "  single: {}\n  kd: {temperature: -1}\n")
    run = subprocess.run([sys.executable, "-m", "bench.sweep", "--grid", str(path), "--cluster", "debug",
                          "--teachers-root", str(tmp_path / "teachers"), "--results-root", str(tmp_path / "results")],
                         capture_output=True, text=True, env={**os.environ})
    assert run.returncode == 2
    assert run.stderr == f"error: {path}: methods.kd.temperature: -1 is not a finite number > 0\n"
    assert not (tmp_path / "teachers").exists()


def test_options_take_their_defaults_and_convert_ints_for_floats():
    assert DistillOptions.from_mapping({}, "kd") == DistillOptions(temperature=4.0, alpha=0.9, epochs=None)
    made = DistillOptions.from_mapping({"temperature": 2, "alpha": 1, "epochs": None}, "kd")
    assert (made.temperature, made.alpha, made.epochs) == (2.0, 1.0, None)
    assert type(made.temperature) is float and type(made.alpha) is float
    ft = WeightFormerFTOptions.from_mapping({"ft_lr": 1, "lr": 1}, "weightformer_ft")
    assert (ft.ft_epochs, ft.ft_fraction, ft.ft_temperature, ft.alpha, ft.bn_batches) == (2, 1.0, 4.0, 0.9, 50)
    assert type(ft.ft_lr) is float and ft.wf_config("tiny").lr == 1.0
    assert SoupOptions.from_mapping({}, "soup").bn_batches == 50
    assert NoOptions.from_mapping({}, "single") == NoOptions()


@pytest.mark.parametrize("raw, message", [
    ({"epochs": True}, "kd.epochs: True is not a whole number >= 1 or null (the pool recipe's)"),
    ({"epochs": 2.0}, "kd.epochs: 2.0 is not a whole number >= 1 or null (the pool recipe's)"),
    ({"alpha": False}, "kd.alpha: False is not a number in [0, 1]"),
    ({"temperature": "4"}, "kd.temperature: '4' is not a finite number > 0"),
    ({"temperature": float("nan")}, "kd.temperature: nan is not a finite number > 0"),
    ({"temp": 4}, "kd: unknown option 'temp'; valid: temperature, alpha, epochs, distill_on"),
])
def test_from_mapping_refuses_wrong_types_and_unknown_keys_in_one_line(raw, message):
    with pytest.raises(BenchError) as err:
        DistillOptions.from_mapping(raw, "kd")
    assert str(err.value) == message


def test_a_weightformer_setting_takes_the_scale_default_unless_given():
    typed = WeightFormerOptions.from_mapping({"steps": 20, "cross": False}, "weightformer")
    assert typed.d_model is None and typed.steps == 20
    assert typed.wf_config("tiny") == wf_config({"steps": 20, "cross": False}, "tiny")
    paper = typed.wf_config("paper")
    assert (paper.d_model, paper.heads, paper.steps, paper.cross) == (512, 8, 20, False)
    # null is the scale's default too (a value given at one scale only).
    assert WeightFormerOptions.from_mapping({"d_model": None}, "weightformer").wf_config("paper").d_model == 512
    with pytest.raises(BenchError, match=r"weightformer\.d_model: 0 is not a whole number >= 1 or null"):
        WeightFormerOptions.from_mapping({"d_model": 0}, "weightformer")


def test_learned_soup_takes_weightformers_budget_and_loss_at_the_scale_unless_given():
    from bench.method_options import SCALE_DEFAULTS, WFConfig
    unset = LearnedSoupOptions.from_mapping({}, "learned_soup")
    for scale in ("tiny", "paper"):
        wf = WeightFormerOptions.from_mapping({}, "weightformer").wf_config(scale)
        mine = unset.wf_config(scale)
        assert (mine.steps, mine.batch_size, mine.temperature, mine.distill_on, mine.seed) == \
            (wf.steps, wf.batch_size, wf.temperature, wf.distill_on, wf.seed)
    assert unset.wf_config("paper").steps == SCALE_DEFAULTS["paper"]["steps"] != WFConfig().steps
    # A grid that gives WeightFormer 1,000 tiny steps gives the learned soup the same with the same line.
    given = LearnedSoupOptions.from_mapping({"steps": 1000, "temperature": 2, "batch_size": None}, "learned_soup")
    assert (given.wf_config("tiny").steps, given.wf_config("tiny").temperature) == (1000, 2.0)
    assert given.wf_config("paper").batch_size == SCALE_DEFAULTS["paper"]["batch_size"]
    assert given.lr == 0.05 and given.bn_batches == 50
    assert not METHODS["learned_soup"].needs_meta_train  # it fits its own coefficients, no WeightFormer


def test_meta_train_config_is_the_resolved_weightformer_config_and_none_for_other_methods():
    options = {"steps": 6, "d_model": 16, "heads": 2, "teacher_part": "held_out", "ft_epochs": 1}
    tiny = meta_train_config("weightformer_ft", options, "tiny")
    assert tiny == wf_config(options, "tiny").identity()
    # How a step runs enters the identity only when on, and fields added later only away from their
    # defaults: tiny configs keep the run ids they had.
    assert tiny == {k: v for k, v in dataclasses.asdict(wf_config(options, "tiny")).items()
                    if k not in ("checkpointing", "compile", "patience", "val_groups", "val_images", "distill_on")}
    later = meta_train_config("weightformer_ft", {**options, "patience": 3, "distill_on": "transfer"}, "tiny")
    assert later == {**tiny, "patience": 3, "distill_on": "transfer"}
    paper = meta_train_config("weightformer", {}, "paper")
    assert paper["d_model"] == 512 and paper["checkpointing"] is True and "compile" not in paper
    assert meta_train_config("kd", {"temperature": 2.0, "archs": ["vgg11"]}, "tiny") is None
    assert {name for name, e in METHODS.items() if e.needs_meta_train} == {"weightformer", "weightformer_ft"}


def test_a_spec_options_mapping_becomes_the_methods_typed_options():
    typed = method_options("kd", {"temperature": 2, "n_teachers": 2, "archs": ["vgg11"]}, "methods.kd")
    assert typed == DistillOptions(temperature=2.0)
    with pytest.raises(BenchError, match="unknown method 'kdd'; valid: aligned_soup, ensemble"):
        method_options("kdd", {}, "methods.kdd")


def test_every_registered_method_loads_with_its_registry_entry():
    for name, entry in METHODS.items():
        method = load_method(name)
        assert (method.name, method.Options, method.needs_meta_train) == (name, entry.Options, entry.needs_meta_train)
        assert callable(method.run)


def _modules_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after `statement`."""
    out = subprocess.run([sys.executable, "-c", f"{statement}; import sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True, cwd=project_root())
    return set(out.stdout.split())


def test_importing_the_registry_imports_no_method_code_torch_or_training_engine():
    registry = _modules_after("import bench.methods")
    assert {m for m in registry if m.startswith("bench.")} == {"bench.errors", "bench.method_options", "bench.methods",
                                                                "bench.methods.base"}
    assert "torch" not in registry
    schemas = _modules_after("import bench.method_options")
    assert {m for m in schemas if m.startswith("bench.")} == {"bench.errors", "bench.method_options"}
    assert "torch" not in schemas
    # The grid loader reads the registry, never a method's code nor the training engine.
    config = _modules_after("import bench.grid")
    implementations = {f"bench.methods.{m}" for m in (*METHODS, "common", "distillation", "weightformer_student")}
    assert not (implementations | {"bench.train", "bench.engine", "bench.weightformer"}) & config
