"""The `.beton` files a grid's recipes name (`beton_train`, `beton_test`), written where missing by
bench.data.beton's writer, which renames a finished file into place: a file on disk is whole."""
from __future__ import annotations

from bench.data import SPLIT_SIZES, dataset_spec
from bench.data import beton
from bench.data.optional_ffcv import INSTALL_HINT, ffcv_available
from bench.errors import BenchError
from bench.prepare import Step, mib
from bench.prepare.needs import BetonUse


def estimate(use: BetonUse) -> str:
    """In-memory sets are stored raw, so their size is their pixels; files are re-encoded as JPEG,
    whose size depends on the images and is not guessed."""
    spec = dataset_spec(use.dataset)
    if spec.in_memory:
        pixels = SPLIT_SIZES[use.dataset][use.split] * 3 * spec.image_size ** 2  # stored as RGB
        return f"disk ~{mib(pixels)} (raw pixels)"
    return "disk: about the size of its JPEGs, re-encoded (not estimated)"


def write(use: BetonUse) -> str:
    out = beton.write_beton(use.dataset, use.root, use.split, use.path)
    return f"wrote {out} ({mib(out.stat().st_size)})"


def step(use: BetonUse) -> Step:
    """Done where the file is there (the writer renames only a whole file into place); else the
    write from the pool's data root. Where ffcv does not import here (it often cannot be built on a
    login node) the step is skipped, not refused: the data and the weights are still prepared, and
    the plan says so. Importing ffcv costs seconds: it is tried only for a missing file."""
    label = f"{use.path} ({use.dataset} {use.split}, pool{'s' if len(use.pools) > 1 else ''} {', '.join(use.pools)})"
    if use.path.is_file():
        return Step("betons", label, f"present ({mib(use.path.stat().st_size)}), disk 0",
                    skipped=f"done already ({use.path} present)")
    if use.root is None and dataset_spec(use.dataset).needs_root:
        raise BenchError(f"{use.path} is missing and is written from {use.dataset}, which needs a data root "
                         f"(--data-root, BENCH_DATA or the pool recipe's data_root)")
    if not ffcv_available():
        return Step("betons", label, f"missing, and ffcv does not import here: not written ({INSTALL_HINT})",
                    skipped="ffcv does not import here")
    source = "" if use.root is None else f" from {use.root}"
    return Step("betons", label, f"missing: write it{source}; {estimate(use)}", lambda: write(use))
