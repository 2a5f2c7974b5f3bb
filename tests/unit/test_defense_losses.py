"""TRADES and MART losses against a direct, loop-by-loop computation of their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from daebench.defenses.mart import mart_loss
from daebench.defenses.trades import trades_kl


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


def test_deacl_loss_is_minus_three_when_student_equals_teacher_and_eps_is_tiny():
    """-cos(s(x), t(x)) - 2 cos(s(x'), s(x)) with s = t and x' ~ x: -1 - 2 = -3."""
    from daebench.encoders import build_encoder
    from daebench.defenses.deacl import DeACL

    torch.manual_seed(0)
    encoder = build_encoder("resnet18", width=8).eval()
    defense = DeACL(DeACL.Params(eps=1e-6, step_size=1e-7, steps=2))
    x = torch.rand(8, 3, 16, 16)
    student = build_encoder("resnet18", width=8)
    student.load_state_dict(encoder.state_dict())
    student.eval()
    loss = defense.loss(student, encoder, x)
    # the loss is taken in train mode (batch statistics), so only nearly -3
    assert -3.0 <= float(loss.detach()) < -2.5


def test_random_crop_flip_keeps_shape_and_pixels():
    from daebench.defenses.deacl import random_crop_flip

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = random_crop_flip(x, 0, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for i in range(2):  # padding 0: each image is itself or its mirror
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(2))
