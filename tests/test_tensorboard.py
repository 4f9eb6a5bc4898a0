"""Every run's log as TensorBoard events beside log.jsonl, where tensorboard is installed."""
import json

import pytest
import torch

from bench.engine import tensorboard
from bench.engine.checkpointer import RunFolder
from bench.engine.loop import fit

from tensorboard.backend.event_processing import event_accumulator  # noqa: E402  (the dev extra)


class Objective:
    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(3, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.labels = {}

    def loss(self, step):
        x = torch.ones(4, 3) * (step % 3)
        return {"loss": (self.model(x) - 1).pow(2).mean()}

    def log_row(self, step, means, seconds):
        return {"step": step, "loss": float(means["loss"]), "label": "text is not a curve"}


def run(folder, steps):
    return fit(Objective(), RunFolder(folder, {"run": 1}, matches=lambda meta: True), steps=steps, log_every=2,
               lr=0.1, schedule=lambda s: 1.0, quiet=True)[0]


def events(folder) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(folder / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_events_mirror_the_log_once_per_step_across_a_resume(tmp_path):
    whole = run(tmp_path / "whole", 10)
    run(tmp_path / "resumed", 6)  # stopped at step 6 (its checkpoint), then resumed to the end
    resumed = run(tmp_path / "resumed", 10)
    assert [r["step"] for r in resumed] == [2, 4, 6, 8, 10]
    for folder in ("whole", "resumed"):
        curves = events(tmp_path / folder)
        assert "label" not in curves and "step" not in curves
        assert [s for s, _ in curves["loss"]] == [2, 4, 6, 8, 10]  # no step twice
        logged = [json.loads(line) for line in (tmp_path / folder / "log.jsonl").read_text().splitlines()]
        assert [v for _, v in curves["loss"]] == pytest.approx([r["loss"] for r in logged], rel=1e-6)
        assert [v for _, v in curves["lr"]] == pytest.approx([r["lr"] for r in logged])
    assert [v for _, v in events(tmp_path / "resumed")["loss"]] == pytest.approx([r["loss"] for r in whole], rel=1e-6)


def test_without_tensorboard_a_run_writes_what_it_always_wrote(tmp_path, monkeypatch):
    monkeypatch.setattr(tensorboard, "summary_writer", lambda: None)
    history = run(tmp_path / "run", 4)
    assert not (tmp_path / "run" / "tensorboard").exists()
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == len(history) == 2
