"""Data-parallel training: 2 CPU processes on the gloo backend, compared with one process.

The workers are subprocesses (MASTER_ADDR=127.0.0.1, a free port, RANK / WORLD_SIZE /
LOCAL_RANK in their environment), one torch thread each, started once for the module.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.data import load_dataset
from bench.data.loaders import make_loader
from bench.data.memory import DeviceLoader, channel_stats
from bench.errors import BenchError
from bench.models import ARCH_SPECS, build_model
from bench.engine import load_model, predict, train
from bench.engine.optim import make_optimizer
from bench.engine.schedule import lr_factor
from bench.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
VGG = dict(arch="vgg11", dataset="digits", scale="tiny", seed=0, epochs=2)
VIT = dict(VGG, arch="vit_b32")
DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")

# Runs `payload["runs"]` one after the other in one process group; prints a RESULT line each.
TRAIN_WORKER = r"""
import json, sys
import torch, torch.distributed as dist, torch.nn.functional as F
torch.set_num_threads(1)
from bench.engine import train
from bench.train_config import TrainConfig

class Interrupted(Exception):
    pass

dist.init_process_group("gloo")
try:
    for run in json.loads(sys.argv[1])["runs"]:
        kw = {}
        if run.get("stop_at_step") is not None:  # dies at that step, as a killed job would
            calls = [0]
            def criterion(logits, x, y, idx, views, stop=run["stop_at_step"]):
                if calls[0] == stop:
                    raise Interrupted(f"stopped at step {stop}")
                calls[0] += 1
                return F.cross_entropy(logits, y)
            kw["criterion"] = criterion
        try:
            result = {"meta": train(TrainConfig(**run["cfg"]), run["out"], progress=False, **kw)}
        except Exception as err:
            result = {"error": f"{type(err).__name__}: {err}"}
        print("RESULT " + json.dumps({"name": run["name"], "rank": dist.get_rank(), **result}), flush=True)
        dist.barrier()  # the next run starts once this one has ended everywhere, as a new job would
finally:
    dist.destroy_process_group()
"""

# bench.stages.run_job in a faked 2-task SLURM job, with a runner that reports what it sees.
RUN_JOB_WORKER = r"""
import json, os, sys
import torch, torch.distributed as dist
from bench import stages

def probe(spec, grid, roots):
    t = torch.tensor([dist.get_rank() + 1.0])
    dist.all_reduce(t)
    return {"rank": dist.get_rank(), "world": dist.get_world_size(), "backend": dist.get_backend(),
            "sum": t.item(), "env": {k: os.environ.get(k) for k in
                                     ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}}

stages.RUNNERS["probe"] = probe
root = sys.argv[1]
out = stages.run_job({"stage": "probe"}, "g", stages.Roots(stages.Path(root), stages.Path(root)), cpus=1)
print("RESULT " + json.dumps({**out, "initialized_after": dist.is_initialized()}), flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(code: str, arg: str, envs: list[dict[str, str]], timeout: float = 240) -> list[dict]:
    """Run `python -c code arg` once per env (all at once); the RESULT lines of all of them."""
    base = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    base.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + base.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", code, arg], env={**base, **env}, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for env in envs]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    return [json.loads(line[len("RESULT "):]) for out, _ in outs for line in out.splitlines()
            if line.startswith("RESULT ")]


def rank_envs(world: int) -> list[dict[str, str]]:
    port = str(free_port())
    return [dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(r), WORLD_SIZE=str(world),
                 LOCAL_RANK=str(r)) for r in range(world)]


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: same kernels, same reduction order
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Both ranks' results of: an indivisible batch size; a run stopped at the first step of its
    second epoch, then resumed; vgg11 and vit_b32 uninterrupted (one folder each)."""
    tmp = tmp_path_factory.mktemp("ddp")
    steps = len(make_loader("digits", "train", batch_size=64, train=True, image_size=16))
    runs = [dict(name="odd", cfg=dict(VGG, batch_size=63), out=str(tmp / "odd")),
            dict(name="stopped", cfg=VGG, out=str(tmp / "resumed"), stop_at_step=steps),
            dict(name="resumed", cfg=VGG, out=str(tmp / "resumed")),
            dict(name="vgg", cfg=VGG, out=str(tmp / "vgg")),
            dict(name="vit", cfg=VIT, out=str(tmp / "vit"))]
    results = launch(TRAIN_WORKER, json.dumps({"runs": runs}), rank_envs(2))
    by_name = {r["name"]: {} for r in runs}
    for r in results:
        by_name[r["name"]][r["rank"]] = r
    assert all(sorted(v) == [0, 1] for v in by_name.values()), results
    return tmp, by_name


# --- the device-resident loader's shards ---------------------------------------------------

def test_rank_shards_together_are_the_single_process_batches():
    d = load_dataset("digits", split="train")
    mean, std = channel_stats(d.images)
    kw = dict(batch_size=64, seed=3, mean=mean, std=std, channels=3)
    for train_, augment, world in [(True, "translate2", 2), (False, "none", 2), (False, "none", 4)]:
        whole = DeviceLoader(d, train=train_, augment=augment, **kw)
        parts = [DeviceLoader(d, train=train_, augment=augment, rank=r, world_size=world, **kw)
                 for r in range(world)]
        for loader in (whole, *parts):
            loader.set_epoch(2)
        assert all(len(p) == len(whole) for p in parts)
        for (x, y, i, v), *shards in zip(whole, *parts):
            if len(y) == 64:
                assert all(len(sy) == 64 // world for _, sy, _, _ in shards)
            assert torch.equal(torch.cat([sx for sx, _, _, _ in shards]), x)  # same draws, same pixels
            assert torch.equal(torch.cat([sy for _, sy, _, _ in shards]), y)
            assert torch.equal(torch.cat([si for _, _, si, _ in shards]), i)  # and the same sample indices
            assert torch.equal(torch.cat([sv for _, _, _, sv in shards]), v)  # and views
    with pytest.raises(BenchError, match="not divisible by the world size 3"):
        DeviceLoader(d, train=True, rank=0, world_size=3, **kw)


# --- two ranks ------------------------------------------------------------------------------

def test_indivisible_global_batch_size_is_refused(two_ranks):
    tmp, runs = two_ranks
    for r in runs["odd"].values():
        assert r["error"].startswith("BenchError: global batch size 63 is not divisible by the world size 2")
    assert not (tmp / "odd").exists()  # refused before anything was written


def test_two_ranks_write_one_run_folder(two_ranks):
    tmp, runs = two_ranks
    for name in ("vgg", "vit", "resumed"):
        assert runs[name][0]["meta"] == runs[name][1]["meta"]  # every rank returns rank 0's sidecar
        folder = tmp / name
        names = sorted(p.name for p in folder.iterdir())
        assert [n for n in names if not n.startswith("predictions-")] == [
            "config.json", "log.jsonl", "model.json", "model.safetensors", "tensorboard"]  # no checkpoint, no temp
        assert len(names) == 5 + 4  # rank 0's final evaluation kept: val and test, weights and sidecar each
        assert len(list((folder / "tensorboard").iterdir())) == 1  # one writer: rank 0's events
        log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        assert [row["epoch"] for row in log] == [1, 2]
        meta = runs[name][0]["meta"]
        assert meta["world_size"] == 2 and meta["metrics"]["top1"] == log[-1]["top1"]
        # The bare model's keys (no "module."), and it reproduces the recorded accuracy.
        model, _ = load_model(folder / "model", arch=meta["arch"])
        assert set(model.state_dict()) == set(build_model(meta["arch"], 10, 16, "tiny").state_dict())
        loader = make_loader("digits", "test", batch_size=64, train=False, image_size=16)
        probs, labels = predict(model, loader, torch.device("cpu"))
        assert (probs.argmax(1) == labels).float().mean().item() * 100 == pytest.approx(meta["metrics"]["top1"])


def test_stopped_two_rank_run_resumes_to_the_same_bits(two_ranks):
    tmp, runs = two_ranks
    assert all("Interrupted" in r["error"] for r in runs["stopped"].values())
    # Both ranks read the epoch-1 checkpoint and finished epoch 2 as the uninterrupted run did.
    assert (tmp / "resumed" / "model.safetensors").read_bytes() == (tmp / "vgg" / "model.safetensors").read_bytes()
    assert runs["resumed"][0]["meta"]["metrics"] == runs["vgg"][0]["meta"]["metrics"] | {
        "train_s": runs["resumed"][0]["meta"]["metrics"]["train_s"]}


def shard_emulation(cfg: TrainConfig, world: int) -> nn.Module:
    """What DDP with per-rank BatchNorm computes, in one process: every global batch split into
    `world` shards, each through the model on its own (BatchNorm over the shard), the gradients
    averaged; the running statistics kept are rank 0's (DDP broadcasts them from rank 0 before
    every forward, so the other ranks' updates are dropped)."""
    cfg = cfg.resolved()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, 10, cfg.image_size, cfg.scale)
    if ARCH_SPECS[cfg.arch].channels_last:  # laid out as train() lays it out: kernels round by layout
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    loader = make_loader(cfg.dataset, "train", batch_size=cfg.batch_size, train=True, seed=cfg.seed,
                         image_size=cfg.image_size)
    steps = len(loader)
    total, warmup = cfg.epochs * steps, round(cfg.warmup_epochs * steps)
    buffers = list(model.buffers())
    for epoch in range(cfg.epochs):
        model.train()
        loader.set_epoch(epoch)
        for i, (x, y, *_) in enumerate(loader):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(epoch * steps + i, total, warmup, cfg.schedule)
            opt.zero_grad(set_to_none=True)
            start = [b.clone() for b in buffers]
            for r in reversed(range(world)):  # rank 0 last: its running statistics stay
                for b, s in zip(buffers, start):
                    b.copy_(s)
                loss = F.cross_entropy(model(x.tensor_split(world)[r]), y.tensor_split(world)[r])
                (loss / world).backward()
            opt.step()
    return model


def gradient_free(model: nn.Module) -> dict[str, slice]:
    """Entries the training loss does not depend on: the bias of a convolution that feeds a
    BatchNorm (BN subtracts the batch mean) with that BN's running mean (which follows the
    bias), and the key part of an attention's qkv bias (the softmax over keys ignores a score
    added to every key). Their gradients are pure rounding noise, which AdamW (dividing by the
    root of its second moment) turns into lr-sized random steps: they wander apart at the
    slightest rounding difference without changing what the network computes."""
    free = {}
    for prefix, module in model.named_modules():
        kids = list(module.named_children()) if isinstance(module, nn.Sequential) else []
        for (a, first), (b, second) in zip(kids, kids[1:]):
            if isinstance(first, nn.Conv2d) and first.bias is not None and isinstance(second, nn.BatchNorm2d):
                free[f"{prefix}.{a}.bias"] = free[f"{prefix}.{b}.running_mean"] = slice(None)
        qkv = getattr(module, "qkv", None)
        if isinstance(qkv, nn.Linear) and qkv.bias is not None:
            dim = qkv.out_features // 3
            free[f"{prefix}.qkv.bias"] = slice(dim, 2 * dim)
    return free


def relative_gaps(a: dict, b: dict, ignore: dict[str, slice]) -> dict[str, float]:
    """Per tensor, |a - b| / |a| over the entries the loss depends on."""
    gaps = {}
    for k in a:
        if not a[k].is_floating_point() or ignore.get(k) == slice(None):
            continue
        x, y = a[k].double().clone(), b[k].double().clone()
        if k in ignore:
            x[ignore[k]] = y[ignore[k]] = 0
        gaps[k] = ((x - y).norm() / x.norm().clamp_min(1e-12)).item()
    return gaps


def test_two_ranks_match_the_per_shard_single_process_computation(two_ranks, one_thread):
    """vgg11 has BatchNorm: with per-rank BN (DDP's default) two ranks normalise each half of the
    global batch on its own, so they compute what `shard_emulation` computes in one process.
    The only other difference is the order of the gradient sums (DDP's all-reduce adds the
    ranks' bucket-flattened gradients; the emulation accumulates shard after shard), hence a
    tolerance; with two ranks and one thread each it is in fact bit-identical here."""
    tmp, runs = two_ranks
    ddp, _ = load_model(tmp / "vgg" / "model")
    emulated = shard_emulation(TrainConfig(**VGG), world=2)
    a, b = emulated.state_dict(), ddp.state_dict()
    gaps = relative_gaps(a, b, gradient_free(emulated))
    assert max(gaps.values()) < 1e-4, sorted(gaps.items(), key=lambda kv: -kv[1])[:5]
    loader = make_loader("digits", "test", batch_size=64, train=False, image_size=16)
    (pa, labels), (pb, _) = predict(emulated, loader, torch.device("cpu")), predict(ddp, loader, torch.device("cpu"))
    assert (pa - pb).abs().max() < 1e-3
    top1 = lambda p: (p.argmax(1) == labels).float().mean().item() * 100
    assert abs(top1(pa) - runs["vgg"][0]["meta"]["metrics"]["top1"]) <= 1.0

    # Against a plain single-process run of the same seed and global batch size the BatchNorm
    # statistics differ (64 images per normalisation instead of 32, running statistics of all
    # batches instead of rank 0's halves): a different, equally valid run, not a rounding
    # difference. After 2 epochs (~80 % top-1, still climbing fast) the gap is a few points
    # here (78.0 vs 80.4); SyncBatchNorm would remove it, but it needs GPUs.
    single = train(TrainConfig(**VGG), tmp / "vgg-single", progress=False)
    assert abs(single["metrics"]["top1"] - runs["vgg"][0]["meta"]["metrics"]["top1"]) <= 5.0


def test_two_ranks_match_one_process_without_batchnorm(two_ranks, one_thread):
    """vit_b32 normalises each image on its own (LayerNorm), so 2 ranks x 32 images compute the
    single process's 64-image step up to the order of the sums: the single process reduces the
    64 per-image gradients in one pass, DDP two halves that the all-reduce then adds. That is
    ~1e-7 relative per step; AdamW over 42 steps leaves < 1e-5 (hence the 1e-3 tolerance),
    except in the entries the loss does not depend on (`gradient_free`)."""
    tmp, runs = two_ranks
    single = train(TrainConfig(**VIT), tmp / "vit-single", progress=False)
    model = load_model(tmp / "vit-single" / "model")[0]
    a, b = model.state_dict(), load_model(tmp / "vit" / "model")[0].state_dict()
    gaps = relative_gaps(a, b, gradient_free(model))
    assert max(gaps.values()) < 1e-3, sorted(gaps.items(), key=lambda kv: -kv[1])[:5]
    assert abs(single["metrics"]["top1"] - runs["vit"][0]["meta"]["metrics"]["top1"]) <= 1.0


# --- run_job --------------------------------------------------------------------------------

def test_run_job_joins_a_process_group_per_slurm_task(tmp_path):
    """A faked 2-task SLURM job: run_job exports the rendezvous from submitit's job environment,
    initialises gloo (no CUDA here), runs the job, and destroys the group."""
    port = str(free_port())
    slurm = dict(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="4242", SLURM_NTASKS="2", SLURM_JOB_NUM_NODES="1",
                 SLURM_NODEID="0", SLURM_JOB_NODELIST="localhost", MASTER_PORT=port)
    envs = [dict(slurm, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)) for r in range(2)]
    results = sorted(launch(RUN_JOB_WORKER, str(tmp_path), envs, timeout=120), key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == [0, 1]
    for r in results:
        assert r["world"] == 2 and r["backend"] == "gloo" and r["sum"] == 3.0
        assert r["env"] == {"MASTER_ADDR": "localhost", "MASTER_PORT": port, "RANK": str(r["rank"]),
                            "WORLD_SIZE": "2", "LOCAL_RANK": str(r["rank"])}
        assert r["initialized_after"] is False


@pytest.mark.parametrize("slurm_env", [{}, {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}])
def test_single_task_jobs_stay_single_process(tmp_path, monkeypatch, slurm_env):
    from bench import stages

    for k in ("SUBMITIT_EXECUTOR", *DIST_VARS):
        monkeypatch.delenv(k, raising=False)
    for k, v in slurm_env.items():
        monkeypatch.setenv(k, v)
    seen = {}
    from bench import jobs

    # A stage is a planner (its done-check) and a runner: a single-task job checks done under its lock.
    monkeypatch.setitem(jobs.STAGES, "probe", type("Probe", (), {"done": lambda self, job, grid, roots: False})())
    monkeypatch.setitem(stages.RUNNERS, "probe", lambda spec, grid, roots: seen.update(
        initialized=torch.distributed.is_initialized(), master=os.environ.get("MASTER_ADDR")) or seen)
    stages.run_job({"stage": "probe"}, "g", stages.Roots(tmp_path, tmp_path), cpus=torch.get_num_threads())
    assert seen == {"initialized": False, "master": None}
