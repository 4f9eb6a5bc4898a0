"""`make gpu-check`'s script, end to end at the tiny shapes on the CPU: every section reports."""
import json

import pytest

from bench.data.optional_ffcv import ffcv_available
from bench.perf import gpu_check


def test_tiny_gpu_check_writes_every_section(tmp_path):
    out = tmp_path / "check.json"
    gpu_check.main(["--device", "cpu", "--tiny", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["tiny"] is True
    assert set(gpu_check.SECTIONS) <= set(result)
    failed = {k: result[k]["failed"] for k in gpu_check.SECTIONS if "failed" in result[k]}
    assert not failed, failed
    steps = result["meta_step"]
    assert set(steps) - {"section_s"} == {f"{a}_{c}" for a in ("resnet50", "vit_b32") for c in ("checkpointed", "plain")}
    for key in set(steps) - {"section_s"}:
        assert steps[key]["time_s"] > 0 and steps[key]["peak_bytes"] > 0 and steps[key]["n_teachers"] == 4
        assert steps[key]["checkpointing"] == key.endswith("checkpointed")
    assert result["teacher_epoch"]["images_per_s"] > 0 and 0 < result["teacher_epoch"]["fraction_of_epoch"] < 1
    labels = result["soft_labels"]
    assert labels["vmap_images_per_s"] > 0 and labels["loop_images_per_s"] > 0 and labels["max_abs_difference"] < 1e-4
    if ffcv_available():
        assert result["ffcv"]["images_per_s"] > 0
    else:
        assert "ffcv" in result["ffcv"]["skipped"]


def test_gpu_check_refuses_a_missing_gpu_in_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the refusal is for machines without one")
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--device", "cuda", "--out", "unused.json"])
    assert exit_.value.code == 2 and "no CUDA GPU here" in capsys.readouterr().err
