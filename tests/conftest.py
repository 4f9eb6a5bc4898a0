import os

import pytest

# Tests never write into the repository's own teachers/ and results/ folders.
@pytest.fixture(autouse=True)
def _isolated_roots(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_TEACHERS", str(tmp_path / "teachers"))
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.delenv("BENCH_DATA", raising=False)
    yield


def pytest_configure(config):
    os.environ.setdefault("PYTHONHASHSEED", "0")
    # One thread per process (set before torch is imported; the sweeps and jobs the tests start
    # inherit it, bench.job_env.job_cpus honours it): the tests' networks are tiny, and a second
    # thread per process spends the cores on hand-offs (the same tests take about 4x the CPU with 2),
    # the more so beside the job subprocesses many tests run. What the tests assert is unchanged.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def standin_weights(tmp_path_factory):
    """`file_for(name)`: a file standing in for timm's pretrained weights `name` ("model.tag"): the
    architecture's state dict in timm's format, at the checkpoint's own class count, from a fixed
    seed (this machine cannot reach the hub). Written once per session and name."""
    import timm
    from safetensors.torch import save_file
    from timm.models import get_pretrained_cfg

    folder, files = tmp_path_factory.mktemp("pretrained"), {}

    def file_for(name: str):
        if name not in files:
            import torch

            # Made on first use, maybe inside a seeded build: the caller's generator state is kept.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(1234)
                model = timm.create_model(name.split(".")[0], pretrained=False,
                                          num_classes=get_pretrained_cfg(name).num_classes)
            files[name] = folder / f"{name}.safetensors"
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(files[name]))
        return files[name]

    return file_for


@pytest.fixture
def pretrained_standin(standin_weights, monkeypatch):
    """timm's `create_model(..., pretrained=True)` reading `standin_weights` through timm's own
    loader (`pretrained_cfg_overlay=dict(file=...)`: its key mapping and classifier handling), in
    place of the hub. Returns `standin_weights`."""
    import timm

    real = timm.create_model

    def create_model(name, pretrained=False, **kwargs):
        if pretrained:
            kwargs["pretrained_cfg_overlay"] = dict(file=str(standin_weights(name)))
        return real(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)
    return standin_weights


# Every SLURM command the sweep and submitit look for or call. Tests of the SLURM path put these
# stand-ins first on PATH, so they run the same on a machine that never had SLURM (a fresh clone's
# `make test`) as beside a real cluster, which they never reach. Each call is logged to `calls`;
# sbatch keeps the script it is given (sbatch.<id>.sh) and answers with a job id from 101 on;
# the others fail, as a query of a cluster that is not there would.
SLURM_COMMANDS = ("sbatch", "srun", "squeue", "sacct", "scancel", "scontrol", "sinfo", "salloc")
SBATCH = """#!/bin/sh
echo "sbatch $*" >> "$(dirname "$0")/calls"
n=$(cat "$0.count" 2>/dev/null || echo 100); n=$((n+1)); echo $n > "$0.count"
cp "$1" "$0.$n.sh"
echo "Submitted batch job $n"
"""
REFUSE = """#!/bin/sh
echo "$(basename "$0") $*" >> "$(dirname "$0")/calls"
echo "$(basename "$0"): a stand-in; no SLURM cluster here" >&2
exit 1
"""


def slurm_standins(folder, commands=SLURM_COMMANDS):
    """A folder of stand-ins for `commands` (see SLURM_COMMANDS); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in commands:
        (folder / name).write_text(SBATCH if name == "sbatch" else REFUSE)
        (folder / name).chmod(0o755)
    return folder


@pytest.fixture
def fake_slurm(tmp_path):
    return slurm_standins(tmp_path / "bin")
