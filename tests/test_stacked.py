"""Stacked teacher training (bench.engine.stacked): M members as one packed network.

The tiny recipes are numerically chaotic: train() itself on 1 vs 2 threads differs by ~1e-3 in the
loss after three steps. So exactness is checked where rounding cannot grow: the packed forward,
one step's gradients, one optimizer step from the same gradients, and a whole stacked run of few
steps; resumes of a stack are checked bit for bit."""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from bench.checkpoint import read_meta
from bench.engine import train
from bench.engine.checkpointer import RunFolder
from bench.engine.optim import make_optimizer
from bench.engine.stacked import (StackFolder, Unstackable, pack_state, stack_models,
                                  train_stack, unpack_state)
from bench.models import ARCH_SPECS, build_model
from bench.train_config import TrainConfig

M = 3


def members(arch, m=M):
    out = []
    for seed in range(m):
        torch.manual_seed(seed)
        out.append(build_model(arch, 10, 16, "tiny"))
    return out


def packed_input(xs):  # (M, B, 3, H, W) -> member m's images in channels [3m, 3m + 3)
    m, b = xs.shape[:2]
    return xs.transpose(0, 1).reshape(b, m * 3, *xs.shape[3:])


@pytest.mark.parametrize("arch", ["vgg11", "resnet50", "wrn28_10"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_packed_forward_is_each_members_forward(arch, mode):
    models = members(arch)
    net = stack_models(models)
    xs = torch.randn(M, 8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for module in (net, *models):
        module.train(mode == "train")
    got = net(packed_input(xs)).view(8, M, -1)
    for i, model in enumerate(models):
        torch.testing.assert_close(got[:, i], model(xs[i]), rtol=1e-4, atol=1e-5)


def test_pack_and_unpack_are_inverse_and_keep_the_names():
    models = members("vgg11")
    net = stack_models(models)
    assert net.state_dict().keys() == models[0].state_dict().keys()
    for model, state in zip(models, unpack_state(net.state_dict(), M)):
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    again = pack_state(unpack_state(net.state_dict(), M))
    assert all(torch.equal(again[k], v) for k, v in net.state_dict().items())


def test_vit_is_refused_with_a_reason_and_planned_alone():
    with pytest.raises(Unstackable, match="VisionTransformer is not a module the packer knows"):
        stack_models(members("vit_b32"))
    assert not ARCH_SPECS["vit_b32"].stacks


def test_dropout_and_mixed_architectures_are_refused():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Dropout(0.5))
    with pytest.raises(Unstackable, match="dropout"):
        stack_models([net, net], check=False)
    with pytest.raises(Unstackable, match="not one architecture"):
        stack_models([members("vgg11", 1)[0], members("resnet50", 1)[0]])


def test_one_steps_gradients_are_each_members_own():
    models = members("resnet50")
    net = stack_models(models).train()
    gen = torch.Generator().manual_seed(2)
    xs, ys = torch.randn(M, 16, 3, 16, 16, generator=gen), torch.randint(0, 10, (M, 16), generator=gen)
    logits = net(packed_input(xs)).view(16, M, -1)
    sum(F.cross_entropy(logits[:, i], ys[i]) for i in range(M)).backward()
    grads = unpack_state({n: p.grad for n, p in net.named_parameters()}, M)
    for i, model in enumerate(models):
        model.train()
        F.cross_entropy(model(xs[i]), ys[i]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[i][name], p.grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_an_optimizer_step_from_the_same_gradients_is_each_members_step(optimizer):
    """The weight-decay groups map (no decay on biases and norms) and the update is elementwise."""
    models = members("vgg11")
    net = stack_models(models)
    opts = [make_optimizer(m, optimizer, lr=0.1, weight_decay=0.05) for m in models]
    packed_opt = make_optimizer(net, optimizer, lr=0.1, weight_decay=0.05)
    assert [len(g["params"]) for g in packed_opt.param_groups] == [len(g["params"]) for g in opts[0].param_groups]
    gen = torch.Generator().manual_seed(3)
    for _ in range(2):
        for model in models:
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
        grads = pack_state([{n: p.grad for n, p in m.named_parameters()} for m in models])
        for n, p in net.named_parameters():
            p.grad = grads[n].clone()
        packed_opt.step()
        for opt in opts:
            opt.step()
    for model, state in zip(models, unpack_state(net.state_dict(), M)):
        for name, value in model.state_dict().items():
            torch.testing.assert_close(state[name], value, rtol=1e-6, atol=1e-7, msg=name)


# --- training runs -------------------------------------------------------------------------------

# One training batch per epoch (5% of digits' training split): few enough steps that float
# rounding stays float rounding.
FEW = dict(arch="vgg11", dataset="digits", scale="tiny", epochs=2, train_fraction=0.12)


def cfgs(m=M, **kw):
    return [TrainConfig(seed=s, **{**FEW, **kw}) for s in range(m)]


def sidecar(out):
    return json.loads((out / "model.json").read_text())


def log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def stop_after_first_save(monkeypatch, cls):
    """The process 'dies' once the first checkpoint of `cls` (a folder class) is written."""
    real = cls.save

    def save(self, *args, **kw):
        real(self, *args, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(cls, "save", save)


@pytest.fixture
def two_threads():
    """Two threads, as a teachers job on two cores runs (the tests' default is one): the tolerances
    below were measured there. (With one thread AdamW's stack and its members alone part on more
    elements: 38 % of the first convolution's after 4 steps, on one machine.)"""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_stacked_members_equal_training_alone_and_write_the_same_files(tmp_path, optimizer, two_threads):
    """SGD: every tensor equal to float tolerance. AdamW divides by the gradient's scale, so a
    tensor whose true gradient is zero -- a convolution's bias before BatchNorm, which the
    normalisation cancels -- steps by +-lr on the sign of rounding noise (train() alone too, on
    another thread count), and the running means it feeds follow: there the weight matrices and
    the metrics are compared."""
    runs = cfgs(optimizer=optimizer)
    fallbacks = []
    stacked = train_stack(runs, [tmp_path / f"s{i}" for i in range(M)], progress=False,
                          on_fallback=fallbacks.append)
    assert fallbacks == []
    for i, cfg in enumerate(runs):
        alone = train(cfg, tmp_path / f"a{i}", progress=False)
        s, a = tmp_path / f"s{i}", tmp_path / f"a{i}"
        ws, wa = load_file(s / "model.safetensors"), load_file(a / "model.safetensors")
        assert ws.keys() == wa.keys()
        for k in wa:
            if optimizer == "sgd":
                torch.testing.assert_close(ws[k], wa[k], rtol=1e-3, atol=1e-5, msg=k)
            elif wa[k].ndim > 1:
                # AdamW's step on an element is at most ~lr whatever its gradient, so rounding noise on
                # a near-zero gradient can flip a step's sign (how often depends on the CPU's kernels):
                # no element may be off by more than the 4 steps' 2 lr each, and almost all agree closely.
                diff = (ws[k] - wa[k]).abs()
                assert diff.max() <= 2 * json.loads((a / "config.json").read_text())["lr"] * 4, (k, float(diff.max()))
                assert (diff > 1e-4 + 1e-3 * wa[k].abs()).float().mean() < 0.05, k
        assert stacked[i].keys() == alone.keys() and stacked[i]["config"] == alone["config"]
        assert stacked[i]["metrics"].keys() == alone["metrics"].keys()
        for key in ("train_loss", "nll"):
            assert stacked[i]["metrics"][key] == pytest.approx(alone["metrics"][key],
                                                               rel=1e-5 if optimizer == "sgd" else 1e-3)
        if optimizer == "sgd":
            assert stacked[i]["metrics"]["top1"] == alone["metrics"]["top1"]
        assert [r.keys() for r in log(s)] == [r.keys() for r in log(a)]
        assert [r["epoch"] for r in log(s)] == [1, 2]
        assert json.loads((s / "config.json").read_text()) == json.loads((a / "config.json").read_text())
        assert not (s / "checkpoint.json").exists()
        # A later plain train() with the same config finds the stacked member finished.
        assert train(cfg, s, progress=False) == sidecar(s)


def test_an_interrupted_stack_resumes_to_the_same_bits(tmp_path, monkeypatch):
    clean = train_stack(cfgs(), [tmp_path / f"clean{i}" for i in range(M)], progress=False)
    with monkeypatch.context() as patch:
        stop_after_first_save(patch, StackFolder)
        with pytest.raises(KeyboardInterrupt):
            train_stack(cfgs(), [tmp_path / f"cut{i}" for i in range(M)], progress=False)
    assert all(read_meta(tmp_path / f"cut{i}" / "checkpoint")["epoch"] == 1 for i in range(M))
    resumed = train_stack(cfgs(), [tmp_path / f"cut{i}" for i in range(M)], progress=False)
    for i in range(M):
        assert (tmp_path / f"cut{i}" / "model.safetensors").read_bytes() == \
            (tmp_path / f"clean{i}" / "model.safetensors").read_bytes()
        drop = lambda m: {k: v for k, v in m["metrics"].items() if k != "train_s"}
        assert drop(resumed[i]) == drop(clean[i])


def test_stack_checkpoints_resume_alone_and_alone_checkpoints_resume_as_a_stack(tmp_path, monkeypatch):
    outs = [tmp_path / f"m{i}" for i in range(M)]
    with monkeypatch.context() as patch:
        stop_after_first_save(patch, StackFolder)
        with pytest.raises(KeyboardInterrupt):
            train_stack(cfgs(), outs, progress=False)
    first_rows = [log(o)[0] for o in outs]
    done = train(cfgs()[0], outs[0], progress=False)  # a stack's checkpoint, resumed by train()
    assert log(outs[0])[0] == first_rows[0] and done["epochs"] == 2 and len(log(outs[0])) == 2

    alone = [tmp_path / f"b{i}" for i in range(M)]
    with monkeypatch.context() as patch:
        stop_after_first_save(patch, RunFolder)
        for cfg, out in zip(cfgs(), alone):
            with pytest.raises(KeyboardInterrupt):
                train(cfg, out, progress=False)
    rows = [log(o)[0] for o in alone]
    fallbacks = []
    results = train_stack(cfgs(), alone, progress=False, on_fallback=fallbacks.append)
    assert fallbacks == [] and all(r["epochs"] == 2 for r in results)
    assert [log(o)[0] for o in alone] == rows  # resumed from train()'s epoch, not restarted


def test_finished_members_are_found_and_members_at_other_epochs_train_apart(tmp_path, monkeypatch):
    outs = [tmp_path / f"m{i}" for i in range(4)]
    four = cfgs(4)
    finished = train(four[0], outs[0], progress=False)
    with monkeypatch.context() as patch:
        stop_after_first_save(patch, RunFolder)
        with pytest.raises(KeyboardInterrupt):
            train(four[1], outs[1], progress=False)
    packed_groups = []
    import bench.engine.stacked as stacked

    real = stacked._train_packed
    monkeypatch.setattr(stacked, "_train_packed", lambda c, o, p: packed_groups.append(o) or real(c, o, p))
    results = train_stack(four, outs, progress=False)
    assert results[0] == finished
    assert packed_groups == [outs[2:]]  # member 1 (at epoch 1) alone, members 2 and 3 stacked
    assert all(r["epochs"] == 2 for r in results)


def test_an_unstackable_architecture_falls_back_to_one_at_a_time(tmp_path):
    vit = cfgs(2, arch="vit_b32", epochs=1)
    fallbacks = []
    results = train_stack(vit, [tmp_path / f"v{i}" for i in range(2)], progress=False, on_fallback=fallbacks.append)
    assert len(fallbacks) == 1 and "VisionTransformer is not a module the packer knows" in fallbacks[0]
    alone = train(vit[1], tmp_path / "alone", progress=False)
    assert (tmp_path / "v1" / "model.safetensors").read_bytes() == (tmp_path / "alone" / "model.safetensors").read_bytes()
    assert results[1]["metrics"]["top1"] == alone["metrics"]["top1"]


def test_differing_configs_do_not_stack():
    from bench.engine.stacked import check_stackable

    with pytest.raises(Unstackable, match="differ in lr"):
        check_stackable([TrainConfig(seed=0, **FEW), TrainConfig(seed=1, lr=0.1, **FEW)])


def test_benchmark_row_reports_both_rates_and_the_gemm_fraction():
    from bench.perf.training import teacher_pool_rows

    (row,) = teacher_pool_rows(True, 1, members_list=(2,), steps=1, batch=4)
    assert row.name == "teacher_pool_training/vgg11/M=2" and row.unit == "images/s"
    assert row.ratio == pytest.approx(row.median / row.settings["baseline_median"])
    assert row.settings["gemm_fraction"] > 0 and row.settings["train_gflop_per_image"] > 0
