"""Grid files (`sweeps/<grid>.yaml`) validated into dataclasses before anything runs.

A grid names teacher pools and the methods evaluated on groups of their members. Any value may
be given per scale as `{paper: ..., tiny: ...}`; `load_grid(grid, scale)` picks one. A method
option may also be given per architecture (`{vgg11: ..., resnet50: ...}`: a setting chosen on val
for each); every pool the method runs on needs a value. Every error names the file, the key and
the allowed values, and is raised before any job exists.

    description: what the grid reproduces
    n_teachers: 4            # N, teachers per ensemble
    seeds: 5                 # method runs per (pool, method): seeds 0..4, or a list ([5, 6, 7, 8, 9]);
                             # seed s draws its own group of teachers (bench.jobs.teacher_group)
    teacher_part: meta_train # where groups are drawn from: meta_train, or held_out (unseen teachers)
    pools:
      - name: vgg                       # optional; default <arch>-<dataset>-<scale>-<init>
        arch: vgg11
        dataset: {paper: cifar10, tiny: digits}
        init: scratch                   # scratch | shared | pretrained
        base: {tiny: {dataset: testbed_source, recipe: {epochs: 10}}}  # pretrained, tiny: the base's task
        ranges: {lr: [3.0e-4, 3.0e-3]}  # each member draws these from its seed (bench.train_config.draw)
        members: {paper: 20, tiny: 6}   # K
        held_out: {paper: 4, tiny: 2}   # the last members, never used for meta-training
        recipe: {paper: {epochs: 240, ...}, tiny: {}}   # bench.train_config.TrainConfig fields; e.g.
                                        # image_size: 224 (CIFAR resized on the device), and with init
                                        # pretrained, pretrained_weights: a name of bench.models.weight_choices
    methods: [single, ensemble]         # or {name: {option: value}}

A method may appear several times as variants `name/label` (one table row each), e.g.
`weightformer/unseen: {teacher_part: held_out}`. Besides its own options any method takes
`archs` / `inits` / `pools` (run only on pools of these architectures / initialisations / names),
`n_teachers` and `teacher_part` (override the grid's N and part for that row) and `pool_size` (the
meta-train part is its first `pool_size` members: seen groups are drawn from them and a WeightFormer
is meta-trained on them; the teachers stage trains only the members some job uses). A method's own options are typed
(bench.method_options): each value is checked against its allowed range when the grid loads.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.data import DATASETS
from bench.errors import BenchError
from bench.methods import METHODS, method_options
from bench.models import ARCHS, SCALES
from bench.method_options import COMMON_OPTIONS, FIELDS as WF_FIELDS, WeightFormerOptions
from bench.paths import project_root
from bench.train_config import RANGE_KEYS, TrainConfig, check_ranges, check_start, check_training

GRID_DIR = project_root() / "sweeps"
INITS = ("scratch", "shared", "pretrained")
# The training fields a pool's recipe may set (the rest are fixed by the pool and the member).
RECIPE_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig)
                    if f.name not in ("arch", "dataset", "scale", "seed", "init_seed", "pretrained", "extra",
                                      "device", "init_from", "train_fraction", "train_split"))


def default_pool_name(arch: str, dataset: str, scale: str, init: str) -> str:
    """A pool's name where the grid gives none, and the name `python -m bench.pool` trains under:
    the one spelling, so that a pool trained either way lands in the folder the other reads."""
    return f"{arch}-{dataset}-{scale}-{init}"


@dataclass(frozen=True)
class Pool:
    """A teacher pool as a grid declares it (and as `python -m bench.pool` trains one): K members of one
    (arch, dataset, scale, init), the last `held_out` never meta-trained on."""
    name: str
    arch: str
    dataset: str
    scale: str
    init: str
    members: int
    held_out: int
    recipe: dict[str, Any] = field(default_factory=dict, hash=False)
    # `pretrained` at tiny scale: the base network the suite pretrains on a source task
    # ({"dataset": ..., "recipe": {...}}); None where the members start from timm's weights or from scratch.
    base: dict[str, Any] | None = field(default=None, hash=False)
    ranges: dict[str, list] = field(default_factory=dict, hash=False)  # per-member draws (bench.train_config.draw)

    @classmethod
    def of_member(cls, spec: dict[str, Any]) -> "Pool":
        """The pool a member's teachers-stage spec (bench.jobs.teacher_spec) belongs to, as far as
        the spec tells: its size and held-out part are not in it."""
        return cls(spec["pool"], spec["arch"], spec["dataset"], spec["scale"], spec["init"], spec["member"] + 1, 0,
                   spec["recipe"])

    def member_config(self, k: int, **overrides: Any) -> TrainConfig:
        """Member k's training run: seed k; `shared` members start from seed 0's weights; a
        `pretrained` member from timm's weights, or from the base it is given (`init_from`)."""
        init_seed = 0 if self.init == "shared" else None
        pretrained = self.init == "pretrained" and not overrides.get("init_from")
        return TrainConfig(arch=self.arch, dataset=self.dataset, scale=self.scale, seed=k,
                           init_seed=init_seed, pretrained=pretrained, **overrides)

    @property
    def meta_train_members(self) -> tuple[int, ...]:
        return tuple(range(self.members - self.held_out))

    @property
    def held_out_members(self) -> tuple[int, ...]:
        return tuple(range(self.members - self.held_out, self.members))


@dataclass(frozen=True)
class MethodSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    variant: str = ""  # the row's label: the grid's key, "name" or "name/label"

    def __post_init__(self) -> None:
        if not self.variant:
            object.__setattr__(self, "variant", self.name)


@dataclass(frozen=True)
class Grid:
    name: str
    path: Path
    scale: str
    description: str
    n_teachers: int
    seeds: tuple[int, ...]
    teacher_part: str
    pools: tuple[Pool, ...]
    methods: tuple[MethodSpec, ...]
    figures_split: str = "test"  # the split the report's figures show: a search grid's is val, where it chooses


def per_arch(value: Any) -> bool:
    """Whether an option value is given per architecture: {vgg11: ..., resnet50: ...}."""
    return isinstance(value, dict) and bool(value) and set(value) <= set(ARCHS)


def for_arch(options: dict[str, Any], arch: str) -> dict[str, Any]:
    """A method's options on a pool of `arch`, values given per architecture resolved."""
    return {k: v[arch] if per_arch(v) else v for k, v in options.items()}


def method_applies(options: dict[str, Any], pool: Pool) -> bool:
    """Whether a method's `archs` / `inits` / `pools` filters let it run on `pool`."""
    return (pool.arch in options.get("archs", [pool.arch]) and pool.init in options.get("inits", [pool.init])
            and pool.name in options.get("pools", [pool.name]))


def select_archs(grid: Grid, archs: list[str]) -> Grid:
    """The grid with only its pools of these architectures (`--archs`)."""
    have = sorted({p.arch for p in grid.pools})
    bad = [a for a in archs if a not in have]
    if bad or not archs:
        raise BenchError(f"--archs {','.join(archs)}: grid {grid.name} has no pool of {', '.join(bad) or 'none'}; "
                         f"its architectures: {', '.join(have)}")
    return dataclasses.replace(grid, pools=tuple(p for p in grid.pools if p.arch in archs))


def parse_seeds(text: str) -> tuple[int, ...]:
    """`--seeds`: a count ("5": seeds 0..4) or distinct seeds and ranges ("5-9", "0,2,7-9")."""
    bad = BenchError(f"--seeds {text}: expected a count (5), or distinct whole numbers >= 0 and ranges "
                     f"(5-9 or 0,2,7-9)")
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) == 1 and parts[0].isdigit():
        if int(parts[0]) < 1:
            raise bad
        return tuple(range(int(parts[0])))
    seeds: list[int] = []
    for part in parts:
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()) or (high and int(high) < int(low)):
            raise bad
        seeds += range(int(low), int(high or low) + 1)
    if len(set(seeds)) != len(seeds):
        raise bad
    return tuple(seeds)


def with_seeds(grid: Grid, seeds: tuple[int, ...]) -> Grid:
    """The grid run with other seeds (`--seeds`: a rerun on other groups of teachers)."""
    return dataclasses.replace(grid, seeds=tuple(seeds))


def narrowed(grid: Grid, selection: dict[str, Any]) -> Grid:
    """The grid as a sweep narrowed it (`selection`, kept in its manifest): other `seeds` (--seeds),
    only the pools of `archs` (--archs). The sweep, --status and the report plan with it alike."""
    if selection.get("seeds"):
        grid = with_seeds(grid, tuple(selection["seeds"]))
    if selection.get("archs"):
        grid = select_archs(grid, list(selection["archs"]))
    return grid


def grid_names() -> list[str]:
    return sorted(p.stem for p in GRID_DIR.glob("*.yaml") if p.stem != "cluster")


def grid_path(grid: str) -> Path:
    """A grid's name (a file in sweeps/) or the path of a user's own YAML file."""
    path, shipped = Path(grid), GRID_DIR / f"{grid}.yaml"
    if path.is_dir() and not shipped.is_file():  # a shipped grid's name wins over a folder of that name
        raise BenchError(f"grid {path} is a folder; a grid is a .yaml file, or one of: {', '.join(grid_names())}")
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise BenchError(f"grid file {path} not found")
        return path
    if not shipped.is_file():
        raise BenchError(f"unknown grid {grid!r}; valid: {', '.join(grid_names())} (or a path to a .yaml file)")
    return GRID_DIR / f"{grid}.yaml"


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys of a mapping without a word (a method listed twice
    would run with the second's options only): refuse them, naming both lines."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    line = first.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: PyYAML's own error follows
                    continue
                if line != key_node.start_mark.line + 1:
                    raise _DuplicateKey(f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                                        f"(first at line {line}); YAML would keep only the last")
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except _DuplicateKey as err:
        raise BenchError(f"{path}: {err}") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise BenchError(f"{path}: malformed YAML at {where}: {err.problem}") from None
    except yaml.YAMLError as err:
        raise BenchError(f"{path}: malformed YAML: {err}") from None


class _Reader:
    """Reads one file's mappings, naming the file and key path in every error."""

    def __init__(self, path: Path, scale: str):
        self.path, self.scale = path, scale

    def fail(self, where: str, message: str) -> BenchError:
        return BenchError(f"{self.path}: {where}: {message}")

    def per_scale(self, value: Any, where: str) -> Any:
        if isinstance(value, dict) and value and set(value) <= set(SCALES):
            if self.scale not in value:
                raise self.fail(where, f"no value for scale {self.scale!r} (given: {', '.join(value)})")
            return value[self.scale]
        return value

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {type(value).__name__}")
        for key in value:
            if key not in allowed:
                raise self.fail(where, f"unknown key {key!r}; valid: {', '.join(allowed)}")
        for key in required:
            if key not in value:
                raise self.fail(where, f"missing key {key!r}")
        return {k: self.per_scale(v, f"{where}.{k}") for k, v in value.items()}

    def choice(self, value: Any, where: str, valid) -> str:
        if value not in valid:
            raise self.fail(where, f"unknown value {value!r}; valid: {', '.join(sorted(valid))}")
        return value

    def seeds(self, value: Any, where: str) -> tuple[int, ...]:
        """A count n (seeds 0..n-1) or a list of distinct seeds >= 0."""
        if isinstance(value, list):
            if not value or len(set(value)) != len(value) or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
                raise self.fail(where, f"expected a count or a non-empty list of distinct whole numbers >= 0, "
                                       f"got {value!r}")
            return tuple(value)
        return tuple(range(self.count(value, where, 1)))

    def count(self, value: Any, where: str, minimum: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.fail(where, f"expected a whole number >= {minimum}, got {value!r}")
        return value


GRID_KEYS = ("description", "n_teachers", "seeds", "teacher_part", "figures_split", "pools", "methods")
SPLITS = ("test", "val")
TEACHER_PARTS = ("meta_train", "held_out")
POOL_KEYS = ("name", "arch", "dataset", "init", "members", "held_out", "recipe", "base", "ranges")
BASE_KEYS = ("dataset", "recipe")
# A tiny pretrained pool's base when the grid names none: the source task of bench.data, its recipe's
# defaults (bench.train_config.RECIPES) but for 10 epochs, which its 12,000 images fill.
DEFAULT_BASE = {"dataset": "testbed_source", "recipe": {"epochs": 10}}


def read_base(r: _Reader, raw: Any, where: str, arch: str, init: str, scale: str) -> dict[str, Any] | None:
    """A pool's base network: at tiny scale a pretrained pool's members start from a network the
    suite pretrains on a source task (`DEFAULT_BASE` unless given); at paper scale from timm's
    weights, so no base is given there."""
    if raw is not None and init != "pretrained":
        raise r.fail(where, f"only a pretrained pool starts from a base (this one is {init})")
    if init != "pretrained" or scale != "tiny":
        if raw is not None:
            raise r.fail(where, "at paper scale a pretrained pool starts from timm's weights; give no base")
        return None
    b = r.mapping(raw if raw is not None else DEFAULT_BASE, where, BASE_KEYS, ("dataset",))
    dataset = r.choice(b["dataset"], f"{where}.dataset", DATASETS)
    recipe = r.mapping(b.get("recipe") or {}, f"{where}.recipe", RECIPE_KEYS)
    check_training(recipe, f"{r.path}: {where}.recipe")
    check_training(dataclasses.asdict(TrainConfig(arch, dataset, scale, **recipe).resolved()), f"{r.path}: {where}.recipe")
    return {"dataset": dataset, "recipe": dict(sorted(recipe.items()))}


def load_grid(grid: str | Path, scale: str = "tiny") -> Grid:
    if scale not in SCALES:
        raise BenchError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    path = grid_path(str(grid))
    r = _Reader(path, scale)
    raw = read_yaml(path)
    top = r.mapping(raw if raw is not None else {}, "top level", GRID_KEYS, ("pools", "methods"))
    n_teachers = r.count(top.get("n_teachers", 4), "n_teachers", 1)
    seeds = r.seeds(top.get("seeds", 3), "seeds")
    part = r.choice(top.get("teacher_part", "meta_train"), "teacher_part", TEACHER_PARTS)
    split = r.choice(top.get("figures_split", "test"), "figures_split", SPLITS)
    pools = read_pools(r, top["pools"], n_teachers, part)
    methods = read_methods(r, top["methods"], pools, n_teachers, part)
    return Grid(path.stem, path, scale, str(top.get("description", "")), n_teachers, seeds, part,
                tuple(pools), tuple(methods), split)


def read_pools(r: _Reader, raw: Any, n_teachers: int, part: str) -> list[Pool]:
    """The grid's `pools`, each checked (its recipe resolved at the scale, its start, its parts)."""
    path, scale = r.path, r.scale
    if not isinstance(raw, list) or not raw:
        raise r.fail("pools", "expected a non-empty list of pools")
    pools = []
    for i, item in enumerate(raw):
        where = f"pools[{i}]"
        p = r.mapping(item, where, POOL_KEYS, ("arch", "dataset"))
        arch = r.choice(p["arch"], f"{where}.arch", ARCHS)
        dataset = r.choice(p["dataset"], f"{where}.dataset", DATASETS)
        init = r.choice(p.get("init", "scratch"), f"{where}.init", INITS)
        members = r.count(p.get("members", 20), f"{where}.members", 1)
        held_out = r.count(p.get("held_out", 0), f"{where}.held_out", 0)
        if held_out >= members:
            raise r.fail(f"{where}.held_out", f"{held_out} leaves no meta-train members out of {members}")
        recipe = r.mapping(p.get("recipe") or {}, f"{where}.recipe", RECIPE_KEYS)
        check_training(recipe, f"{path}: {where}.recipe")
        # The recipe with the (dataset, scale) defaults filled in: warm-up and milestones against epochs.
        resolved = TrainConfig(arch, dataset, scale, **recipe).resolved()
        check_training(dataclasses.asdict(resolved), f"{path}: {where}.recipe")
        # The resolution the data set can be given at, and the pretrained start at it.
        check_start(resolved, init, f"{path}: {where}")
        available = members - held_out if part == "meta_train" else held_out
        if n_teachers > available:
            label = "meta-train" if part == "meta_train" else "held-out"
            raise r.fail("n_teachers", f"N = {n_teachers} is larger than pool {where}'s {label} part "
                                       f"({available} of {members} members)")
        base = read_base(r, p.get("base"), f"{where}.base", arch, init, scale)
        ranges = check_ranges(r.mapping(p.get("ranges") or {}, f"{where}.ranges", RANGE_KEYS), f"{path}: {where}.ranges")
        name = p.get("name") or default_pool_name(arch, dataset, scale, init)
        pools.append(Pool(str(name), arch, dataset, scale, init, members, held_out, recipe, base, ranges))
    names = [p.name for p in pools]
    if len(set(names)) != len(names):
        raise r.fail("pools", f"pool names repeat: {', '.join(names)}")
    return pools


def read_methods(r: _Reader, raw: Any, pools: list[Pool], n_teachers: int, part: str) -> list[MethodSpec]:
    """The grid's `methods` (a list of names or a mapping variant -> options), each variant's
    options checked against its method's and its groups against every pool it runs on."""
    if isinstance(raw, list):
        raw = {m: {} for m in raw} if all(isinstance(m, str) for m in raw) else None
    if not isinstance(raw, dict) or not raw:
        raise r.fail("methods", "expected a non-empty list of method names or a mapping name -> options")
    names = [p.name for p in pools]
    methods: list[MethodSpec] = []
    same: dict[tuple, str] = {}  # what a row runs -> its variant
    for variant, options in raw.items():
        name = str(variant).split("/", 1)[0]
        r.choice(name, "methods", METHODS)
        where = f"methods.{variant}"
        opts = r.mapping(options or {}, where, (*METHODS[name].Options.names(), *COMMON_OPTIONS))
        for arch in opts.get("archs", []):
            r.choice(arch, f"{where}.archs", ARCHS)
        for init in opts.get("inits", []):
            r.choice(init, f"{where}.inits", INITS)
        for name_ in opts.get("pools", []):
            r.choice(name_, f"{where}.pools", names)
        pool_size = r.count(opts["pool_size"], f"{where}.pool_size", 1) if "pool_size" in opts else None
        m_part = r.choice(opts.get("teacher_part", part), f"{where}.teacher_part", TEACHER_PARTS)
        m_n = r.count(opts.get("n_teachers", n_teachers), f"{where}.n_teachers", 1)
        check_groups(r, where, opts, pools, pool_size, m_part, m_n)
        jobs = (name, m_part, m_n, *((k, repr(v)) for k, v in sorted(opts.items()) if k in COMMON_OPTIONS),
                check_method_options(r, where, name, opts, pools))
        # Two rows that differ only where this scale does not look (a value given for the other
        # scale, or this one's default spelled out) would spend their jobs twice under two names.
        if jobs in same:
            raise r.fail(where, f"runs the same jobs as methods.{same[jobs]} at scale {r.scale}; give it a "
                                f"value of its own there (a per-scale value: {{paper: ..., tiny: ...}}) or drop it")
        same[jobs] = str(variant)
        methods.append(MethodSpec(name, opts, str(variant)))
    return methods


def check_groups(r: _Reader, where: str, opts: dict[str, Any], pools: list[Pool], pool_size: int | None,
                 part: str, n: int) -> None:
    """Every pool a method variant runs on can give it groups of `n` from its `part`."""
    for p in pools:
        if not method_applies(opts, p):
            continue
        meta_train = len(p.meta_train_members)
        if pool_size is not None and pool_size > meta_train:
            raise r.fail(f"{where}.pool_size", f"{pool_size} is larger than pool {p.name}'s meta-train part "
                                               f"({meta_train} members)")
        if pool_size is not None and n > pool_size:
            raise r.fail(f"{where}.pool_size", f"{pool_size} members cannot make a group of N = {n}")
        available = len(p.held_out_members) if part == "held_out" else min(meta_train, pool_size or meta_train)
        if n > available:
            raise r.fail(where, f"N = {n} is larger than pool {p.name}'s {part} part ({available} members)")
    if opts.get("fit_group") is True and part != "meta_train":
        raise r.fail(f"{where}.fit_group", "fits the group it is tested on: it needs teacher_part meta_train")


def check_method_options(r: _Reader, where: str, name: str, opts: dict[str, Any], pools: list[Pool]) -> tuple:
    """A method variant's options, typed per architecture it runs on. A value may be given per
    architecture (a setting chosen on val for each): every pool the method runs on needs one.
    Returns what the variant runs with on each architecture, defaults filled in at this scale."""
    archs = [p.arch for p in pools if method_applies(opts, p)]
    for key, value in opts.items():
        missing = [a for a in archs if per_arch(value) and a not in value]
        if missing:
            raise r.fail(f"{where}.{key}", f"no value for arch {missing[0]!r} (given: {', '.join(value)})")
    resolved = []
    for arch in sorted(set(archs)) or [None]:
        typed = method_options(name, opts if arch is None else for_arch(opts, arch), f"{r.path}: {where}")
        if isinstance(typed, WeightFormerOptions):  # the WeightFormer it needs, at this scale's defaults
            wf = typed.wf_config(r.scale, f"{r.path}: {where}")
            typed = (wf, dataclasses.replace(typed, **{k: None for k in WF_FIELDS}))
        resolved.append((arch, repr(typed)))
    return tuple(resolved)
