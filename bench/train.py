"""One training run: `python -m bench.train --arch vgg11 --dataset digits --scale tiny --seed 0 --out DIR`.

The run folder holds `config.json` (the resolved, flattened config), `log.jsonl` (a line per
epoch), `checkpoint.*` (model + optimizer after the last finished epoch) and, once finished,
`model.*` (final weights; its sidecar carries the metrics). Rerunning the same command resumes
from the checkpoint, or returns at once when `model.*` exists (`bench.engine.train`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.data import DATASETS
from bench.engine import train
from bench.errors import cli
from bench.models import ARCHS, SCALES
from bench.paths import data_root
from bench.train_config import OPTIMIZERS, SCHEDULES, TrainConfig


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, Path]:
    p = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", required=True, help=f"one of {', '.join(ARCHS)}")
    p.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--scale", default="tiny", help=f"one of {', '.join(SCALES)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-seed", type=int, help="seed of the initial weights (default: --seed)")
    p.add_argument("--out", required=True, type=Path, help="run folder (resumed if it exists)")
    p.add_argument("--data-root", help="folder holding the data set (or BENCH_DATA)")
    p.add_argument("--beton-train", help="FFCV .beton of the training split")
    p.add_argument("--beton-test", help="FFCV .beton of the test split")
    for name, kind in [("epochs", int), ("batch-size", int), ("lr", float), ("weight-decay", float),
                       ("warmup-epochs", float), ("label-smoothing", float), ("image-size", int)]:
        p.add_argument(f"--{name}", type=kind)
    p.add_argument("--optimizer", help=f"one of {', '.join(OPTIMIZERS)}")
    p.add_argument("--schedule", help=f"one of {', '.join(SCHEDULES)}")
    p.add_argument("--milestones", type=lambda s: tuple(int(v) for v in s.split(",")), default=(),
                   help="epochs of the step schedule's decays, e.g. 150,180,210")
    p.add_argument("--device", default="auto")
    a = vars(p.parse_args(argv))
    out = a.pop("out")
    a["data_root"] = str(data_root(a["data_root"])) if data_root(a["data_root"]) else None
    return TrainConfig(**a), out


@cli
def main(argv: list[str] | None = None) -> None:
    cfg, out = parse_args(argv)
    meta = train(cfg, out)
    m = meta["metrics"]
    print(f"{meta['arch']} on {meta['dataset']} ({meta['scale']}, seed {meta['seed']}): top1 {m['top1']:.2f} "
          f"top5 {m['top5']:.2f} nll {m['nll']:.4f} ece {m['ece']:.2f}  [{m['train_s']:.1f} s] -> {out}")


if __name__ == "__main__":
    main()
