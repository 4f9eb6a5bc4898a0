import math

import torch

from bench.metrics import classification_metrics


def test_perfect_confident_predictions():
    labels = torch.tensor([0, 1, 2, 1])
    m = classification_metrics(torch.eye(3)[labels], labels)
    assert m["top1"] == 100 and m["top5"] == 100 and m["ece"] == 0 and m["nll"] < 1e-9


def test_uniform_predictions_known_answers():
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    probs = torch.full((8, 8), 1 / 8)
    m = classification_metrics(probs, labels)
    assert math.isclose(m["nll"], math.log(8), rel_tol=1e-12)
    assert m["top5"] == 100 * 5 / 8  # ties: topk takes the first five classes
    # Every image sits in the bin of confidence 1/8; accuracy of the arg-max (class 0) is 1/8.
    assert math.isclose(m["ece"], 100 * abs(1 / 8 - 1 / 8), abs_tol=1e-12)


def test_ece_by_hand():
    # Two images at confidence 0.9 (one right, one wrong), two at 0.6 (both right).
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 1])
    m = classification_metrics(probs, labels)
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    assert math.isclose(m["ece"], 100 * expected, rel_tol=1e-9)
    assert m["top1"] == 75
    assert math.isclose(m["nll"], -(math.log(0.9) + math.log(0.1) + 2 * math.log(0.6)) / 4, rel_tol=1e-9)
