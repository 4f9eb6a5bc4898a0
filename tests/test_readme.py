"""The front pages say what the code does: the dry-run block in sweeps/README.md is what its command
prints (regenerating the block is all a change of the grid needs, and a stale block fails here),
every command line and make target they show is accepted by the suite's parsers, and every
relative link in them points at a file (and heading) that exists."""
import argparse
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bench.paths import project_root

ROOT = project_root()
README = ROOT / "sweeps" / "README.md"  # where the paper-scale dry run's block lives
# The pages whose commands and links are checked: the front door and the manuals it links to.
PAGES = [ROOT / "README.md", ROOT / "sweeps" / "README.md", ROOT / "results" / "README.md"]
# The paper-scale dry run: its command in backticks, then its output (first line left out) in a block.
DRY_RUN = re.compile(r"`(python -m bench\.sweep [^`]*--dry-run)` \(first line left out[^)]*\):\n\n```\n(.*?)```", re.S)


def job_counts(text: str) -> dict[str, tuple[int, int, int]]:
    """stage -> (jobs, to run, done), from the plan's stage lines."""
    return {stage: (int(jobs), int(todo), int(done)) for stage, jobs, todo, done in
            re.findall(r"^  (\w+)\s+(\d+) jobs,\s+(\d+) to run[^,]*,\s+(\d+) done", text, re.M)}


def test_the_dry_run_block_is_what_the_command_prints(tmp_path):
    found = DRY_RUN.search(README.read_text())
    assert found, "sweeps/README.md: the paper-scale dry run's command and block are not where this test looks"
    command, block = found.groups()
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "bench.sweep"]
    # Empty teachers and results roots (tests/conftest.py), as on a fresh clone; a data root that exists.
    r = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, cwd=project_root(),
                       env={**os.environ, "BENCH_DATA": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert job_counts(block) == job_counts(r.stdout) != {}, "regenerate sweeps/README.md's dry-run block: " + command
    assert block.splitlines() == r.stdout.splitlines()[1:], "regenerate sweeps/README.md's dry-run block: " + command


FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"`([^`]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def shown_commands(text: str) -> tuple[list[str], list[str]]:
    """(`python -m bench...` command lines, `make` targets) a page shows: each line of a fenced block
    (backslash continuations joined) and each inline code span (line breaks as spaces)."""
    lines = [line.strip() for block in FENCE.findall(text) for line in block.replace("\\\n", " ").splitlines()]
    lines += [" ".join(span.split()) for span in SPAN.findall(FENCE.sub("", text))]
    commands = [line for line in lines if line.startswith("python -m bench.")]
    targets = [shlex.split(line, comments=True)[1] for line in lines if re.match(r"make [\w-]+", line)]
    return commands, targets


class Parsed(BaseException):
    """Raised in place of running a command, once its parser has accepted the arguments."""


def parse_only(module: str, argv: list[str], monkeypatch) -> None:
    """Parse `python -m <module> <argv>` as the module would, and run nothing: a module's own
    `parse_args` where it has one, else its `main` up to argparse's answer."""
    mod = importlib.import_module(module)
    if hasattr(mod, "__path__"):  # a package: python -m runs its __main__
        mod = importlib.import_module(module + ".__main__")
    if hasattr(mod, "parse_args"):
        mod.parse_args(argv)
        return
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        with pytest.raises(Parsed):
            mod.main(argv)


def test_every_command_a_page_shows_is_accepted(monkeypatch, capsys):
    from bench.grid import load_grid
    shown = {(page.relative_to(ROOT).as_posix(), c) for page in PAGES for c in shown_commands(page.read_text())[0]}
    assert len(shown) > 20
    refused = []
    for page, command in sorted(shown):
        module, *argv = shlex.split(command, comments=True)[2:]
        try:
            importlib.import_module(module)
            if not argv:  # the module named, not a command line
                continue
            parse_only(module, argv, monkeypatch)
            if module == "bench.sweep":  # its grid loads at its scale
                a = importlib.import_module(module).parse_args(argv)
                load_grid(a.grid, a.scale)
        except (SystemExit, Exception) as err:
            refused.append(f"{page}: {command}: {type(err).__name__} {err} {capsys.readouterr().err.strip()}")
    assert not refused, "commands the suite does not accept:\n" + "\n".join(refused)


def test_every_make_target_a_page_shows_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w.-]+):", makefile, re.M))
    shown = {(page.name, t) for page in PAGES for t in shown_commands(page.read_text())[1]}
    assert {t for _, t in shown} >= {"demo", "test"}
    missing = sorted(f"{page}: make {t}" for page, t in shown if t not in targets)
    assert not missing, "make targets not in the Makefile:\n" + "\n".join(missing)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.M):
        base = slug(heading)
        seen[base if base not in seen else f"{base}-{seen[base]}"] = 0
        seen[base] = seen.get(base, 0) + 1
    return set(seen)


def test_every_relative_link_points_to_a_file():
    broken = []
    for page in PAGES:
        for target in LINK.findall(FENCE.sub("", page.read_text())):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)
