"""The import layers: lower layers never import upper ones, and no method imports a sibling method."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bench.methods import METHODS
from bench.paths import project_root

BENCH = project_root() / "bench"
RUNNING = ("bench.engine", "bench.train", "bench.pool", "bench.stages", "bench.sweep")
UPPER = ("bench.methods", "bench.weightformer", "bench.jobs", "bench.grid", "bench.report", "bench.estimate",
         *RUNNING)
# Inside bench.sweep: the command line and the status sit on the executors, which sit on the rest.
SWEEP_TOP = ("bench.sweep.cli", "bench.sweep.status")
SWEEP_BASE = ("bench.sweep.resources", "bench.sweep.plan", "bench.sweep.manifest", "bench.sweep.runners",
              "bench.sweep.summary", "bench.sweep.preflight")
# package or module -> the modules it must not import (a name and everything below it)
FORBIDDEN = {
    "bench.sweep.executors": SWEEP_TOP,
    **{module: ("bench.sweep.executors", *SWEEP_TOP) for module in SWEEP_BASE},
    "bench.data": UPPER, "bench.models": UPPER, "bench.weights": UPPER, "bench.train_config": UPPER,
    "bench.method_options": UPPER, "bench.job_env": UPPER, "bench.checkpoint": UPPER, "bench.run_records": UPPER,
    "bench.metrics": UPPER, "bench.io": UPPER, "bench.errors": UPPER, "bench.paths": UPPER,
    "bench.estimate": ("bench.engine", "bench.report", "bench.jobs", "bench.weightformer.meta_train", *RUNNING,
                       *(f"bench.methods.{m}" for m in (*METHODS, "common", "distillation", "weightformer_student"))),
    "bench.engine": ("bench.methods", "bench.weightformer", "bench.jobs", "bench.grid", "bench.report",
                     "bench.train", "bench.pool", "bench.stages", "bench.sweep"),
    "bench.weightformer": ("bench.methods", "bench.jobs", "bench.grid", "bench.report", "bench.pool",
                           "bench.stages", "bench.sweep"),
    "bench.methods": ("bench.jobs", "bench.grid", "bench.report", "bench.pool", "bench.stages", "bench.sweep"),
    "bench.grid": ("bench.engine", "bench.weightformer", "bench.jobs", "bench.report", *RUNNING),
    "bench.jobs": ("bench.engine", "bench.weightformer", "bench.report", *RUNNING),
    "bench.report": ("bench.engine", "bench.weightformer", *RUNNING,
                     *(f"bench.methods.{m}" for m in (*METHODS, "common", "distillation", "weightformer_student"))),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(BENCH.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of the file (`from bench.methods import kd`
    counts as bench.methods.kd; a relative import is resolved against the file's package)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def below(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


MODULES = sorted(BENCH.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_module_imports_a_layer_above_its_own(path):
    me = module_name(path)
    rules = [bad for layer, bad in FORBIDDEN.items() if below(me, layer)]
    wrong = sorted(n for n in imported_modules(path) for bad in rules for b in bad if below(n, b) and not below(me, b))
    assert not wrong, f"{me} imports {wrong}"


def test_no_method_module_imports_another():
    method_modules = {f"bench.methods.{name}" for name in METHODS}
    assert {p.stem for p in (BENCH / "methods").glob("*.py")} >= set(METHODS)
    for path in (BENCH / "methods").glob("*.py"):
        siblings = (imported_modules(path) & method_modules) - {f"bench.methods.{path.stem}"}
        assert path.stem == "__init__" or not siblings, f"{path.name} imports {sorted(siblings)}"


def test_the_import_check_sees_every_form_of_import(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.BENCH", tmp_path / "bench")
    module = tmp_path / "bench" / "methods" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text("from bench.methods import kd\nfrom . import soup\nimport bench.methods.weightformer as w\n"
                      "def f():\n    from ..engine import loop\n")
    assert {"bench.methods.kd", "bench.methods.soup", "bench.methods.weightformer",
            "bench.engine.loop"} <= imported_modules(module)
