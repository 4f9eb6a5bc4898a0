"""timm's pretrained weights in the cache the jobs read: each loaded once, by the jobs' own call
(bench.models.load_pretrained), on a machine with the hub; the compute nodes then load them with
HF_HUB_OFFLINE=1 from the same cache (HF_HOME / HF_HUB_CACHE; TORCH_HOME for weights timm fetches
by URL), or from the folder BENCH_PRETRAINED names, where it is set.

Whether a weight is there is asked of the cache itself, file by file, as timm asks offline: the
repository's safetensors file first, then the file its config names.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from bench import models
from bench.errors import BenchError
from bench.prepare import Step, mib
from bench.prepare.needs import WeightUse

OFFLINE = "HF_HUB_OFFLINE=1"


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def torch_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_file(name: str) -> Path | None:
    """The file timm would load weights `name` from offline, if it is cached; else None."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg
    from timm.models._hub import HF_WEIGHTS_NAME, _get_safe_alternatives

    cfg = get_pretrained_cfg(name)
    if cfg.hf_hub_id:  # timm prefers the hub wherever a config names a repository
        repo, _, revision = cfg.hf_hub_id.partition("@")
        filename = cfg.hf_hub_filename or HF_WEIGHTS_NAME
        order = [filename] if filename.endswith(".safetensors") else [*_get_safe_alternatives(filename), filename]
        for candidate in order:
            found = try_to_load_from_cache(repo, candidate, cache_dir=hub_cache(), revision=revision or None)
            if isinstance(found, str):
                return Path(found)
        return None
    if cfg.url:
        file = torch_checkpoints() / os.path.basename(urlparse(cfg.url).path)
        return file if file.is_file() else None
    return None


def estimated_bytes(name: str) -> int:
    """The size of weights `name` stored at 32 bits: their network's state dict at the checkpoint's
    own class count, built on the meta device (no memory, no download)."""
    import timm
    import torch
    from timm.models import get_pretrained_cfg

    with torch.device("meta"):
        net = timm.create_model(name.split(".")[0], pretrained=False, num_classes=get_pretrained_cfg(name).num_classes)
    return sum(t.numel() * 4 for t in net.state_dict().values())


def fetch(use: WeightUse) -> str:
    models.load_pretrained(use.arch, use.num_classes, use.image_size, "paper", 3, weights=use.name)
    file = cached_file(use.name)
    if file is None:
        raise BenchError(f"timm loaded {use.name} but no copy of it is in {hub_cache()} or {torch_checkpoints()}: "
                         f"jobs with {OFFLINE} would not find it; is timm's cache set elsewhere (HF_HUB_CACHE)?")
    return f"fetched: {file} ({mib(file.stat().st_size)})"


def step(use: WeightUse) -> Step:
    """Nothing to fetch where the jobs will find the weights (BENCH_PRETRAINED's folder, or the
    cache); else one load through timm, refused while this machine is told to stay offline."""
    label = f"{use.name} (pool{'s' if len(use.pools) > 1 else ''} {', '.join(use.pools)})"
    folder = os.environ.get(models.PRETRAINED_ENV)
    if folder:  # the jobs read this folder instead of the hub (bench.models.load_pretrained)
        file = Path(folder) / f"{use.name}.safetensors"
        if not file.is_file():
            raise BenchError(f"{models.PRETRAINED_ENV}={folder} holds no {file.name}, and jobs read pretrained "
                             f"weights from there: put timm's {use.name} weights there, or unset "
                             f"{models.PRETRAINED_ENV} to fetch them into the hub cache")
        return Step("weights", label, f"{file} present ({mib(file.stat().st_size)}), read via "
                                      f"{models.PRETRAINED_ENV}: disk 0", skipped=f"done already ({file} present)")
    file = cached_file(use.name)
    if file is not None:
        return Step("weights", label, f"cached: {file} ({mib(file.stat().st_size)}), disk 0",
                    skipped="done already (cached)")
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise BenchError(f"{use.name} is not in {hub_cache()} and HF_HUB_OFFLINE is set here: run this on a "
                         f"machine with internet, without HF_HUB_OFFLINE")
    size = estimated_bytes(use.name)
    return Step("weights", label, f"not cached: fetch into {hub_cache()}: disk ~{mib(size)} "
                                  f"({size / 4e6:,.1f}M values at 32 bits); time: network-bound",
                lambda: fetch(use))


def summary(uses: tuple[WeightUse, ...]) -> str:
    """Where the grid's weights are, their size, and how the jobs read them offline."""
    if os.environ.get(models.PRETRAINED_ENV):
        return f"weights: jobs read {models.PRETRAINED_ENV}={os.environ[models.PRETRAINED_ENV]}; set it for them too"
    files = [f for f in map(cached_file, (u.name for u in uses)) if f is not None]
    total = sum(f.stat().st_size for f in files)
    return (f"weights: {len(files)} of {len(uses)} in {hub_cache()} ({mib(total)}); run the jobs with {OFFLINE} "
            f"and this HF_HOME (or HF_HUB_CACHE) on a file system the compute nodes share")
