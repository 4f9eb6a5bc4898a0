import json

import pytest
import torch

from bench.checkpoint import (CheckpointError, load_checkpoint, optimizer_from_tensors,
                              optimizer_to_tensors, paths, save_checkpoint)


def tensors():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(4, 3, generator=g), "n": torch.tensor(7), "b": torch.arange(5).float()}


def test_round_trip_and_sidecar(tmp_path):
    save_checkpoint(tmp_path / "m", tensors(), {"arch": "vgg11", "seed": 1})
    loaded, meta = load_checkpoint(tmp_path / "m.safetensors", expect={"arch": "vgg11"})
    assert all(torch.equal(loaded[k], v) for k, v in tensors().items())
    assert meta["seed"] == 1 and len(meta["sha256"]) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]  # no temp files


def test_tampered_weights_are_refused_naming_the_file(tmp_path):
    weights = save_checkpoint(tmp_path / "m", tensors(), {"arch": "vgg11"})
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="m.safetensors.*sha256"):
        load_checkpoint(tmp_path / "m")


def test_truncated_file_and_missing_sidecar(tmp_path):
    weights = save_checkpoint(tmp_path / "m", tensors(), {"arch": "vgg11"})
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(weights)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "other")


def test_edited_sidecar_hash_cannot_smuggle_garbage(tmp_path):
    weights, sidecar = paths(tmp_path / "m")
    save_checkpoint(tmp_path / "m", tensors(), {"arch": "vgg11"})
    weights.write_bytes(b"\x80\x04not a safetensors file")  # a pickle header, say
    import hashlib
    meta = json.loads(sidecar.read_text())
    meta["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(weights)


def test_architecture_mismatch_is_refused(tmp_path):
    save_checkpoint(tmp_path / "m", tensors(), {"arch": "vgg11"})
    with pytest.raises(CheckpointError, match="arch is 'vgg11', expected 'resnet50'"):
        load_checkpoint(tmp_path / "m", expect={"arch": "resnet50"})


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    lambda ps: torch.optim.AdamW(ps, lr=0.01),
])
def test_optimizer_state_round_trip(tmp_path, make):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = make(model.parameters())
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3)).square().sum().backward()
        opt.step()
    t, meta = optimizer_to_tensors(opt)
    save_checkpoint(tmp_path / "o", t, {"optimizer": meta})
    t2, meta2 = load_checkpoint(tmp_path / "o")
    opt2 = make(model.parameters())
    optimizer_from_tensors(opt2, t2, meta2["optimizer"])
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for pid in a["state"]:
        for key, value in a["state"][pid].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][pid][key]))


def test_versioned_checkpoint_survives_a_kill_between_weights_and_sidecar(tmp_path):
    first = {"w": torch.zeros(3)}
    save_checkpoint(tmp_path / "checkpoint", first, {"epoch": 1}, versioned=True)
    save_checkpoint(tmp_path / "checkpoint", {"w": torch.ones(3)}, {"epoch": 2}, versioned=True)
    assert len(list(tmp_path.glob("checkpoint-*.safetensors"))) == 1  # older weights removed
    # A process killed after writing epoch 3's weights but before its sidecar: epoch 2 still loads.
    (tmp_path / "checkpoint-deadbeef0000.safetensors").write_bytes(b"half-written")
    tensors, meta = load_checkpoint(tmp_path / "checkpoint")
    assert meta["epoch"] == 2 and torch.equal(tensors["w"], torch.ones(3))


def test_a_checkpoint_of_a_future_format_is_refused_not_misread(tmp_path):
    save_checkpoint(tmp_path / "m", tensors(), {"arch": "vgg11"})
    _, sidecar = paths(tmp_path / "m")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "format": "ensemble-bench-checkpoint/2"}))
    with pytest.raises(CheckpointError, match="has format 'ensemble-bench-checkpoint/2'; this ensemble-bench "
                                              "reads 'ensemble-bench-checkpoint/1' only"):
        load_checkpoint(tmp_path / "m")
    sidecar.write_text(json.dumps({**meta, "format": "something-else"}))
    with pytest.raises(CheckpointError, match="is not an ensemble-bench-checkpoint/1 sidecar"):
        load_checkpoint(tmp_path / "m")


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_a_fused_optimizer_resumed_on_channels_last_weights_steps_as_if_never_stopped(tmp_path, name):
    """Files hold contiguous state; a fused optimizer walks a parameter and its state as flat
    memory, so the loaded state must take the channels-last parameter's layout."""
    from bench.engine.optim import make_optimizer

    def model():
        torch.manual_seed(0)
        return torch.nn.Conv2d(4, 8, 3).to(memory_format=torch.channels_last)

    def step(net, opt, seed):
        x = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(seed))
        opt.zero_grad()
        net(x.contiguous(memory_format=torch.channels_last)).square().sum().backward()
        opt.step()

    net = model()
    opt = make_optimizer(net, name, lr=0.1, weight_decay=1e-3)
    assert opt.param_groups[0]["fused"]
    step(net, opt, 1)
    tensors, meta = optimizer_to_tensors(opt)
    save_checkpoint(tmp_path / "c", {**net.state_dict(), **tensors}, {"optimizer": meta})
    step(net, opt, 2)  # the run that never stopped

    loaded, sidecar = load_checkpoint(tmp_path / "c")
    resumed = model()
    resumed.load_state_dict({k: v for k, v in loaded.items() if not k.startswith("optimizer/")})
    opt2 = make_optimizer(resumed, name, lr=0.1, weight_decay=1e-3)
    optimizer_from_tensors(opt2, loaded, sidecar["optimizer"])
    assert all(s.stride() == p.stride() for p in resumed.parameters() for s in opt2.state[p].values()
               if s.shape == p.shape)
    step(resumed, opt2, 2)
    for a, b in zip(net.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
