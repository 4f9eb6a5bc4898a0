"""What a method is (`Method`) and what one run of it is given (`MethodJob`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generic, Protocol, TypeVar

import bench.method_options

if TYPE_CHECKING:
    import torch

O = TypeVar("O", bound=bench.method_options.Options)


@dataclass
class MethodJob(Generic[O]):
    """What a method needs: the teachers (checkpoint paths and member ids) and its settings."""

    method: str
    dataset: str
    arch: str
    seed: int
    teachers: list[Path]
    members: list[int]
    options: O  # the method's typed options (bench.method_options), built from the job spec's mapping
    data_root: str | None = None
    device: str = "auto"
    scale: str = "tiny"
    recipe: dict[str, Any] = field(default_factory=dict)  # the pool's training overrides
    workdir: Path | None = None  # a resumable folder for a student the method trains
    pool: str | None = None  # the teachers' pool (a WeightFormer is meta-trained on one)
    init: str = "scratch"  # where the pool's members started (bench.grid.INITS): a student may start there too
    weightformer: Path | None = None  # the meta-trained WeightFormer a weightformer method uses
    base: Path | None = None  # the base network a tiny pretrained pool's members were fine-tuned from
    base_id: str | None = None  # its run id (a student started from it names it in its identity)
    # Other groups with the same anchor (checkpoint paths; bench.jobs.partner_sets) and their member ids.
    partners: list[list[Path]] = field(default_factory=list)
    partner_members: list[list[int]] = field(default_factory=list)

    def torch_device(self) -> torch.device:
        from bench.engine import pick_device

        return pick_device(self.device)


class Method(Protocol):
    """One row of the table: its options' schema, whether the sweep meta-trains a WeightFormer
    for it first, and `run`, returning the record fields it measured (metrics, costs)."""

    name: str
    Options: type[bench.method_options.Options]
    needs_meta_train: bool

    def run(self, job: MethodJob[Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class LoadedMethod:
    """A `Method` whose code is imported: its registry entry and its module's `run`."""

    name: str
    Options: type[bench.method_options.Options]
    needs_meta_train: bool
    run: Callable[[MethodJob[Any]], dict[str, Any]]
