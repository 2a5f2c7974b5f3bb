"""TRADES and MART losses against a direct, loop-by-loop computation of their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from defenses.mart import mart_loss
from defenses.trades import trades_kl


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    nat, adv = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    return nat, adv, y


def test_trades_kl_is_the_batch_mean_of_kl_clean_to_adversarial(logits):
    nat, adv, _ = logits
    total = 0.0
    for a, b in zip(nat.tolist(), adv.tolist()):
        p, q = _softmax(a), _softmax(b)
        total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    assert float(trades_kl(nat, adv)) == pytest.approx(total / len(nat), rel=1e-9)
    assert float(trades_kl(nat, nat)) == pytest.approx(0.0, abs=1e-12)


def test_mart_loss_matches_its_formula(logits):
    nat, adv, y = logits
    beta = 6.0
    ce, margin, robust = 0.0, 0.0, 0.0
    for a, b, label in zip(nat.tolist(), adv.tolist(), y.tolist()):
        p, q = _softmax(a), _softmax(b)
        ce += -math.log(q[label])
        wrong = max((c for c in range(len(q)) if c != label), key=lambda c: q[c])  # top wrong class
        margin += -math.log(1.0001 - q[wrong] + 1e-12)
        kl = sum(pi * (math.log(pi + 1e-12) - math.log(qi + 1e-12)) for pi, qi in zip(p, q))
        robust += kl * (1.0000001 - p[label])
    n = len(y)
    expected = ce / n + margin / n + beta * robust / n
    assert float(mart_loss(nat, adv, y, beta)) == pytest.approx(expected, rel=1e-9)
