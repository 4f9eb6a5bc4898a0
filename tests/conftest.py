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
