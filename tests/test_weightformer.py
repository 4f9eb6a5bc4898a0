import copy
import json

import pytest
import torch

from bench.errors import BenchError
from bench.models import build_model
from bench.method_options import wf_config
from bench.run_records import load_records
from bench.engine import load_model, train
from bench.train_config import TrainConfig
from bench.weightformer import losses, meta_train as mt
from bench.weightformer.model import WeightFormer, column_stats
from bench.weights import permutation
from bench.weights.tokens import from_tokens, passthrough, stack_tokens, to_tokens, weight_layers

ARCHS = ("vgg11", "resnet50", "vit_b32")


def untrained(arch, seed, scale="tiny"):
    """A freshly initialised model with every weight jittered: like a trained one, no column of its
    tokens is constant (LayerNorm weights of exactly 1 would give all-zero standardised inputs)."""
    torch.manual_seed(seed)
    model = build_model(arch, 10, 16, scale)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def make_wf(teachers, arch, output="residual_anchor", n=None, **options):
    layers = weight_layers(teachers[0], arch)
    cfg = wf_config({"output": output, "d_model": 32, "depth": 1, "heads": 2, **options}, "tiny")
    tokens = [to_tokens(layers, m.state_dict()) for m in teachers]
    torch.manual_seed(0)
    return WeightFormer(layers, cfg, n or len(teachers), column_stats(tokens)), layers


@pytest.mark.parametrize("arch", ARCHS)
def test_the_student_has_the_architectures_names_and_shapes(arch):
    teachers = [untrained(arch, s) for s in range(3)]
    wf, layers = make_wf(teachers, arch, output="direct")
    student = from_tokens(layers, wf(stack_tokens(layers, [m.state_dict() for m in teachers])),
                          passthrough(teachers[0].state_dict()))
    expected = teachers[0].state_dict()
    assert list(student) == [k for k in student] and set(student) == set(expected)
    assert all(student[k].shape == expected[k].shape and student[k].dtype == expected[k].dtype for k in expected)
    copy.deepcopy(teachers[0]).load_state_dict(student)  # strict: loads


@pytest.mark.parametrize("output", ["residual_anchor", "residual_mean"])
def test_residual_forms_start_exactly_at_the_anchor_or_the_mean(output):
    teachers = [untrained("vgg11", s) for s in range(3)]
    wf, layers = make_wf(teachers, "vgg11", output=output)
    tokens = stack_tokens(layers, [m.state_dict() for m in teachers])
    for got, t in zip(wf(tokens), tokens):
        assert torch.equal(got, t[0] if output == "residual_anchor" else t.mean(0))


def _kl_loss(wf, layers, teachers, images):
    tokens = stack_tokens(layers, [m.state_dict() for m in teachers])
    with torch.no_grad():
        probs = torch.stack([torch.softmax(m.eval()(images) / 4, 1) for m in teachers]).mean(0)
    student = copy.deepcopy(teachers[0]).train()
    logits = losses.student_logits(student, layers, wf(tokens), passthrough(student.state_dict()), images)
    return losses.ensemble_kl(logits, probs, 4.0)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_embedder_and_head_gets_a_gradient_from_the_kl(arch):
    teachers = [untrained(arch, s) for s in range(2)]
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    wf, layers = make_wf(teachers, arch, output="direct")
    _kl_loss(wf, layers, teachers, images).backward()
    for name, module in [*wf.embed.items(), *wf.head.items()]:
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0, name
    assert wf.cross0.grad.abs().sum() > 0  # the [cross] chain carries gradient back to its start


def test_zero_heads_pass_gradient_to_embedders_after_one_step():
    # Residual form: at step 0 the heads are zero, so only they get a gradient; one step later all do.
    teachers = [untrained("vgg11", s) for s in range(2)]
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    wf, layers = make_wf(teachers, "vgg11")
    opt = torch.optim.AdamW(wf.parameters(), lr=1e-3)
    _kl_loss(wf, layers, teachers, images).backward()
    assert all(h.weight.grad.abs().sum() > 0 for h in wf.head.values())
    assert all(e.weight.grad is None or e.weight.grad.abs().sum() == 0 for e in wf.embed.values())
    opt.step()
    opt.zero_grad()
    _kl_loss(wf, layers, teachers, images).backward()
    assert all(e.weight.grad.abs().sum() > 0 for e in wf.embed.values())


def test_shift_consistency_is_zero_for_a_model_that_ignores_the_teachers_and_not_otherwise():
    teachers = [untrained("vgg11", s) for s in range(3)]
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    layers = weight_layers(teachers[0], "vgg11")
    tokens = stack_tokens(layers, [m.state_dict() for m in teachers])
    student = copy.deepcopy(teachers[0]).train()
    pt = passthrough(student.state_dict())

    def consistency(wf):
        predict = lambda g: losses.student_logits(student, layers, wf(g), pt, images)
        return losses.shift_consistency(predict, tokens, predict(tokens), 4.0)

    ignoring, _ = make_wf(teachers, "vgg11", output="direct")
    for head in ignoring.head.values():  # direct output with zero heads: the columns' means, always
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    assert consistency(ignoring).item() == 0.0
    anchored, _ = make_wf(teachers, "vgg11")  # a copy of the anchor: shifting changes the anchor
    assert consistency(anchored).item() > 1e-3


def test_symmetric_kl_and_ensemble_kl_known_answers():
    p = torch.tensor([[0.5, 0.5]])
    logits = torch.tensor([[0.0, 0.0]])
    assert losses.ensemble_kl(logits, p, 1.0).item() == pytest.approx(0.0, abs=1e-7)
    q_logits = torch.log(torch.tensor([[0.9, 0.1]]))
    expected = 0.9 * torch.log(torch.tensor(0.9 / 0.5)) + 0.1 * torch.log(torch.tensor(0.1 / 0.5))
    assert losses.ensemble_kl(q_logits, p, 1.0).item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses.symmetric_kl(q_logits, logits, 2.0).item() == pytest.approx(
        losses.symmetric_kl(logits, q_logits, 2.0).item())


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Five tiny VGG teachers (2 epochs) on digits: a meta-train part of 4 and one held out."""
    root = tmp_path_factory.mktemp("pool")
    for k in range(5):
        train(TrainConfig(arch="vgg11", dataset="digits", seed=k, epochs=2), root / f"member-{k}", progress=False)
    return [root / f"member-{k}" / "model.safetensors" for k in range(5)]


def group_kl(wf, paths, groups, images_seed=1):
    """Mean eq.-1 KL over `groups` on a fixed batch of training images."""
    models = [load_model(p)[0].eval() for p in paths]
    data = mt.SoftLabels(models, "digits", None, 16, torch.device("cpu"), 256, images_seed, wf.cfg.temperature,
                         steps=1)
    tokens = mt.TeacherTokens(models, "vgg11", wf.cfg.align)
    student = copy.deepcopy(models[0]).train()
    pt = passthrough(student.state_dict())
    total = 0.0
    with torch.no_grad():
        for g in groups:
            x, probs = data.batch(0, g)
            logits = losses.student_logits(student, tokens.layers, wf(tokens.group(g)),
                                           {k: v.clone() for k, v in pt.items()}, x)
            total += losses.ensemble_kl(logits, probs, wf.cfg.temperature).item()
    return total / len(groups)


def _meta(out, pool, **options):
    cfg = wf_config({"d_model": 32, "depth": 1, "heads": 2, "steps": 40, "batch_size": 64, "lr": 3e-3,
                     "checkpoint_every": 10, **options}, "tiny")
    return mt.meta_train(out, teachers=pool[:4], members=range(4), arch="vgg11", dataset="digits", scale="tiny",
                         pool="p", n_teachers=2, cfg=cfg, progress=False), cfg


def test_meta_training_lowers_the_kl_on_its_meta_train_groups(pool, tmp_path):
    meta, cfg = _meta(tmp_path / "wf", pool)
    layers = weight_layers(load_model(pool[0])[0], "vgg11")
    trained, _ = mt.load_weightformer(tmp_path / "wf" / "model", layers, arch="vgg11", n_teachers=2, pool="p")
    fresh = WeightFormer(layers, cfg, 2)  # residual heads at zero: each group's anchor, copied
    groups = [[a, b] for a in range(4) for b in range(4) if a != b]
    before, after = group_kl(fresh, pool[:4], groups), group_kl(trained, pool[:4], groups)
    assert after < 0.9 * before, (before, after)
    assert meta["soft_label_cache"]  # digits is held in memory: its views' soft labels are cached
    assert meta["meta_train_s"] > 0 and len(meta["history"]) == 4
    # The same run folder as any training run: its config, and its curve one line per log point.
    assert json.loads((tmp_path / "wf" / "config.json").read_text())["d_model"] == cfg.d_model
    log = [json.loads(line) for line in (tmp_path / "wf" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30, 40] and log == meta["history"]
    assert all(r["lr"] > 0 and r["kl"] > 0 for r in log) and log[-1]["lr"] < log[0]["lr"]  # cosine decay


def test_a_meta_training_crash_resumes_to_the_same_weightformer(pool, tmp_path, monkeypatch):
    _meta(tmp_path / "whole", pool)
    calls = {"n": 0}
    real = mt.ensemble_kl

    def nan_at_step_25(*args):
        calls["n"] += 1
        out = real(*args)
        return out * float("nan") if calls["n"] == 26 else out

    monkeypatch.setattr(mt, "ensemble_kl", nan_at_step_25)
    with pytest.raises(BenchError, match=r"step 25: the KL \(eq. 1\) loss is nan"):
        _meta(tmp_path / "crashed", pool)
    kept = json.loads((tmp_path / "crashed" / "checkpoint.json").read_text())
    assert kept["step"] == 20 and not (tmp_path / "crashed" / "model.json").exists()
    monkeypatch.setattr(mt, "ensemble_kl", real)
    _meta(tmp_path / "crashed", pool)
    a = mt.load_checkpoint(tmp_path / "whole" / "model")[0]
    b = mt.load_checkpoint(tmp_path / "crashed" / "model")[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_weightformer_is_refused_for_another_arch_n_or_pool(pool, tmp_path):
    _meta(tmp_path / "wf", pool, steps=10)
    layers = weight_layers(load_model(pool[0])[0], "vgg11")
    for key, kwargs in [("n_teachers", dict(arch="vgg11", n_teachers=4, pool="p")),
                        ("pool", dict(arch="vgg11", n_teachers=2, pool="other")),
                        ("arch", dict(arch="resnet50", n_teachers=2, pool="p"))]:
        with pytest.raises(BenchError, match=rf"meta-trained with {key} .*, this job has {key} "):
            mt.load_weightformer(tmp_path / "wf" / "model", layers, **kwargs)


def test_with_weight_matching_a_permuted_teacher_gives_the_same_student(pool):
    models = [load_model(p)[0] for p in pool[:2]]
    wf, _ = make_wf(models, "vgg11", output="residual_mean", align="weight_matching")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # heads that really change the prediction
        for head in wf.head.values():
            head.weight.copy_(0.1 * torch.randn(head.weight.shape, generator=gen))
    spec = permutation.permutation_spec(models[0], "vgg11")
    perms = {g: torch.randperm(n, generator=gen) for g, n in spec.sizes.items()}
    shuffled = copy.deepcopy(models[1])
    shuffled.load_state_dict(permutation.apply_permutation(spec, models[1].state_dict(), perms))
    x = torch.randn(16, 3, 16, 16, generator=gen)
    assert not torch.equal(shuffled.state_dict()["features.0.weight"], models[1].state_dict()["features.0.weight"])
    # Compared in train mode (BatchNorm on the batch's statistics): random heads also move the
    # running-variance columns, which may go negative.
    students = [mt.predict_student(wf, copy.deepcopy(models[0]), "vgg11", [models[0], t]).train()
                for t in (models[1], shuffled)]
    with torch.no_grad():
        assert torch.allclose(students[0](x), students[1](x), atol=1e-5)
        unaligned, _ = make_wf(models, "vgg11", output="residual_mean")
        unaligned.load_state_dict(wf.state_dict())
        plain = [mt.predict_student(unaligned, copy.deepcopy(models[0]), "vgg11", [models[0], t]).train()
                 for t in (models[1], shuffled)]
        assert not torch.allclose(plain[0](x), plain[1](x), atol=1e-3)  # without alignment it does change
    with pytest.raises(BenchError, match="weight_matching supports vgg11, resnet50, not vit_b32"):
        mt.TeacherTokens([untrained("vit_b32", 0)], "vit_b32", "weight_matching")


def test_bad_settings_name_the_valid_values():
    with pytest.raises(BenchError, match="output: 'skip' is not one of: direct, residual_anchor, residual_mean"):
        wf_config({"output": "skip"}, "tiny")
    with pytest.raises(BenchError, match="d_model: 30 is not divisible by heads = 4"):
        wf_config({"d_model": 30}, "tiny")
    with pytest.raises(BenchError, match="cross: 'yes' is not true or false"):
        wf_config({"cross": "yes"}, "tiny")
    with pytest.raises(BenchError, match="clip: nan is not a finite number"):
        wf_config({"clip": float("nan")}, "tiny")


@pytest.mark.parametrize("option, words", [("ft_epochs: true", r"\.ft_epochs: True is not a whole number >= 1"),
                                           ("ft_fraction: 0", r"\.ft_fraction: 0 is not a number in \(0, 1\]"),
                                           ("output: skip", r"\.output: 'skip' is not one of"),
                                           ("n_teachers: 9", ": N = 9 is larger than pool")])
def test_bad_weightformer_options_stop_the_grid_before_anything_runs(tmp_path, option, words):
    from bench.grid import load_grid

    path = tmp_path / "g.yaml"
    path.write_text(GRID.split("methods:")[0] + f"methods:\n  weightformer_ft: {{{option}}}\n")
    with pytest.raises(BenchError, match=rf"g\.yaml: methods\.weightformer_ft{words}"):
        load_grid(path, "tiny")


GRID = """
n_teachers: 2
seeds: 2
pools:
  - arch: vgg11
    dataset: digits
    members: 6
    held_out: 3
    recipe: {epochs: 1}
methods:
  single: {}
  weightformer: {steps: 6, d_model: 16, depth: 1, heads: 2, checkpoint_every: 3}
  weightformer/unseen: {steps: 6, d_model: 16, depth: 1, heads: 2, checkpoint_every: 3, teacher_part: held_out}
  weightformer_ft: {steps: 6, d_model: 16, depth: 1, heads: 2, checkpoint_every: 3, ft_epochs: 1, ft_fraction: 0.5}
  weightformer/no_cross: {steps: 6, d_model: 16, depth: 1, heads: 2, checkpoint_every: 3, cross: false}
"""


def test_a_grid_meta_trains_once_per_config_and_records_seen_and_unseen_groups(tmp_path):
    from bench.sweep import main

    grid = tmp_path / "wfgrid.yaml"
    grid.write_text(GRID)
    args = ["--grid", str(grid), "--cluster", "debug", "--teachers-root", str(tmp_path / "teachers"),
            "--results-root", str(tmp_path / "results")]
    # The sweep's own command, in this process (the command line is tests/test_sweep.py's): it
    # raises SystemExit when a job fails.
    main(args)
    table = load_records(tmp_path / "results" / "wfgrid")
    assert set(table.status) == {"done"}
    meta = table[table.stage == "meta_train"]
    # weightformer, its unseen variant and weightformer_ft share one config; no_cross is another.
    assert len(meta) == 2 and sorted(meta.wf_cross) == [False, True]
    methods = table[table.stage == "methods"].set_index(["variant", "seed"])
    assert set(methods.index.get_level_values(0)) == {"single", "weightformer", "weightformer/unseen",
                                                      "weightformer_ft", "weightformer/no_cross"}
    unseen = methods.loc["weightformer/unseen"]
    assert set(unseen.teacher_part) == {"held_out"} and all(set(m) <= {3, 4, 5} for m in unseen.teacher_members)
    seen = methods.loc["weightformer"]
    assert all(set(m) <= {0, 1, 2} for m in seen.teacher_members) and (seen.predict_s > 0).all()
    assert (seen.train_s == 0).all() and (seen.meta_train_s > 0).all() and (seen.infer_forwards == 1).all()
    ft = methods.loc["weightformer_ft"]
    assert (ft.train_s > 0).all() and (ft.wf_ft_fraction == 0.5).all() and (ft.epochs == 1).all()
    assert all(0 <= v <= 100 for v in methods.top1)


def _plain_forward(wf, tokens):
    """The WeightFormer's math written out layer by layer, every block on every row (no row pruning,
    no batching of layers, no checkpointing): what the model's forward must equal."""
    n, ids, out, cross = tokens[0].shape[0], wf.model_id.weight, [], wf.cross0
    for i, (layer, t) in enumerate(zip(wf.layers, tokens)):
        key = layer.kind_key.replace(":", "_")
        mean, std = wf.column_stats(i)
        x = wf.embed[key]((t - mean) / std) + ids[1:n + 1, None] + wf.position.weight[None, :layer.n_tokens]
        x = x.reshape(n * layer.n_tokens, -1) + wf.layer_id.weight[i]
        if wf.cfg.cross:
            x = torch.cat([(cross + ids[0] + wf.layer_id.weight[i])[None], x])
        for block in wf.blocks:
            b, s, d = x[None].shape
            h = block.norm1(x[None])
            q, k, v = block.qkv(h).view(b, s, 3, block.heads, d // block.heads).permute(2, 0, 3, 1, 4)
            a = torch.softmax(q @ k.transpose(-1, -2) / (d // block.heads) ** 0.5, -1) @ v
            y = x[None] + block.proj(a.transpose(1, 2).reshape(b, s, d))
            x = (y + block.mlp(block.norm2(y)))[0]
        x = wf.norm(x)
        if wf.cfg.cross:
            cross, x = x[0], x[1:]
        out.append(mean + wf.head[key](x[:layer.n_tokens]) * std)  # direct output
    return out


@pytest.mark.parametrize("arch, cross", [("vgg11", True), ("vgg11", False), ("vit_b32", False)])
def test_the_forward_is_the_plain_layer_by_layer_computation(arch, cross):
    teachers = [untrained(arch, s) for s in range(3)]
    wf, layers = make_wf(teachers, arch, output="direct", depth=2, cross=cross)
    tokens = stack_tokens(layers, [m.state_dict() for m in teachers])
    with torch.no_grad():
        for got, want in zip(wf(tokens), _plain_forward(wf, tokens)):
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
        cut = [t[:2] for t in tokens]  # fewer teachers than meta-trained for: the same computation
        for got, want in zip(wf(cut), _plain_forward(wf, cut)):
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cross", [True, False])
def test_checkpointing_gives_the_same_loss_and_gradients(cross):
    teachers = [untrained("vgg11", s) for s in range(3)]
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (False, True):
        wf, layers = make_wf(teachers, "vgg11", output="direct", depth=2, cross=cross, checkpointing=checkpointing)
        loss = _kl_loss(wf, layers, teachers, images)
        loss.backward()
        grads.append((loss.detach(), {k: p.grad for k, p in wf.named_parameters()}))
    (plain_loss, plain), (ckpt_loss, ckpt) = grads
    assert torch.equal(plain_loss, ckpt_loss) and plain.keys() == ckpt.keys()
    assert all(plain[k].abs().sum() > 0 for k in plain if k.startswith(("embed", "head", "blocks")))
    assert (plain["cross0"] is not None) == cross  # the chain's start gets a gradient only through the chain
    for k in plain:
        assert (plain[k] is None and ckpt[k] is None) or torch.allclose(plain[k], ckpt[k], atol=1e-7, rtol=1e-5), k
