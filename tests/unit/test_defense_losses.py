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


def test_deacl_loss_is_minus_three_when_student_equals_teacher_and_eps_is_tiny():
    """-cos(s(x), t(x)) - 2 cos(s(x'), s(x)) with s = t and x' ~ x: -1 - 2 = -3."""
    from benchmark.encoders import build_encoder
    from defenses.deacl import DeACL

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
    from defenses.deacl import random_crop_flip

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = random_crop_flip(x, 0, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for i in range(2):  # padding 0: each image is itself or its mirror
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(2))


def test_genetic_regularisation_matches_a_loop_over_pairs(logits):
    from defenses.genaf import genetic_regularisation

    nat, adv, y = logits
    w = torch.nn.functional.cross_entropy(nat, y, reduction="none").tolist()
    n = len(y)

    def distances(z):
        rows = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in z.tolist()]
        d = [[1 - sum(a * b for a, b in zip(rows[i], rows[j])) for j in range(n)] for i in range(n)]
        for i in range(n):
            rho = min(d[i][j] for j in range(n) if j != i)
            d[i] = [0.0 if j == i else d[i][j] - rho for j in range(n)]
            d[i] = [min(2.0, max(1e-7, v)) for v in d[i]]
        return d

    def probabilities(d):
        out = []
        for row in d:
            p = [((1 - v) + 1) / 2 for v in row]
            s = sum(p)
            out.append([min(1 - 1e-7, max(1e-7, v / s)) for v in p])
        return out

    d_a, d_b = distances(nat), distances(adv)
    for i in range(n):
        for j in range(n):
            weight = math.tanh((w[i] + w[j]) / 32)
            sign = 1.0 if y[i] != y[j] else -1.0
            d_b[i][j] = (1 - weight) * d_b[i][j] + 2 * sign * weight
    p_a, p_b = probabilities(d_a), probabilities(d_b)
    expected = sum(p_b[i][j] * math.log(p_b[i][j] / p_a[i][j]) + (1 - p_b[i][j]) * math.log((1 - p_b[i][j]) / (1 - p_a[i][j]))
                   for i in range(n) for j in range(n))
    clean_ce = torch.nn.functional.cross_entropy(nat, y, reduction="none")
    assert float(genetic_regularisation(nat, adv, y, clean_ce)) == pytest.approx(expected, rel=1e-9)
    assert torch.isfinite(genetic_regularisation(nat, adv, y, clean_ce))


def test_genaf_runs_both_stages_and_touches_only_the_chosen_layers_in_stage_two():
    from benchmark.data import ImageData, load_dataset
    from benchmark.encoders import build_encoder
    from defenses.genaf import GenAF

    d = load_dataset("digits", image_size=16)
    data = ImageData("d", d.x_train[:128], d.y_train[:128], d.x_test[:64], d.y_test[:64], d.num_classes)
    torch.manual_seed(0)
    victim = build_encoder("resnet18", width=8)
    defense = GenAF(GenAF.resolve_params("tiny", {"epochs": 1, "batch_size": 64, "probe_samples": 64}))
    model = defense.defend(victim, data)
    info = model.info
    assert len(info["stage2_layers"]) == math.ceil(0.2 * len(info["stage2_sensitivity"]))
    scores = info["stage2_sensitivity"]
    assert all(scores[name] <= min(v for k, v in scores.items() if k not in info["stage2_layers"])
               for name in info["stage2_layers"])  # the least sensitive layers were chosen
    assert 0.0 <= info["stage2_best_clean_accuracy"] <= 1.0
    assert torch.isfinite(model.branches[0](data.x_test.float() / 255)).all()


def test_genaf_released_attack_gradients_add_the_ce_at_every_pgd_iterate():
    """The released stage-1 loop leaks its attack's parameter gradients into the update;
    the default reproduces that (in the PGD's own backward passes), and `false` is the
    paper's objective. Checked against the objective written out by hand."""
    import copy

    import torch.nn.functional as F

    from benchmark.encoders import build_encoder
    from benchmark.heads import make_head
    from defenses.genaf import GenAF, genetic_regularisation

    torch.manual_seed(0)
    # float64, so the comparison with the hand-written objective is exact up to rounding
    encoder, head = build_encoder("resnet18", width=8).double(), make_head(64, 10).double()
    x, y = torch.rand(16, 3, 16, 16, dtype=torch.float64), torch.arange(16) % 10
    plain = GenAF(GenAF.resolve_params("tiny", {"steps": 3, "released_attack_gradients": False}))
    leaky = GenAF(GenAF.resolve_params("tiny", {"steps": 3}))
    assert leaky.params.released_attack_gradients  # the released code's objective is the default

    def gradients(defense, encoder, head):
        params = [*encoder.parameters(), *head.parameters()]
        for param in params:
            param.grad = None
        encoder.train(), head.train()
        torch.manual_seed(1)  # the head's dropout
        terms = defense.stage1_terms(encoder, head, x, y)
        (terms["ce"] + defense.params.lam * terms["gr"] + terms.get("attack_leak", 0.0)).backward()
        assert encoder.training and head.training  # left in train mode for the step
        return terms, [param.grad.clone() for param in params]

    leaky_terms, leaky_grads = gradients(leaky, copy.deepcopy(encoder), copy.deepcopy(head))
    plain_terms, plain_grads = gradients(plain, copy.deepcopy(encoder), copy.deepcopy(head))
    assert "attack_leak" not in plain_terms

    # by hand: PGD iterates (eval-mode BatchNorm, no random start), their summed CE, then the step's terms
    encoder, head = copy.deepcopy(encoder), copy.deepcopy(head)
    iterates: list[torch.Tensor] = []
    torch.manual_seed(1)
    x_adv = leaky.ce_adversarial_examples(encoder, head, x, y, iterates=iterates)
    assert len(iterates) == 3 and torch.equal(iterates[0], x)  # no random start: the first point is x
    assert all((x_k - x).abs().max() <= leaky.params.eps + 1e-6 for x_k in iterates)
    params = [*encoder.parameters(), *head.parameters()]
    encoder.eval(), head.eval()
    leak = sum(F.cross_entropy(head(encoder(x_k)), y) for x_k in iterates)
    # differentiated now: the train-mode forwards below update the BatchNorm running
    # statistics in place, which an eval-mode graph kept for later would then read
    leak_grads = torch.autograd.grad(leak, params)
    encoder.train(), head.train()
    logits_clean, logits_adv = head(encoder(x)), head(encoder(x_adv))
    gr = genetic_regularisation(logits_clean, logits_adv, y, F.cross_entropy(logits_clean, y, reduction="none"))
    written = F.cross_entropy(logits_adv, y) + leaky.params.lam * gr
    assert float(leaky_terms["attack_leak"]) == pytest.approx(float(leak.detach()), rel=1e-5)
    assert float(leaky_terms["ce"].detach()) == pytest.approx(float(F.cross_entropy(logits_adv, y).detach()), rel=1e-5)
    expected_plain = torch.autograd.grad(written, params)
    expected_leaky = [g + g_leak for g, g_leak in zip(expected_plain, leak_grads)]
    for grads, expected in ((plain_grads, expected_plain), (leaky_grads, expected_leaky)):
        for got, want in zip(grads, expected):
            assert (got - want).norm() <= 1e-9 * want.norm() + 1e-12
    leak_part = torch.cat([(a - b).flatten() for a, b in zip(leaky_grads, plain_grads)])
    torch.testing.assert_close(leak_part, torch.cat([g.flatten() for g in leak_grads]))
    assert leak_part.norm() > 0.1  # the leak moves the update (its norm here: about 0.4)
