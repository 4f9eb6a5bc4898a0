"""What a sweep prints before it runs: the plan per stage with its resources (`print_plan`) and,
for a dry run, the teacher pools (`print_pools`), the GPU-hours estimate (`print_estimate`) and
the disk it needs (`print_disk`)."""
from __future__ import annotations

from bench.estimate import Throughput, job_disk, job_flops, job_net, net_of, training_config
from bench.jobs import Job
from bench.sweep.plan import Plan
from bench.sweep.resources import Resources


def print_plan(plan: Plan, cluster: str, resources: dict[str, Resources]) -> None:
    print(f"grid {plan.grid.name} ({plan.grid.path}), scale {plan.grid.scale}, cluster {cluster}")
    tasks = plan.units(resources)
    for stage, jobs in plan.stages.items():
        todo = len(plan.todo[stage])
        r = resources[stage]
        stacked = f" in {len(tasks[stage])} tasks" if len(tasks[stage]) != todo else ""
        print(f"  {stage:<10} {len(jobs):>4} jobs, {todo:>4} to run{stacked}, {len(jobs) - todo:>4} done | "
              f"cpus {r.cpus} mem {r.mem_gb} GB gpus {r.gpus} time {r.timeout_min} min"
              + (f" partition {r.partition}" if r.partition else "")
              + (f" array at most {r.array_parallelism}" if r.array_parallelism else "")
              + (f" packs of <= {r.pack_min:g} min" if r.pack_min else "")
              + "".join(f" --{k}" if v is True else f" --{k}={v}" for k, v in r.sbatch.items()))


def print_pools(plan: Plan) -> None:
    """The teacher pools the plan trains: what each member is, the resolution its images are
    trained at (CIFAR resized to it), and one image's forward FLOPs at that resolution."""
    firsts: dict[str, Job] = {}
    for job in plan.stages["teachers"]:
        firsts.setdefault(job.spec["pool"], job)
    rows = []
    for p in plan.grid.pools:
        cfg, net = training_config(firsts[p.name].spec), net_of(firsts[p.name].spec)
        rows.append((p.name, p.arch, p.dataset, p.init, str(p.members), str(p.held_out), str(cfg.epochs),
                     str(cfg.image_size), f"{net.forward / 1e9:.3g}"))
    head = ("pool", "arch", "dataset", "init", "members", "held out", "epochs", "px", "GFLOP/img")
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    print("pools (px: the training resolution; GFLOP/img: one image's forward pass at it):")
    for r in (head, *rows):
        print("  " + "  ".join(v.ljust(w) if i < 4 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))


def print_estimate(plan: Plan, resources: dict[str, Resources], throughput: Throughput) -> None:
    """GPU-hours per stage and in total, from FLOPs counted from the architectures and the grid at
    each network's throughput (measured by make gpu-check, else flat), beside each stage's largest
    job and its time limit."""
    nets = {job_net(s, j.spec) for s, jobs in plan.stages.items() for j in jobs}
    shapes = sorted((n.arch, n.image_size) for n in nets if (n.arch, n.scale, n.image_size) in throughput.measured)
    rate = f"at {throughput.flat:g} TFLOP/s per GPU (--gpu-tflops)"
    if shapes:
        named = ", ".join(f"{a} at {px} px" for a, px in shapes)
        rate = f"at the training throughput {throughput.source} measured for {named}; {rate} for the rest"
    else:
        rate += "; no gpu-check result (--gpu-check) measures these networks: make gpu-check on a GPU node does"
    print(f"GPU-hours (an estimate: FLOPs counted from the architectures and the grid, bench/estimate.py, {rate}):")
    print(f"  {'stage':<10} {'FLOP':>9} {'GPU-h':>9} {'to run':>9} {'largest job':>11} {'limit':>7}")
    total = total_s = todo_s = 0.0
    for stage, jobs in plan.stages.items():
        flops = [job_flops(stage, j.spec) for j in jobs]
        seconds = [throughput.job_seconds(stage, j.spec) for j in jobs]
        todo = sum(s for s, j in zip(seconds, jobs) if j.run_id not in plan.done)
        total, total_s, todo_s = total + sum(flops), total_s + sum(seconds), todo_s + todo
        # A job trains data-parallel on its gpus: its wall time is its GPU-hours over them.
        gpus = max(1, int(resources[stage].gpus or 1))
        print(f"  {stage:<10} {sum(flops):>9.2e} {_hours(sum(seconds)):>9} {_hours(todo):>9} "
              f"{_hours(max(seconds, default=0) / gpus) + ' h':>11} {resources[stage].timeout_min / 60:>6.3g}h")
    print(f"  {'total':<10} {total:>9.2e} {_hours(total_s):>9} {_hours(todo_s):>9}")


def print_disk(plan: Plan) -> None:
    """Disk per stage: what its jobs leave, what those still to run add, and the most one job holds
    while it runs (float32 weights and optimizer state, bench.estimate.job_disk)."""
    print("disk (an estimate: float32 weights and optimizer state; methods: students, under the results root):")
    print(f"  {'stage':<10} {'kept':>9} {'to add':>9} {'largest job, running':>21}")
    total = total_todo = 0
    for stage, jobs in plan.stages.items():
        sizes = [job_disk(stage, j.spec) for j in jobs]
        kept = sum(k for k, _ in sizes)
        todo = sum(k for (k, _), j in zip(sizes, jobs) if j.run_id not in plan.done)
        total, total_todo = total + kept, total_todo + todo
        print(f"  {stage:<10} {_bytes(kept):>9} {_bytes(todo):>9} {_bytes(max((p for _, p in sizes), default=0)):>21}")
    print(f"  {'total':<10} {_bytes(total):>9} {_bytes(total_todo):>9}")


def _bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def _hours(seconds: float) -> str:
    h = seconds / 3600
    return f"{h:,.0f}" if h >= 100 else f"{h:.1f}" if h >= 1 else f"{h:.2g}"
