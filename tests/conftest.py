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
