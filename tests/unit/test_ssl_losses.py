"""The hand-written SSL losses (SupCon, MoCo v3, ReSSL, VibCReg, NNCLR) and IterNorm against
direct, loop-by-loop computations of their formulas on small tensors. (tests/fidelity
compares them with solo-learn's code, transcribed.)"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from daebench.encoders.ssl.heads import IterNorm
from daebench.encoders.ssl.mocov3 import mocov3_loss
from daebench.encoders.ssl.ressl import ressl_loss
from daebench.encoders.ssl.supcon import supcon_loss
from daebench.encoders.ssl.vibcreg import decorrelation_term, variance_term, vibcreg_loss

g = torch.Generator().manual_seed(0)


def test_supcon_matches_its_formulas():
    z = torch.randn(8, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])  # class 3 has a single sample: no positives, no term
    t = 0.2
    zn = F.normalize(z, dim=1)
    l_in, l_out = [], []
    for i in range(8):
        positives = [p for p in range(8) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(float(zn[i] @ zn[a]) / t) for a in range(8) if a != i)
        l_out.append(-sum(math.log(math.exp(float(zn[i] @ zn[p]) / t) / denom) for p in positives) / len(positives))
        l_in.append(-math.log(sum(math.exp(float(zn[i] @ zn[p]) / t) for p in positives) / denom))
    assert supcon_loss(z, labels, t).item() == pytest.approx(sum(l_in) / len(l_in), rel=1e-9)  # solo-learn's
    assert supcon_loss(z, labels, t, "paper-out").item() == pytest.approx(sum(l_out) / len(l_out), rel=1e-9)
    z.requires_grad_(True)
    (grad,) = torch.autograd.grad(supcon_loss(z, labels, t), z)
    assert torch.isfinite(grad).all()  # the anchor without positives adds nothing, not NaN


def test_nnclr_matches_its_formula():
    from daebench.encoders.ssl.nnclr import nnclr_loss

    nn_, p = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    assert nnclr_loss(nn_, p, 0.2).item() == pytest.approx(_info_nce_direct(nn_, p, 0.2), rel=1e-9)


def _info_nce_direct(a, b, t):
    """Mean over i of -log softmax_j(cos(a_i, b_j) / t)[i], loop by loop."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    total = 0.0
    for i in range(len(a)):
        logits = [float(a[i] @ b[j]) / t for j in range(len(b))]
        total += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    return total / len(a)


def test_mocov3_matches_its_formula():
    q, k = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    assert mocov3_loss(q, k, 0.2).item() == pytest.approx(2 * 0.2 * _info_nce_direct(q, k, 0.2), rel=1e-5)


def test_ressl_matches_its_formula():
    q = F.normalize(torch.randn(5, 4, generator=g), dim=1)
    k = F.normalize(torch.randn(5, 4, generator=g), dim=1)
    queue = F.normalize(torch.randn(7, 4, generator=g), dim=1)
    tq, tk = 0.1, 0.04
    direct = 0.0
    for i in range(5):
        sk = [math.exp(float(k[i] @ queue[j]) / tk) for j in range(7)]
        sq = [float(q[i] @ queue[j]) / tq for j in range(7)]
        log_norm = math.log(sum(math.exp(v) for v in sq))
        direct += -sum(sk[j] / sum(sk) * (sq[j] - log_norm) for j in range(7))
    assert ressl_loss(q, k, queue, tq, tk).item() == pytest.approx(direct / 5, rel=1e-5)


def test_vibcreg_terms_match_their_formulas():
    z1, z2 = torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randn(10, 4, generator=g, dtype=torch.float64)

    def corr_offdiag(z):
        n, d = z.shape
        c = z - z.mean(0)
        c = c / c.norm(dim=0)
        total = 0.0
        for a in range(d):
            for b in range(d):
                if a != b:
                    total += float(sum(c[i, a] * c[i, b] for i in range(n))) ** 2
        return total / (d * d)

    def var_term(z):
        n, d = z.shape
        out = 0.0
        for a in range(d):
            col = z[:, a]
            var = float(((col - col.mean()) ** 2).sum()) / (n - 1)
            out += max(0.0, 1 - math.sqrt(var + 1e-4))
        return out / d

    assert decorrelation_term(z1).item() == pytest.approx(corr_offdiag(z1), rel=1e-6)
    assert variance_term(z1 * 0.3).item() == pytest.approx(var_term(z1 * 0.3), rel=1e-6)
    mse = float(((z1 - z2) ** 2).mean())
    expected = 25 * mse + 25 * (var_term(z1) + var_term(z2)) + 200 * (corr_offdiag(z1) + corr_offdiag(z2))
    assert vibcreg_loss(z1, z2).item() == pytest.approx(expected, rel=1e-5)


def test_iternorm_whitens_each_group_and_uses_running_stats_in_eval():
    x = torch.randn(512, 8, generator=g) @ torch.randn(8, 8, generator=g) + 3.0  # correlated, off-centre
    # Newton's iteration converges, then drifts in float32 (as in the reference): few steps.
    norm = IterNorm(8, num_groups=2, iterations=8)
    y = norm(x)
    for group, raw in zip(y.split(4, dim=1), x.split(4, dim=1)):
        c, r = group - group.mean(0), raw - raw.mean(0)
        assert (r.T @ r / len(r) - torch.eye(4)).abs().max() > 1  # the input is far from white
        assert torch.allclose(c.T @ c / len(c), torch.eye(4), atol=1e-2)
    odd = IterNorm(10, num_groups=4)  # solo-learn's grouping: ceil(10 / 4) = 3 channels, halved to divide 10
    assert (odd.groups, odd.channels) == (10, 1)
    norm.eval()
    single = norm(x[:1])  # eval: one sample works, from running statistics
    assert single.shape == (1, 8) and torch.isfinite(single).all()
