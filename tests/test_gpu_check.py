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
    shapes = result["training_throughput"]["shapes"]
    assert {(s["arch"], s["image_size"]) for s in shapes} == {(a, size) for a, _, size in gpu_check.TINY_SHAPES}
    for s in shapes:  # the TFLOP/s are the images/s at 3 forwards of the counted FLOPs per image
        assert s["images_per_s"] > 0 and s["tflops"] == pytest.approx(s["images_per_s"] * 3 * s["forward_gflop"] / 1e3)
    labels = result["soft_labels"]
    assert labels["vmap_images_per_s"] > 0 and labels["loop_images_per_s"] > 0 and labels["max_abs_difference"] < 1e-4
    if ffcv_available():
        assert result["ffcv"]["images_per_s"] > 0
    else:
        assert "ffcv" in result["ffcv"]["skipped"]


def test_the_dry_runs_gpu_hours_use_the_measured_throughput_of_each_shape(tmp_path):
    """A job whose network the check measured costs its FLOPs at the measured rate, any other at
    the flat one; a file that is not the check's is refused in one line."""
    from bench.estimate import Throughput, job_flops, read_throughput
    from bench.grid import load_grid
    from bench.jobs import Roots
    from bench.sweep.plan import make_plan

    out = tmp_path / "check.json"
    out.write_text(json.dumps({"gpu": "stand-in", "training_throughput": {"shapes": [
        {"arch": "vgg11", "scale": "tiny", "image_size": 16, "tflops": 6.0},
        {"arch": "resnet50", "scale": "tiny", "image_size": 16, "oom": "out of memory"}]}}))
    measured = read_throughput(out, flat=60.0)
    assert measured.measured == {("vgg11", "tiny", 16): 6.0} and "stand-in" in measured.source
    plan = make_plan(load_grid("main_table_scratch", "tiny"), Roots(tmp_path / "t", tmp_path / "r"))
    for stage in ("teachers", "methods"):
        for job in plan.stages[stage][:40]:
            vgg = job.spec.get("arch", job.spec.get("teachers", [{}])[0].get("arch")) == "vgg11"
            expected = job_flops(stage, job.spec) / ((6.0 if vgg else 60.0) * 1e12)
            assert measured.job_seconds(stage, job.spec) == pytest.approx(expected)
            assert Throughput(60.0).job_seconds(stage, job.spec) == pytest.approx(job_flops(stage, job.spec) / 60e12)
    assert read_throughput(tmp_path / "absent.json").measured == {}
    (tmp_path / "bad.json").write_text('{"training_throughput": {"shapes": [{"arch": "vgg11", "tflops": 1}]}}')
    with pytest.raises(Exception, match="not a gpu-check result"):
        read_throughput(tmp_path / "bad.json")


def test_gpu_check_refuses_a_missing_gpu_in_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the refusal is for machines without one")
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--device", "cuda", "--out", "unused.json"])
    assert exit_.value.code == 2 and "no CUDA GPU here" in capsys.readouterr().err
