"""The rows of the table: a registry of methods by name, and the code of each loaded on demand.

Light on purpose (no torch, no training code, no method's module): the grid loader, the sweep's
plan and the report read a method's options schema (bench.method_options) and whether it needs a
meta-trained WeightFormer from `METHODS`; `load_method` imports the method's module, whose
`run(job: MethodJob) -> dict` returns the record fields it measured, only when a job runs it.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bench.errors import choose
from bench.methods.base import LoadedMethod, Method
from bench.method_options import (COMMON_OPTIONS, AlignedSoupOptions, DistillOptions, GreedySoupOptions, LearnedSoupOptions,
                           NoOptions, Options, SoupOptions, WeightFormerFTOptions, WeightFormerOptions)


@dataclass(frozen=True)
class MethodEntry:
    """A registry row: the method's name, its options schema and its module."""

    name: str
    Options: type[Options]
    module: str  # the implementation, imported by `load_method`

    @property
    def needs_meta_train(self) -> bool:
        """Whether the sweep meta-trains a WeightFormer for it (its options include one's config)."""
        return issubclass(self.Options, WeightFormerOptions)


METHODS: dict[str, MethodEntry] = {e.name: e for e in (
    MethodEntry("single", NoOptions, "bench.methods.single"),
    MethodEntry("ensemble", NoOptions, "bench.methods.ensemble"),
    MethodEntry("kd", DistillOptions, "bench.methods.kd"),
    MethodEntry("self_distill", DistillOptions, "bench.methods.self_distill"),
    MethodEntry("soup", SoupOptions, "bench.methods.soup"),
    MethodEntry("aligned_soup", AlignedSoupOptions, "bench.methods.aligned_soup"),
    MethodEntry("greedy_soup", GreedySoupOptions, "bench.methods.greedy_soup"),
    MethodEntry("learned_soup", LearnedSoupOptions, "bench.methods.learned_soup"),
    MethodEntry("weightformer", WeightFormerOptions, "bench.methods.weightformer"),
    MethodEntry("weightformer_ft", WeightFormerFTOptions, "bench.methods.weightformer_ft"),
)}


def load_method(name: str) -> Method:
    """The method `name`, its module imported."""
    entry = METHODS[choose("method", name, METHODS)]
    return LoadedMethod(entry.name, entry.Options, entry.needs_meta_train, importlib.import_module(entry.module).run)


def method_options(name: str, raw: Mapping[str, Any], where: str) -> Options:
    """The method's typed options from a grid's (or a job spec's) mapping, the common options
    (bench.method_options.COMMON_OPTIONS) left out: they choose the teachers, not the method's work."""
    entry = METHODS[choose("method", name, METHODS)]
    return entry.Options.from_mapping({k: v for k, v in raw.items() if k not in COMMON_OPTIONS}, where)


def meta_train_config(name: str, options: Mapping[str, Any], scale: str) -> dict[str, Any] | None:
    """The resolved WeightFormer config (a WFConfig as a dict: what its meta-training depends on)
    for a method that needs one, else None."""
    typed = method_options(name, options, f"methods.{name}")
    return typed.wf_config(scale).identity() if isinstance(typed, WeightFormerOptions) else None
