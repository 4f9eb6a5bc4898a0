"""Performance benchmarks: `python -m bench.perf [--repeat 3]`.

Measures, on this machine: batches per second of the device-resident loader (with and without
augmentation), training and inference images per second of each tiny architecture on digits,
WeightFormer meta-training steps and predictions per second, and checkpoint write/verify-read
time. Speed is measured here, never asserted in tests.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F

from bench.checkpoint import load_checkpoint, save_checkpoint
from bench.data.loaders import make_loader
from bench.errors import cli
from bench.models import ARCHS, build_model, count_parameters


def timed(fn: Callable[[], int], repeat: int) -> tuple[float, float]:
    """(median, spread) of items per second over `repeat` calls; fn returns items processed."""
    fn()  # warm-up: first-call allocations and kernel selection
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates), (max(rates) - min(rates)) / 2


def weightformer_rows(repeat: int) -> list[tuple]:
    """WeightFormer (tiny defaults, N = 4, freshly initialised teachers): meta-training steps per
    second (prediction, the student's forward and backward on 128 images, AdamW step) and
    students predicted per second (one forward pass, no re-estimation)."""
    from bench.options import wf_config
    from bench.weightformer.losses import ensemble_kl, student_logits
    from bench.weightformer.model import WeightFormer, column_stats
    from bench.weights.tokens import passthrough, stack_tokens, to_tokens, weight_layers

    rows = []
    x = torch.randn(128, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for arch in ARCHS:
        teachers = []
        for seed in range(4):
            torch.manual_seed(seed)
            teachers.append(build_model(arch, 10, 16, "tiny"))
        layers = weight_layers(teachers[0], arch)
        sds = [m.state_dict() for m in teachers]
        tokens = stack_tokens(layers, sds)
        wf = WeightFormer(layers, wf_config({"output": "direct"}, "tiny"), 4,
                          column_stats([to_tokens(layers, sd) for sd in sds]))
        opt = torch.optim.AdamW(wf.parameters(), lr=1e-4)
        student, extra = teachers[0].train(), passthrough(sds[0])
        probs = torch.full((128, 10), 0.1)

        def step() -> int:
            loss = ensemble_kl(student_logits(student, layers, wf(tokens), {k: v.clone() for k, v in extra.items()}, x),
                               probs, 4.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return 1

        @torch.no_grad()
        def predict() -> int:
            wf(tokens)
            return 1

        label = f"{arch} tiny, N=4 ({sum(p.numel() for p in wf.parameters()):,} WF params)"
        rows.append(("meta-train", label, "steps/s", *timed(step, repeat)))
        rows.append(("predict", label, "students/s", *timed(predict, repeat)))
    return rows


def benchmarks(repeat: int) -> pd.DataFrame:
    rows = []
    for augment in (False, True):
        loader = make_loader("digits", "train", batch_size=64, train=augment, image_size=16)
        rate, spread = timed(lambda: sum(len(y) for _, y, *_ in loader), repeat)
        rows.append(("loader", "digits " + ("train (augmented)" if augment else "eval"), "images/s", rate, spread))
    loader = make_loader("digits", "train", batch_size=64, train=True, image_size=16)
    for arch in ARCHS:
        torch.manual_seed(0)
        model = build_model(arch, 10, 16, "tiny")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def epoch() -> int:
            model.train()
            for x, y, *_ in loader:
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            return len(loader) * 64

        @torch.no_grad()
        def infer() -> int:
            model.eval()
            return sum(len(model(x)) for x, *_ in loader)

        rows.append(("train", f"{arch} tiny ({count_parameters(model):,} params)", "images/s", *timed(epoch, repeat)))
        rows.append(("infer", f"{arch} tiny", "images/s", *timed(infer, repeat)))
    rows += weightformer_rows(repeat)
    big = build_model("resnet50", 1000, 224, "paper").state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        size_mb = sum(v.numel() * v.element_size() for v in big.values()) / 1e6
        rows.append(("checkpoint", f"resnet50 paper write ({size_mb:.0f} MB)", "MB/s",
                     *timed(lambda: save_checkpoint(Path(tmp) / "m", big, {"arch": "resnet50"}) and size_mb, repeat)))
        rows.append(("checkpoint", "resnet50 paper verified read", "MB/s",
                     *timed(lambda: load_checkpoint(Path(tmp) / "m") and size_mb, repeat)))
    return pd.DataFrame(rows, columns=["kind", "what", "unit", "median", "half_range"])


@cli
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)
    table = benchmarks(a.repeat)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    print(table.round({"median": 1, "half_range": 1}).to_string(index=False))


if __name__ == "__main__":
    main()
