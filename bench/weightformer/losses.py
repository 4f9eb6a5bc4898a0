"""WeightFormer's losses: the paper's eq. 1 through the predicted student, and shift consistency.

eq. 1:  KL( p_student(x) || 1/N sum_n p_n(x) )  on training images, both softmaxes at temperature
T (scaled by T^2, as distillation does, so that the gradient's size does not shrink with T). The
student's logits come from running the predicted weights through the architecture with
`torch.func.functional_call`, so the loss back-propagates through the student into WeightFormer.

Shift consistency (sec. 3.3): the student should not depend on the order in which the teachers are
given, nor collapse when one of them is cut off. With a residual over the anchor, a shifted group's
student is in another unit order, so its weights cannot be compared with the first's row by row;
what can be compared is the function: the term is the symmetric KL between the students' softened
outputs on the same images.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from bench.weights.tokens import WeightLayer, from_tokens


def ensemble_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(s / T) || teacher_probs), mean over the batch (eq. 1 of the paper).

    `teacher_probs`: the mean over the group's teachers of softmax(logits / T)."""
    log_q = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p = teacher_probs.float().clamp_min(1e-12).log()
    return temperature ** 2 * (log_q.exp() * (log_q - log_p)).sum(1).mean()


def symmetric_kl(a_logits: torch.Tensor, b_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * (KL(a || b) + KL(b || a)) / 2 of the softened outputs; zero exactly when a == b."""
    la = F.log_softmax(a_logits.float() / temperature, dim=1)
    lb = F.log_softmax(b_logits.float() / temperature, dim=1)
    return temperature ** 2 * 0.5 * ((la.exp() - lb.exp()) * (la - lb)).sum(1).mean()


def student_logits(model: nn.Module, layers: Sequence[WeightLayer], tokens: Sequence[torch.Tensor],
                   passthrough: Mapping[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """The predicted student's logits: `model` (the architecture, in train mode: BatchNorm uses the
    batch's statistics, which is what the re-estimation after prediction reproduces) run with the
    weights written from `tokens`."""
    return functional_call(model, from_tokens(layers, tokens, passthrough), (images,))


def shift_groups(tokens: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    """The group's teachers cyclically shifted by one (teacher 2 becomes the anchor) and the group with
    its last teacher cut off (none when N = 1)."""
    n = tokens[0].shape[0]
    if n < 2:
        return []
    return [[t.roll(-1, dims=0) for t in tokens], [t[:-1] for t in tokens]]


def shift_consistency(predict: Callable[[Sequence[torch.Tensor]], torch.Tensor], tokens: Sequence[torch.Tensor],
                      reference: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean symmetric KL between `reference` (the group's student's logits) and the logits of the
    students `predict` makes from the shifted and the cut-off group."""
    others = shift_groups(tokens)
    if not others:
        return reference.new_zeros(())
    return sum(symmetric_kl(reference, predict(g), temperature) for g in others) / len(others)
