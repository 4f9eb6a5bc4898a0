"""The student a meta-trained WeightFormer predicts from a group's N teachers (weightformer and
weightformer_ft start from it).

One forward pass of WeightFormer (after aligning the teachers onto the anchor, when its config
says `align: weight_matching`), then the student's BatchNorm statistics re-estimated on training
batches (the paper's re-estimation; ViT has none). `predict_s` is the time from the teachers'
weights to a usable student (alignment + forward pass + re-estimation); `meta_train_s` the
one-off cost of meta-training the WeightFormer used.
"""
from __future__ import annotations

import copy
import time
from typing import Any

import torch

from bench.data.loaders import make_loader
from bench.errors import BenchError
from bench.methods.base import MethodJob
from bench.methods.common import load_teachers
from bench.method_options import WeightFormerOptions
from bench.weightformer.meta_train import load_weightformer, predict_student
from bench.weights.averaging import reestimate_norm_stats
from bench.weights.tokens import weight_layers


def predict(job: MethodJob[WeightFormerOptions]) -> tuple[torch.nn.Module, list, dict[str, Any]]:
    """(student with re-estimated statistics, the loaded teachers, record fields)."""
    student, teachers, fields, _ = predictor(job)
    return student, teachers, fields


def predictor(job: MethodJob[WeightFormerOptions]):
    """`predict`'s three, and `again(models)`: the student the same WeightFormer predicts from other
    teachers (the first their anchor), statistics re-estimated the same way."""
    if job.weightformer is None:
        raise BenchError(f"{job.method} needs a meta-trained WeightFormer: run it through bench.sweep "
                         f"(its meta_train stage makes one)")
    cfg = job.options.wf_config(job.scale)
    teachers = load_teachers(job)
    models = [m for m, _ in teachers]
    meta = teachers[0][1]
    device = job.torch_device()
    layers = weight_layers(models[0], job.arch)
    wf, wf_meta = load_weightformer(job.weightformer, layers, arch=job.arch, n_teachers=len(models),
                                    pool=job.pool, device=device)
    if wf_meta["config"] != cfg.identity():
        raise BenchError(f"{job.method}: the WeightFormer at {job.weightformer} was meta-trained with "
                         f"another config than this job's options")
    train_batches = make_loader(job.dataset, "train", batch_size=128, train=False, root=job.data_root,
                                image_size=meta["image_size"], device=device)

    def again(group: list[torch.nn.Module]) -> tuple[torch.nn.Module, int]:
        student = predict_student(wf, copy.deepcopy(group[0]), job.arch, group)
        return student, reestimate_norm_stats(student, train_batches, job.options.bn_batches)

    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronize()
    t0 = time.perf_counter()
    student, used = again(models)
    synchronize()
    predict_s = time.perf_counter() - t0
    fields = {"predict_s": predict_s, "meta_train_s": wf_meta["meta_train_s"], "bn_batches": used,
              "infer_forwards": 1, "wf_n_teachers": len(models), "wf_members": len(wf_meta["members"]),
              "wf_steps_run": wf_meta.get("steps_run", wf_meta["steps"]),
              **{f"wf_{k}": v for k, v in cfg.identity().items()}}
    return student, teachers, fields, again
