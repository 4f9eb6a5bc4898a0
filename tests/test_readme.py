"""The README's figures that a command prints are what that command prints today: regenerating the
block is all a change of the grid needs, and a stale block fails here."""
import os
import re
import shlex
import subprocess
import sys

from bench.paths import project_root

README = project_root() / "README.md"
# The paper-scale dry run: its command in backticks, then its output (first line left out) in a block.
DRY_RUN = re.compile(r"`(python -m bench\.sweep [^`]*--dry-run)` \(first line left out[^)]*\):\n\n```\n(.*?)```", re.S)


def job_counts(text: str) -> dict[str, tuple[int, int, int]]:
    """stage -> (jobs, to run, done), from the plan's stage lines."""
    return {stage: (int(jobs), int(todo), int(done)) for stage, jobs, todo, done in
            re.findall(r"^  (\w+)\s+(\d+) jobs,\s+(\d+) to run[^,]*,\s+(\d+) done", text, re.M)}


def test_the_dry_run_block_is_what_the_command_prints(tmp_path):
    found = DRY_RUN.search(README.read_text())
    assert found, "README.md: the paper-scale dry run's command and block are not where this test looks"
    command, block = found.groups()
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "bench.sweep"]
    # Empty teachers and results roots (tests/conftest.py), as on a fresh clone; a data root that exists.
    r = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, cwd=project_root(),
                       env={**os.environ, "BENCH_DATA": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert job_counts(block) == job_counts(r.stdout) != {}, "regenerate the README's dry-run block: " + command
    assert block.splitlines() == r.stdout.splitlines()[1:], "regenerate the README's dry-run block: " + command
