"""`make gpu-check`: what the paper-scale jobs will cost on one GPU, in a few minutes, as JSON.

    python -m bench.perf.gpu_check [--out results/gpu_check.json] [--device cuda] [--tiny]

Sections (each one's figures, or {"skipped": reason} / {"failed": reason}, so one failure does not
lose the rest):
  meta_step        one paper-shape WeightFormer meta-training step (bench.perf.meta_step.paper_step) for
                   ResNet-50 / CIFAR-100 and ViT-B/32 / ImageNet, N = 4, student batch 8, bf16
                   autocast, with and without activation checkpointing: seconds, peak CUDA memory
                   (max_memory_allocated; an out-of-memory is recorded, not raised)
  training_throughput  training steps (SGD, the job's autocast, channels-last) on synthetic images
                   resident on the device, for each architecture at each resolution the paper-scale
                   pools train at (VGG-11 and ResNet-50 at CIFAR's 32 px and resized to 224 px,
                   ViT-B/32 at 224 px): images/s and the TFLOP/s they are (images/s x 3 x one
                   image's forward FLOPs, bench.estimate), which the sweep's dry run turns its
                   GPU-hours with (bench.estimate.read_throughput)
  soft_labels      N = 4 ResNet-50 teachers' mean soft labels: BatchedTeachers vmap vs loop, images/s
                   and the largest difference between the two
  ffcv             synthetic JPEGs written to a .beton with bench.data.beton and read back by the
                   FFCV loader (RandomResizedCrop, flip): images/s; skipped if ffcv does not import

`--tiny` (with `--device cpu`): the same sections at the tiny shapes, in seconds, so that a test can
run the script end to end.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from PIL import Image
import torch
import torch.nn.functional as F

from bench.engine.devices import autocast
from bench.errors import cli
from bench.models import build_model

SECTIONS = ("meta_step", "training_throughput", "soft_labels", "ffcv")
# (arch, dataset, image size) of the paper-scale pools' training; --tiny: the tiny testbeds' shapes.
PAPER_SHAPES = (("vgg11", "cifar10", 32), ("vgg11", "cifar10", 224), ("resnet50", "cifar100", 32),
                ("resnet50", "cifar100", 224), ("vit_b32", "imagenet", 224))
TINY_SHAPES = (("vgg11", "testbed", 16), ("resnet50", "testbed_hard", 16))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def meta_step(device: torch.device, tiny: bool) -> dict[str, Any]:
    from bench.perf.meta_step import paper_step

    out = {}
    for arch in ("resnet50", "vit_b32"):
        for checkpointing in (True, False):
            key = f"{arch}_{'checkpointed' if checkpointing else 'plain'}"
            try:
                # bf16 on a GPU; a CPU (the --tiny check) has no fast bf16 path
                out[key] = paper_step(arch, checkpointing=checkpointing, device=device,
                                      dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
                                      warmup=0 if tiny else 1, flops=False, scale="tiny" if tiny else "paper")
            except torch.cuda.OutOfMemoryError as err:
                out[key] = {"oom": str(err).splitlines()[0]}
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return out


def _resnet50(device: torch.device, tiny: bool) -> tuple[torch.nn.Module, int, int]:
    classes, size = (10, 16) if tiny else (100, 32)
    model = build_model("resnet50", classes, size, "tiny" if tiny else "paper").to(device)
    return model.to(memory_format=torch.channels_last), classes, size


def training_throughput(device: torch.device, tiny: bool) -> dict[str, Any]:
    from bench.data import dataset_spec
    from bench.estimate import BACKWARD_FACTOR, forward_flops

    scale = "tiny" if tiny else "paper"
    batch, steps, warmup = (8, 2, 1) if tiny else (64, 60, 10)
    shapes = []
    for arch, dataset, size in TINY_SHAPES if tiny else PAPER_SHAPES:
        torch.manual_seed(0)
        classes = dataset_spec(dataset).num_classes
        entry: dict[str, Any] = {"arch": arch, "scale": scale, "dataset": dataset, "image_size": size, "batch": batch}
        try:
            model = build_model(arch, classes, size, scale).to(device).to(memory_format=torch.channels_last)
            x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, classes, (batch,), device=device)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

            def train(n: int) -> None:
                model.train()
                for _ in range(n):
                    with autocast(device):
                        loss = F.cross_entropy(model(x), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

            train(warmup)
            rate = steps * batch / _timed(lambda: train(steps), device)
            flops = forward_flops(arch, classes, size, scale)
            entry.update(images_per_s=rate, forward_gflop=flops / 1e9,
                         tflops=rate * (1 + BACKWARD_FACTOR) * flops / 1e12, steps_timed=steps)
        except torch.cuda.OutOfMemoryError as err:
            entry["oom"] = str(err).splitlines()[0]
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        shapes.append(entry)
    return {"shapes": shapes, "data": "synthetic, on the device"}


def soft_labels(device: torch.device, tiny: bool) -> dict[str, Any]:
    from bench.engine.soft_labels import BatchedTeachers

    teachers = []
    for seed in range(4):
        torch.manual_seed(seed)
        teachers.append(_resnet50(device, tiny)[0].eval())
    _, _, size = _resnet50(torch.device("meta"), tiny)
    batch, repeat = (16, 1) if tiny else (256, 10)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    out: dict[str, Any] = {"teachers": 4, "batch": batch}
    labels = {}
    for mode in ("vmap", "loop"):
        bt = BatchedTeachers(teachers, mode=mode)
        labels[mode] = bt.mean_soft_labels(x, 4.0)  # warm-up
        seconds = _timed(lambda: [bt.mean_soft_labels(x, 4.0) for _ in range(repeat)], device)
        out[f"{mode}_images_per_s"] = repeat * batch / seconds
        out[f"{mode}_ran_as"] = bt.mode  # vmap falls back to loop where an op has no batching rule
    out["vmap_over_loop"] = out["vmap_images_per_s"] / out["loop_images_per_s"]
    out["max_abs_difference"] = (labels["vmap"] - labels["loop"]).abs().max().item()
    return out


class _SyntheticJPEGs:
    """Smooth random RGB images (PIL) of varying size, written as JPEG by write_beton_from."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        i = int(i)  # FFCV hands numpy integers
        g = torch.Generator().manual_seed(i)
        h, w = self.size + 8 * (i % 5), self.size + 8 * (i % 3)
        coarse = torch.rand(1, 3, 8, 8, generator=g)
        image = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
        return Image.fromarray((image.permute(1, 2, 0) * 255).to(torch.uint8).numpy()), i % 10


def ffcv(device: torch.device, tiny: bool) -> dict[str, Any]:
    from bench.data.beton import write_beton_from
    from bench.data.ffcv_loader import make_ffcv_loader
    from bench.data.optional_ffcv import ffcv_available

    if not ffcv_available():
        return {"skipped": "ffcv does not import here (bench/scripts/install_ffcv.sh)"}
    n, stored, size, batch = (32, 40, 32, 16) if tiny else (4096, 256, 224, 256)
    with tempfile.TemporaryDirectory() as tmp:
        beton = Path(tmp) / "synthetic.beton"
        t0 = time.perf_counter()
        write_beton_from(_SyntheticJPEGs(n, stored), beton, raw=False, jpeg_quality=90,
                         max_resolution=stored + 32, num_workers=1)
        write_s = time.perf_counter() - t0
        loader = make_ffcv_loader(beton, train=True, batch_size=batch, seed=0, image_size=size,
                                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), device=device,
                                  augment="rrc_flip")
        for _ in loader:  # warm-up epoch: numba compiles the pipeline
            pass
        images = 0

        def epoch() -> None:
            nonlocal images
            for x, *_ in loader:
                images += len(x)

        seconds = _timed(epoch, device)
    return {"images": n, "stored_size": stored, "image_size": size, "batch": batch, "write_s": write_s,
            "images_per_s": images / seconds}


def gpu_check(device: torch.device, tiny: bool, sections=SECTIONS) -> dict[str, Any]:
    result: dict[str, Any] = {
        "device": str(device), "tiny": tiny, "torch": torch.__version__, "host": platform.node(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    runs = {"meta_step": meta_step, "training_throughput": training_throughput, "soft_labels": soft_labels, "ffcv": ffcv}
    for name in sections:
        t0 = time.perf_counter()
        try:
            result[name] = runs[name](device, tiny)
        except Exception as err:  # one section's failure is a finding, not the end of the check
            result[name] = {"failed": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=4)}
        result[name]["section_s"] = time.perf_counter() - t0
    return result


@cli
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.perf.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/gpu_check.json")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (seconds on a CPU)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        from bench.errors import BenchError
        raise BenchError("gpu_check: no CUDA GPU here; use --device cpu --tiny to check the script itself")
    result = gpu_check(device, a.tiny, a.sections)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"gpu_check: wrote {out}")


if __name__ == "__main__":
    main()
