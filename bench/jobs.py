"""A grid as jobs: each stage turns a grid into jobs and knows when a job is done.

A job is a pure function of its spec; `run_id` = hash of the spec. Stages run in the order of
`STAGES`; a job names the run_ids it needs (of earlier stages). Adding a stage is one entry here
and its runner in bench.stages. The sweep plans with this module and the report counts planned
runs with it, so it holds no training code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch

from bench.grid import Grid, Pool, for_arch, method_applies
from bench.errors import BenchError
from bench.methods import meta_train_config
from bench.models import ARCH_SPECS
from bench.paths import results_root, teachers_root
from bench.run_records import LOCATION, read_record, run_id
from bench.train_config import LOCATION_KEYS


@dataclass(frozen=True)
class Roots:
    teachers: Path
    results: Path

    @classmethod
    def resolve(cls, teachers: str | None = None, results: str | None = None) -> "Roots":
        return cls(teachers_root(teachers).resolve(), results_root(results).resolve())


@dataclass
class Job:
    stage: str
    spec: dict[str, Any]
    label: str
    needs: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return run_id(self.spec)


class Stage(Protocol):
    name: str
    # GPUs one job of the stage can use (None: any number, data-parallel; bench.stages.run_job).
    max_gpus: int | None

    def plan(self, grid: Grid, roots: Roots) -> list[Job]: ...
    def done(self, job: Job, grid: Grid, roots: Roots) -> bool: ...


def base_spec(pool: Pool) -> dict[str, Any] | None:
    """The base network a tiny pretrained pool's members are fine-tuned from (None: no base)."""
    if pool.base is None:
        return None
    return {"stage": "pretrain", "arch": pool.arch, "dataset": pool.base["dataset"], "scale": pool.scale,
            "recipe": dict(sorted(pool.base["recipe"].items()))}


def base_dir(roots: Roots, spec: dict[str, Any]) -> Path:
    """teachers/base-<arch>-<dataset>-<scale>-<spec hash>: found by its spec, shared by every pool and
    grid that starts from it."""
    return roots.teachers / f"base-{spec['arch']}-{spec['dataset']}-{spec['scale']}-{run_id(spec)[:6]}"


def teacher_spec(pool: Pool, k: int) -> dict[str, Any]:
    """Member k's job. Its recipe is what it trains by; where the data is (`data_root`, the `.beton`
    files: bench.train_config.LOCATION_KEYS) goes under `where`, outside its run id and folder, so
    data moved to another root finds the members trained on it."""
    recipe = {key: v for key, v in sorted(pool.recipe.items()) if key not in LOCATION_KEYS}
    where = {key: v for key, v in sorted(pool.recipe.items()) if key in LOCATION_KEYS}
    spec = {"stage": "teachers", "pool": pool.name, "arch": pool.arch, "dataset": pool.dataset,
            "scale": pool.scale, "init": pool.init, "member": k, "recipe": recipe}
    if where:
        spec[LOCATION] = where
    # Only where a pool has them, so the specs (and run ids, folders) of every other pool are unchanged.
    if pool.base is not None:
        spec["base"] = base_spec(pool)
    if pool.ranges:
        spec["ranges"] = pool.ranges
    return spec


def training_recipe(teacher: dict[str, Any]) -> dict[str, Any]:
    """A teacher spec's recipe with where its data is: what its training (and its students') reads."""
    return {**teacher["recipe"], **teacher.get(LOCATION, {})}


def member_dir(roots: Roots, spec: dict[str, Any]) -> Path:
    """teachers/<pool>-<recipe hash>/member-<k>: grids share a member exactly when its pool name
    and recipe (with its base and ranges, where it has them) agree, so its training is the same, and
    never train two recipes into one folder."""
    training = {k: spec[k] for k in ("base", "ranges") if k in spec}
    identity = {"recipe": spec["recipe"], **training} if training else spec["recipe"]
    return roots.teachers / f"{spec['pool']}-{run_id(identity)[:6]}" / f"member-{spec['member']}"


def record_path(roots: Roots, grid: Grid | str, job: Job) -> Path:
    return roots.results / (grid if isinstance(grid, str) else grid.name) / "records" / f"{job.run_id}.json"


# Where `python -m bench.pool` writes its members' records (under its default --grid): a member it
# trained, in the folder and with the run id a sweep plans, is done for that sweep too.
POOL_RECORDS = "teachers"


class PretrainStage:
    """One job per base network some pool of the grid is fine-tuned from (tiny scale's stand-in for
    timm's pretrained weights): a training run on the base's source task into `base_dir`."""

    name = "pretrain"
    max_gpus = None

    def plan(self, grid: Grid, roots: Roots) -> list[Job]:
        specs = {}
        for job in TeachersStage().plan(grid, roots):
            if "base" in job.spec:
                specs.setdefault(run_id(job.spec["base"]), job.spec["base"])
        return [Job(self.name, s, f"base-{s['arch']}-{s['dataset']}") for s in specs.values()]

    def done(self, job: Job, grid: Grid, roots: Roots) -> bool:
        return (base_dir(roots, job.spec) / "model.json").exists() and record_path(roots, grid, job).exists()


class TeachersStage:
    """One job per pool member: a training run into `member_dir` (teachers/<pool>-<hash>/member-<k>).
    Members run in stacks (`units`): several members of one pool in one task, trained as one
    network (bench.engine.stacked); each keeps its job, run id, folder and record."""

    name = "teachers"
    max_gpus = None

    def plan(self, grid: Grid, roots: Roots) -> list[Job]:
        """The members some later job needs (a pool declared larger than its grid uses trains only
        what is used: a zoo of 512 whose held-out part is its last 6 costs the members drawn)."""
        needed = {n for job in MethodsStage().plan(grid, roots)
                  for n in job.needs + [run_id(t) for t in job.spec.get("meta_train", {}).get("teachers", [])]}
        return [Job(self.name, spec, f"{p.name}/member-{k}", needs=[run_id(spec["base"])] if "base" in spec else [])
                for p in grid.pools for k in range(p.members)
                if run_id(spec := teacher_spec(p, k)) in needed]

    def units(self, jobs: list[Job], stack: int) -> list[list[Job]]:
        """Members of one pool and recipe, at most `stack` per unit, in plan order; one per unit
        where the architecture does not stack or the members start from pretrained weights."""
        groups: dict[str, list[Job]] = {}
        for job in jobs:
            # Members from given weights or with drawn hyperparameters train their own way: never stacked.
            alone = (stack <= 1 or not ARCH_SPECS[job.spec["arch"]].stacks or job.spec["init"] == "pretrained"
                     or "ranges" in job.spec)
            key = job.run_id if alone else run_id({k: v for k, v in job.spec.items() if k != "member"})
            groups.setdefault(key, []).append(job)
        return [g[i:i + max(1, stack)] for g in groups.values() for i in range(0, len(g), max(1, stack))]

    def done(self, job: Job, grid: Grid, roots: Roots) -> bool:
        return (member_dir(roots, job.spec) / "model.json").exists() and any(
            record_path(roots, g, job).exists() for g in (grid, POOL_RECORDS))


def part_members(pool: Pool, part: str, pool_size: int | None = None) -> tuple[int, ...]:
    """The members of a pool's part: held-out, or meta-train (its first `pool_size`; None: all)."""
    if part == "held_out":
        return pool.held_out_members
    return pool.meta_train_members[:pool_size]


def teacher_group(pool: Pool, n: int, seed: int, part: str = "meta_train", pool_size: int | None = None) -> list[int]:
    """Method seed s's group: N members of the pool's meta-train (its first `pool_size`) or held-out
    part in a random order whose first member is the group's anchor (the teacher a WeightFormer
    student starts from). Seeds 0, 1, ... draw distinct groups (as sets), so replicates are
    independent; a part too small for that many distinct groups is refused."""
    members = part_members(pool, part, pool_size)
    try:
        return list(distinct_groups(tuple(members), n, seed + 1)[seed])
    except BenchError as err:
        raise BenchError(f"pool {pool.name}, {part} part: {err}") from None


@lru_cache(maxsize=None)
def distinct_groups(members: tuple[int, ...], n: int, count: int) -> tuple[tuple[int, ...], ...]:
    """The groups of seeds 0..count-1: seed s's is the first draw of a generator seeded by s
    (torch's, so every run id depends on it alone) whose set no lower seed has drawn."""
    available = math.comb(len(members), n)
    if count > available:
        raise BenchError(f"{len(members)} members make only {available} distinct groups of {n}; seed "
                         f"{count - 1} would repeat one (identical replicates are no evidence): add members "
                         f"to the pool or use fewer seeds")
    groups: list[tuple[int, ...]] = []
    seen: set[frozenset[int]] = set()
    for seed in range(count):
        gen = torch.Generator().manual_seed(seed)
        while True:
            group = tuple(members[i] for i in torch.randperm(len(members), generator=gen)[:n].tolist())
            if frozenset(group) not in seen:
                break
        seen.add(frozenset(group))
        groups.append(group)
    return tuple(groups)


def meta_train_spec(pool: Pool, n: int, config: dict[str, Any],
                    members: Sequence[int] | None = None) -> dict[str, Any]:
    """A WeightFormer meta-trained for groups of n with `config` (the resolved
    bench.method_options.WFConfig) on `members` (default: the pool's whole meta-train part)."""
    members = list(pool.meta_train_members if members is None else members)
    return {"stage": "meta_train", "pool": pool.name, "n_teachers": n, "members": members,
            "teachers": [teacher_spec(pool, k) for k in members], "wf": config}


def partner_sets(pool: Pool, group: Sequence[int], count: int, seed: int, part: str,
                 pool_size: int | None = None) -> list[list[int]]:
    """`count` other groups with the same anchor (group[0]) and other partners from the same part,
    each a distinct set, drawn from a generator of the seed: the students WeightFormer predicts for
    them, set against this group's, say whether its prediction depends on the partners at all."""
    anchor, n = group[0], len(group)
    others = [k for k in part_members(pool, part, pool_size) if k != anchor]
    if math.comb(len(others), n - 1) - 1 < count:
        raise BenchError(f"pool {pool.name}, {part} part: {len(others) + 1} members leave no {count} other "
                         f"partner sets for anchor {anchor}; lower partner_sets")
    gen = torch.Generator().manual_seed(1_000_003 + seed)
    seen, sets = {frozenset(group[1:])}, []
    while len(sets) < count:
        pick = [others[i] for i in torch.randperm(len(others), generator=gen)[:n - 1].tolist()]
        if frozenset(pick) not in seen:
            seen.add(frozenset(pick))
            sets.append([anchor, *pick])
    return sets


def meta_train_members(pool: Pool, options: dict[str, Any], group: Sequence[int]) -> list[int]:
    """What a WeightFormer method's meta-training draws its groups from: the job's own group
    (`fit_group`: the capacity check, one WeightFormer per seed), the first `pool_size` members of
    the meta-train part, or all of it."""
    if options.get("fit_group"):
        return list(group)
    return list(part_members(pool, "meta_train", options.get("pool_size")))


def weightformer_dir(roots: Roots, spec: dict[str, Any]) -> Path:
    """teachers/<pool>-<recipe hash>/weightformer-<run id>: beside the members it was meta-trained on."""
    return member_dir(roots, spec["teachers"][0]).parent / f"weightformer-{run_id(spec)}"


class MethodsStage:
    """One job per (pool, method variant, seed): a table cell's run on one group of N teachers.
    A method with a meta-train config (WeightFormer) also names the meta_train job it needs."""

    name = "methods"
    max_gpus = None

    def plan(self, grid: Grid, roots: Roots) -> list[Job]:
        jobs = []
        for p in grid.pools:
            for m in grid.methods:
                if not method_applies(m.options, p):
                    continue
                options = for_arch(m.options, p.arch)
                n = options.get("n_teachers", grid.n_teachers)
                part = options.get("teacher_part", grid.teacher_part)
                config = meta_train_config(m.name, options, p.scale)
                for seed in grid.seeds:
                    members = teacher_group(p, n, seed, part, options.get("pool_size"))
                    spec = {"stage": "methods", "method": m.name, "variant": m.variant,
                            "options": dict(sorted(options.items())), "seed": seed, "n_teachers": n,
                            "teacher_part": part, "members": members,
                            "teachers": [teacher_spec(p, k) for k in members]}
                    needs = [run_id(t) for t in spec["teachers"]]
                    count = options.get("partner_sets", 0) if config is not None else 0
                    if count:  # only where asked: the spec (so the run id) of every other job is unchanged
                        spec["partners"] = [[teacher_spec(p, k) for k in ks] for ks in partner_sets(
                            p, members, count, seed, part, options.get("pool_size"))]
                        needs += [run_id(t) for ks in spec["partners"] for t in ks[1:]]
                    if config is not None:
                        meta = meta_train_spec(p, n, config, meta_train_members(p, options, members))
                        spec["meta_train"] = meta
                        needs.append(run_id(meta))
                    jobs.append(Job(self.name, spec, f"{p.name}/{m.variant}/seed-{seed}", needs=needs))
        return jobs

    def done(self, job: Job, grid: Grid, roots: Roots) -> bool:
        rec = record_path(roots, grid, job)
        return rec.exists() and (read_record(rec) or {}).get("status") == "done"


class MetaTrainStage:
    """One job per WeightFormer the methods stage needs: (pool, N, config), shared by every method
    variant and seed that uses it. Written to `weightformer_dir`."""

    name = "meta_train"
    max_gpus = 1  # the meta-training loop has no data-parallel path (bench.stages refuses several ranks)

    def plan(self, grid: Grid, roots: Roots) -> list[Job]:
        specs = {}
        for job in MethodsStage().plan(grid, roots):
            if "meta_train" in job.spec:
                spec = job.spec["meta_train"]
                specs.setdefault(run_id(spec), spec)
        return [Job(self.name, s, f"{s['pool']}/weightformer-N{s['n_teachers']}-{i}",
                    needs=[run_id(t) for t in s["teachers"]]) for i, s in enumerate(specs.values())]

    def done(self, job: Job, grid: Grid, roots: Roots) -> bool:
        return (weightformer_dir(roots, job.spec) / "model.json").exists() and record_path(roots, grid, job).exists()


def units(stage: str, jobs: list[Job], stack: int = 1) -> list[list[Job]]:
    """The tasks that run `jobs` of `stage`: jobs grouped into stacks where the stage has them
    (teachers), else one job each. A unit of several runs as `unit_spec`."""
    group = getattr(STAGES[stage], "units", None)
    return group(jobs, stack) if group is not None else [[j] for j in jobs]


def unit_spec(unit: list[Job]) -> dict[str, Any]:
    """What one task runs: the job's spec, or for a stack {"stage", "stack": [the members' specs]}."""
    return unit[0].spec if len(unit) == 1 else {"stage": unit[0].stage, "stack": [j.spec for j in unit]}


STAGES: dict[str, Stage] = {"pretrain": PretrainStage(), "teachers": TeachersStage(), "meta_train": MetaTrainStage(), "methods": MethodsStage()}
