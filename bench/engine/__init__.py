"""The training engine: one loop under every training run (supervised, distillation,
meta-training), its run-folder checkpointer, optimizers, schedules, evaluation and devices.

    loop.py          fit(objective, folder, ...): the step, the schedule, the finite check, the log
    checkpointer.py  RunFolder: config.json, log.jsonl, versioned checkpoints, resume, identity
    train.py         train(cfg, out): a network on a data set (cross-entropy or a given criterion)
    stacked.py       train_stack(cfgs, outs): runs differing only in the seed as one packed network
    optim.py, schedule.py, evaluate.py, devices.py
"""
from bench.engine.devices import autocast, barrier, pick_device, rank_device
from bench.engine.evaluate import load_model, predict
from bench.engine.train import model_meta, train

__all__ = ["autocast", "barrier", "load_model", "model_meta", "pick_device", "predict", "rank_device", "train"]
