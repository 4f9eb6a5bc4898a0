"""The training engine: one loop under every training run (supervised, distillation,
meta-training), its run-folder checkpointer, optimizers, schedules, evaluation and device helpers."""
from bench.recipes import TrainConfig
from bench.system import world
from bench.train import (barrier, load_model, lr_factor, make_optimizer, model_meta, param_groups,
                         pick_device, predict, rank_device, train)

__all__ = ["TrainConfig", "barrier", "load_model", "lr_factor", "make_optimizer", "model_meta", "param_groups",
           "pick_device", "predict", "rank_device", "train", "world"]
