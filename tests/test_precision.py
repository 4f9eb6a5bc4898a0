"""The number format of the forwards (bench.job_env.precision): bf16 where the GPU computes in
it, fp16 with a loss scaler on older GPUs, fp32 on CPUs; the record names it."""
import torch

from bench.engine import devices, loop
from bench.engine.checkpointer import RunFolder
from bench.engine.loop import fit
from bench.run_records import _machine


def test_each_device_gets_its_format(monkeypatch):
    assert devices.precision(torch.device("cpu")) == "fp32"
    for capability, mode in (((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert devices.precision(torch.device("cuda", 0)) == mode, capability
    assert not devices.grad_scaler(torch.device("cpu")).is_enabled()
    assert _machine()["precision"] == ("fp32" if not torch.cuda.is_available() else
                                       devices.precision(torch.device("cuda")))


class Objective:
    def __init__(self, target=1.0):
        self.target = target
        torch.manual_seed(0)
        self.model = torch.nn.Linear(3, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.labels = {}

    def loss(self, step):
        return {"loss": (self.model(torch.ones(4, 3)) - self.target).pow(2).mean()}

    def log_row(self, step, means, seconds):
        return {"step": step, "loss": float(means["loss"])}


def run(folder, steps, clip=None, target=1.0):
    objective = Objective(target)
    history = fit(objective, RunFolder(folder, {"run": 1}, matches=lambda meta: True), steps=steps, log_every=1,
                  lr=0.1, schedule=lambda s: 1.0, clip=clip, quiet=True)[0]
    return objective.model, history


def test_a_disabled_scaler_leaves_training_bit_exact(tmp_path, monkeypatch):
    plain, _ = run(tmp_path / "a", 5, clip=1.0)
    monkeypatch.setattr(loop, "grad_scaler", lambda device: torch.amp.GradScaler("cpu", enabled=False))
    again, _ = run(tmp_path / "b", 5, clip=1.0)
    assert all(torch.equal(p, q) for p, q in zip(plain.state_dict().values(), again.state_dict().values()))


def test_fp16_overflow_skips_the_step_and_lowers_the_scale_instead_of_stopping(tmp_path, monkeypatch):
    # A loss near 2^20 at a scale of 2^120 overflows float32 (2^128): the scaler must skip that step
    # (the weights unchanged), lower its scale (by 2^-30 here), and train once it fits, clipping on.
    made = []
    monkeypatch.setattr(loop, "grad_scaler", lambda device: made.append(
        torch.amp.GradScaler("cpu", init_scale=2.0 ** 120, backoff_factor=2.0 ** -30)) or made[-1])
    start = Objective().model.state_dict()
    model, history = run(tmp_path / "fp16", 8, clip=1.0, target=1000.0)
    losses = [row["loss"] for row in history]
    assert losses[0] == losses[1]  # the first steps were skipped: the weights had not moved
    assert made[0].get_scale() <= 2.0 ** 90 and losses[-1] < losses[0]  # then the scale fit and it trained
    assert not all(torch.equal(start[k], v) for k, v in model.state_dict().items())
