"""Each SSL recipe's loss, heads, optimiser and schedule against solo-learn, transcribed here.

The `solo_*` functions below are independent transcriptions of solo-learn's code
(vturrisi/solo-learn: solo/losses/*.py, solo/methods/*.py, solo/utils/*.py and
scripts/pretrain/cifar/*.yaml at the mirrored HEAD), written from reading it. Each test
builds a DAEBench method on a tiny float64 encoder, computes solo-learn's loss from the
same head outputs (and the same queue / centre state), and compares the value and the
gradients with respect to both input views: within 1e-6 (float64 throughout; lightly's
DINO loss rounds its temperature to float32, a relative 1e-8, so its value differs by
about 1e-9). docs/FIDELITY.md#ssl-<method> is the table these tests back.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from daebench.encoders.ssl import SSL_METHODS
from daebench.encoders.ssl.base import LARS, momentum_tau
from daebench.training import warmup_cosine_lr
from daebench.encoders.ssl.heads import IterNorm

TOL = 1e-6
N = 8  # batch


class TinyEncoder(nn.Module):
    """A linear 'backbone' on 3x4x4 images: every SSL head and loss sits on top of it."""

    feature_dim = 6

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(48, self.feature_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build(method: str, **overrides):
    torch.manual_seed(0)
    cls = SSL_METHODS.get(method)
    small = {"proj_hidden_dim": 16, "proj_output_dim": 8}
    fields = cls.Params.model_fields
    small.update({k: v for k, v in {"pred_hidden_dim": 16, "queue_size": 16}.items() if k in fields})
    params = cls.resolve_params("tiny", {**small, **overrides})
    return cls(TinyEncoder(), params).double().train()


def views(seed: int = 1, n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 4, 4, generator=g, dtype=torch.float64).requires_grad_(True),
            torch.rand(n, 3, 4, 4, generator=g, dtype=torch.float64).requires_grad_(True))


def assert_same(ours: torch.Tensor, theirs: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> None:
    """Same value and same gradients w.r.t. `inputs` (the views), within TOL."""
    assert ours.dtype == torch.float64 and theirs.dtype == torch.float64
    assert abs(float(ours) - float(theirs)) <= TOL * max(1.0, abs(float(theirs))), (float(ours), float(theirs))
    g_ours = torch.autograd.grad(ours, inputs, retain_graph=True, allow_unused=True)
    g_theirs = torch.autograd.grad(theirs, inputs, retain_graph=True, allow_unused=True)
    for a, b in zip(g_ours, g_theirs):
        assert (a is None) == (b is None)
        if a is not None:
            assert (a - b).abs().max() <= TOL, float((a - b).abs().max())
    assert any(g is not None and g.abs().max() > 1e-8 for g in g_theirs)  # the comparison is not vacuous


def layout(module: nn.Module) -> list[tuple]:
    """The layer list a head is made of: (kind, sizes..., bias / affine)."""
    out = []
    for m in module.modules():
        if isinstance(m, nn.Linear):
            out.append(("Linear", m.in_features, m.out_features, m.bias is not None))
        elif isinstance(m, nn.BatchNorm1d):
            out.append(("BN", m.num_features, m.affine))
        elif isinstance(m, (nn.ReLU, nn.GELU)):
            out.append((type(m).__name__,))
        elif isinstance(m, IterNorm):
            out.append(("IterNorm", m.groups, m.channels, m.weight is not None))
    return out


# ---------------------------------------------------------------- solo-learn, transcribed

def solo_simclr_loss(z: torch.Tensor, indexes: torch.Tensor, temperature: float) -> torch.Tensor:
    """solo/losses/simclr.py simclr_loss_func (one device): positives share an index."""
    z = F.normalize(z, dim=-1)
    sim = torch.exp(z @ z.T / temperature)
    pos_mask = indexes[:, None] == indexes[None, :]
    pos_mask = pos_mask & ~torch.eye(len(z), dtype=torch.bool)
    neg_mask = indexes[:, None] != indexes[None, :]
    pos = (sim * pos_mask).sum(1)
    neg = (sim * neg_mask).sum(1)
    return -torch.log(pos / (pos + neg)).mean()


def solo_byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """solo/losses/byol.py byol_loss_func (simplified)."""
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1).mean()


def solo_mocov2plus_loss(query, key, queue, temperature):
    """solo/losses/mocov2plus.py: queue is (D, K)."""
    pos = (query * key).sum(1, keepdim=True)
    neg = query @ queue
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(query), dtype=torch.long))


def solo_mocov3_loss(query, key, temperature):
    query, key = F.normalize(query, dim=1), F.normalize(key, dim=1)
    logits = query @ key.T / temperature
    return F.cross_entropy(logits, torch.arange(len(query))) * (2 * temperature)


def solo_nnclr_loss(nn_, p, temperature):
    nn_, p = F.normalize(nn_, dim=-1), F.normalize(p, dim=-1)
    return F.cross_entropy(nn_ @ p.T / temperature, torch.arange(len(nn_)))


def solo_ressl_loss(q, k, queue, tq, tk):
    logits_q, logits_k = q @ queue.T, k @ queue.T
    return -(F.softmax(logits_k.detach() / tk, dim=1) * F.log_softmax(logits_q / tq, dim=1)).sum(1).mean()


def solo_sinkhorn(scores: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """solo/utils/sinkhorn_knopp.py (one device)."""
    q = torch.exp(scores / eps).t()
    b, k = q.shape[1], q.shape[0]
    q = q / q.sum()
    for _ in range(iters):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def solo_swav_loss(preds, assignments, temperature):
    losses = []
    for v1, a in enumerate(assignments):
        for v2 in np.delete(np.arange(len(preds)), v1):
            losses.append(-torch.mean(torch.sum(a * torch.log_softmax(preds[v2] / temperature, dim=1), dim=1)))
    return sum(losses) / len(losses)


def solo_dino_loss(student, teacher, center, temp, student_temp=0.1, crops=2):
    """solo/losses/dino.py DINOLoss.forward; returns (loss, new centre)."""
    s = (student / student_temp).chunk(crops)
    t = F.softmax((teacher - center) / temp, dim=-1).detach().chunk(2)
    total, terms = 0, 0
    for iq, q in enumerate(t):
        for iv, v in enumerate(s):
            if iv == iq:
                continue
            total = total + torch.sum(-q * F.log_softmax(v, dim=-1), dim=-1).mean()
            terms += 1
    new_center = center * 0.9 + teacher.detach().sum(0, keepdim=True) / len(teacher) * 0.1
    return total / terms, new_center


def solo_dino_teacher_temp(epoch, warmup, final, warmup_epochs, epochs):
    return np.concatenate((np.linspace(warmup, final, warmup_epochs), np.ones(epochs - warmup_epochs) * final))[epoch]


def solo_vicreg_variance(z1, z2):
    eps = 1e-4
    return F.relu(1 - torch.sqrt(z1.var(dim=0) + eps)).mean() + F.relu(1 - torch.sqrt(z2.var(dim=0) + eps)).mean()


def solo_vibcreg_covariance(z1, z2):
    out = 0
    for z in (z1, z2):
        zn = F.normalize(z - z.mean(dim=0), p=2, dim=0)
        cov = zn.T @ zn
        cov = cov - torch.diag(torch.diag(cov))  # fill_diagonal_(0)
        out = out + (cov ** 2).mean()
    return out


def solo_vibcreg_loss(z1, z2, sim_w=25.0, var_w=25.0, cov_w=200.0):
    return sim_w * F.mse_loss(z1, z2) + var_w * solo_vicreg_variance(z1, z2) + cov_w * solo_vibcreg_covariance(z1, z2)


def solo_whitening(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """solo/utils/whitening.py Whitening2d: Cholesky whitening of one sub-batch."""
    d = x.shape[1]
    xn = x - x.mean(0, keepdim=True)
    cov = xn.T @ xn / (len(x) - 1)
    cov = (1 - eps) * cov + eps * torch.eye(d, dtype=x.dtype)
    inv_sqrt = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), torch.eye(d, dtype=x.dtype), upper=False)
    return xn @ inv_sqrt.T


def solo_wmse_pair(z1, z2):
    return 2 - 2 * F.cosine_similarity(z1, z2.detach(), dim=-1).mean()


class SoloIterNorm(torch.autograd.Function):
    """solo/utils/whitening.py iterative_normalization_py: forward and its hand-written backward."""

    @staticmethod
    def forward(ctx, X, nc, T, eps):
        g = X.size(1) // nc
        x = X.t().contiguous().view(g, nc, -1)
        _, d, m = x.size()
        xc = x - x.mean(-1, keepdim=True)
        P = [torch.eye(d, dtype=X.dtype).expand(g, d, d)]
        sigma = eps * P[0] + xc @ xc.transpose(1, 2) / m
        r_tr = (sigma * P[0]).sum((1, 2), keepdim=True).reciprocal()
        sigma_n = sigma * r_tr
        for k in range(T):
            P.append(1.5 * P[k] - 0.5 * torch.matrix_power(P[k], 3) @ sigma_n)
        wm = P[T] * r_tr.sqrt()
        P[T] = wm  # (the reference scales P[T] in place, so its backward reads the whitening matrix there)
        ctx.T = T
        ctx.save_for_backward(xc, r_tr, sigma_n, *P)
        return (wm @ xc).view(X.size(1), X.size(0)).t().contiguous()

    @staticmethod
    def backward(ctx, grad):
        xc, r_tr, sn, *P = ctx.saved_tensors
        P = [p.clone() for p in P]
        sn = sn.transpose(-2, -1)
        T = ctx.T
        g, d, m = xc.size()
        g_ = grad.t().contiguous().view_as(xc)
        g_wm = g_ @ xc.transpose(-2, -1)
        g_P = g_wm * r_tr.sqrt()
        wm = P[T]
        g_sn = 0
        for k in range(T, 1, -1):
            P[k - 1] = P[k - 1].transpose(-2, -1)
            P2 = P[k - 1] @ P[k - 1]
            g_sn = g_sn + P2 @ P[k - 1] @ g_P
            g_tmp = g_P @ sn
            g_P = 1.5 * g_P - 0.5 * g_tmp @ P2
            g_P = g_P - 0.5 * P2 @ g_tmp
            g_P = g_P - 0.5 * (P[k - 1] @ g_tmp) @ P[k - 1]
        g_sn = g_sn + g_P
        g_tr = ((-sn @ g_sn + g_wm.transpose(-2, -1) @ wm) * P[0]).sum((1, 2), keepdim=True) * P[0]
        g_sigma = (g_sn + g_sn.transpose(-2, -1) + 2.0 * g_tr) * (-0.5 / m * r_tr)
        g_x = wm @ (g_ - g_.mean(-1, keepdim=True)) + g_sigma @ xc
        return g_x.view(grad.size(1), grad.size(0)).t().contiguous(), None, None, None


def solo_iternorm_channels(dim: int, groups: int) -> int:
    channels = (dim - 1) // groups + 1
    while dim % channels != 0:
        channels //= 2
    return channels


# ---------------------------------------------------------------- losses, method by method

def test_simclr_is_solo_learns_nt_xent_on_a_bn_free_projector():
    m = build("simclr")
    assert layout(m.projector) == [("Linear", 6, 16, True), ("ReLU",), ("Linear", 16, 8, True)]
    v1, v2 = views()
    z = torch.cat([m.projector(m.encoder(v1)), m.projector(m.encoder(v2))])
    theirs = solo_simclr_loss(z, torch.arange(N).repeat(2), m.params.temperature)
    assert_same(m.training_loss(v1, v2), theirs, (v1, v2))


@pytest.mark.parametrize("form", [None, "paper-out"])
def test_supcon_is_solo_learns_simclr_loss_on_labels(form):
    m = build("supcon", **({"form": form} if form else {}))  # the default must be solo-learn's
    assert layout(m.projector) == [("Linear", 6, 16, True), ("ReLU",), ("Linear", 16, 8, True)]
    v1, v2 = views()
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])
    z = torch.cat([m.projector(m.encoder(v1)), m.projector(m.encoder(v2))])
    y = labels.repeat(2)
    if form is None:
        theirs = solo_simclr_loss(z, y, m.params.temperature)
    else:  # Khosla et al. Eq. 2 (L_out), written out
        zn = F.normalize(z, dim=1)
        logits = zn @ zn.T / m.params.temperature
        eye = torch.eye(2 * N, dtype=torch.bool)
        log_prob = logits - torch.log(torch.exp(logits).masked_fill(eye, 0).sum(1, keepdim=True))
        pos = (y[:, None] == y[None, :]) & ~eye
        theirs = (-(log_prob * pos).sum(1) / pos.sum(1)).mean()
    assert_same(m.training_loss(v1, v2, labels), theirs, (v1, v2))


def test_byol_sums_solo_learns_two_minus_two_cosine_over_both_orders():
    m = build("byol")
    v1, v2 = views()
    p = [m.predictor(m.projector(m.encoder(v))) for v in (v1, v2)]
    zm = [m.momentum_projector(m.momentum_encoder(v)) for v in (v1, v2)]
    theirs = sum(solo_byol_loss(p[v2_], zm[v1_]) for v1_ in range(2) for v2_ in range(2) if v2_ != v1_)
    assert_same(m.training_loss(v1, v2), theirs, (v1, v2))


def test_mocov2plus_has_one_queue_per_view_read_before_the_enqueue():
    m = build("mocov2plus")
    m.training_loss(*views(seed=7))  # fill part of both queues with past keys
    queue = [m.against_view1.memory_bank.bank.clone(), m.against_view2.memory_bank.bank.clone()]  # (K, D) each
    assert layout(m.projector) == [("Linear", 6, 16, True), ("ReLU",), ("Linear", 16, 8, True)]
    v1, v2 = views()
    q = [F.normalize(m.projector(m.encoder(v)), dim=-1) for v in (v1, v2)]
    k = [F.normalize(m.momentum(v), dim=-1) for v in (v1, v2)]
    t = m.params.temperature
    theirs = (solo_mocov2plus_loss(q[0], k[1], queue[1].T, t) + solo_mocov2plus_loss(q[1], k[0], queue[0].T, t)) / 2
    assert_same(m.training_loss(v1, v2), theirs, (v1, v2))
    # dequeue-and-enqueue: each view's keys now sit after the previous batch's
    assert torch.allclose(m.against_view1.memory_bank.bank[N:2 * N], k[0])
    assert torch.allclose(m.against_view2.memory_bank.bank[N:2 * N], k[1])


def test_mocov3_is_solo_learns_loss_on_its_bias_free_heads():
    m = build("mocov3")
    assert layout(m.projector) == [("Linear", 6, 16, False), ("BN", 16, True), ("ReLU",), ("Linear", 16, 8, False),
                                   ("BN", 8, False)]
    assert layout(m.predictor) == [("Linear", 8, 16, False), ("BN", 16, True), ("ReLU",), ("Linear", 16, 8, False)]
    v1, v2 = views()
    qs = [m.predictor(m.projector(m.encoder(v))) for v in (v1, v2)]
    ks = [m.momentum(v) for v in (v1, v2)]
    t = m.params.temperature
    theirs = solo_mocov3_loss(qs[0], ks[1], t) + solo_mocov3_loss(qs[1], ks[0], t)
    assert_same(m.training_loss(v1, v2), theirs, (v1, v2))


def test_nnclr_contrasts_neighbours_with_predictions_and_enqueues_view_one():
    m = build("nnclr")
    m.training_loss(*views(seed=7))
    queue = m.support.bank.clone()  # (K, D), normalised rows
    assert layout(m.projector) == [("Linear", 6, 16, False), ("BN", 16, True), ("ReLU",), ("Linear", 16, 16, False),
                                   ("BN", 16, True), ("ReLU",), ("Linear", 16, 8, False), ("BN", 8, True)]
    assert layout(m.predictor) == [("Linear", 8, 16, False), ("BN", 16, True), ("ReLU",), ("Linear", 16, 8, True)]
    v1, v2 = views()
    zs = [m.projector(m.encoder(v)) for v in (v1, v2)]
    ps = [m.predictor(z) for z in zs]
    zs = [F.normalize(z, dim=-1) for z in zs]
    nns = [queue[(z @ queue.T).max(dim=1)[1]] for z in zs]  # find_nn
    t = m.params.temperature
    theirs = solo_nnclr_loss(nns[0], ps[1], t) / 2 + solo_nnclr_loss(nns[1], ps[0], t) / 2
    assert_same(m.training_loss(v1, v2), theirs, (v1, v2))
    assert torch.allclose(m.support.bank[N:2 * N], zs[0].detach())


@pytest.mark.parametrize("epoch", [0, 2, 9])
def test_dino_is_solo_learns_loss_with_its_temperature_schedule_and_centre(epoch):
    m = build("dino", warmup_teacher_temperature_epochs=5, num_prototypes=32)
    m.epoch = epoch
    m.training_loss(*views(seed=7))  # move the centre off zero
    center = m.criterion.center.reshape(1, -1).clone()
    v1, v2 = views()
    student = torch.cat([m.head(m.encoder(v)) for v in (v1, v2)])
    teacher = torch.cat([m.teacher(v) for v in (v1, v2)])
    temp = solo_dino_teacher_temp(epoch, 0.04, 0.07, 5, 10)
    theirs, new_center = solo_dino_loss(student, teacher, center, temp)
    assert_same(m.training_loss(v1, v2), theirs, (v1, v2))
    assert torch.allclose(m.criterion.center.reshape(1, -1), new_center, atol=1e-12)


def test_dino_paper_profile_has_no_teacher_temperature_warm_up():
    p = SSL_METHODS.get("dino").resolve_params("paper")
    assert solo_dino_teacher_temp(0, p.warmup_teacher_temperature, p.teacher_temperature,
                                  p.warmup_teacher_temperature_epochs, p.epochs) == 0.07


def test_swav_prototypes_sinkhorn_loss_and_queue_follow_solo_learn():
    m = build("swav", num_prototypes=12, queue_size=16, epoch_queue_starts=0)
    m.training_loss(*views(seed=7))  # half the queue filled, the rest still zeros (as solo-learn uses it)
    queue = m.queue.clone()
    layer = m.prototypes
    assert layer.bias is None
    v1, v2 = views()
    zs = [F.normalize(m.projector(m.encoder(v)), dim=1) for v in (v1, v2)]
    protos = F.normalize(layer.parametrizations.weight.original1, dim=1)  # weight_norm with g = 1
    preds = [z @ protos.T for z in zs]
    with torch.no_grad():
        assignments = [solo_sinkhorn(torch.cat([p, queue[i] @ protos.T]), 3, 0.05)[:N] for i, p in enumerate(preds)]
    theirs = solo_swav_loss(preds, assignments, m.params.temperature)
    ours = m.training_loss(v1, v2)
    assert_same(ours, theirs, (v1, v2))
    expected_queue = torch.cat([torch.stack([z.detach() for z in zs]), queue[:, :-N]], dim=1)
    assert torch.allclose(m.queue, expected_queue)


def test_ressl_reads_the_queue_before_enqueueing_the_keys():
    m = build("ressl")
    m.training_loss(*views(seed=7))
    queue = m.queue.bank.clone()
    assert layout(m.projector) == [("Linear", 6, 16, True), ("ReLU",), ("Linear", 16, 8, True)]
    v1, v2 = views()
    q = F.normalize(m.projector(m.encoder(v1)), dim=-1)
    k = F.normalize(m.momentum(v2), dim=-1)
    theirs = solo_ressl_loss(q, k, queue, m.params.temperature_q, m.params.temperature_k)
    assert_same(m.training_loss(v1, v2), theirs, (v1, v2))
    assert torch.allclose(m.queue.bank[N:2 * N], k)


def test_vibcreg_loss_and_projector_follow_solo_learn():
    m = build("vibcreg", proj_output_dim=8, iternorm_groups=4)
    assert layout(m.projector) == [("Linear", 6, 16, False), ("BN", 16, True), ("GELU",), ("Linear", 16, 16, False),
                                   ("BN", 16, True), ("GELU",), ("Linear", 16, 8, True), ("IterNorm", 4, 2, True)]
    with torch.no_grad():  # a trained affine, so the test sees it
        m.projector[1].weight.uniform_(0.5, 1.5)
        m.projector[1].bias.uniform_(-0.5, 0.5)
    v1, v2 = views(n=16)
    z1, z2 = m.projector(m.encoder(v1)), m.projector(m.encoder(v2))
    assert_same(m.training_loss(v1, v2), solo_vibcreg_loss(z1, z2), (v1, v2))


@pytest.mark.parametrize("dim,groups", [(8, 4), (12, 64), (10, 4)])
def test_iternorm_forward_and_gradient_match_solo_learns_hand_written_backward(dim, groups):
    channels = solo_iternorm_channels(dim, groups)
    layer = IterNorm(dim, num_groups=groups, iterations=5).double()
    assert (layer.groups, layer.channels) == (dim // channels, channels)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(32, dim, generator=g, dtype=torch.float64) @ torch.randn(dim, dim, generator=g,
                                                                             dtype=torch.float64)).requires_grad_(True)
    upstream = torch.randn(32, dim, generator=g, dtype=torch.float64)
    ours = layer(x)
    theirs = SoloIterNorm.apply(x, channels, 5, 1e-5) * layer.weight + layer.bias
    assert (ours - theirs).abs().max() <= TOL
    g_ours, = torch.autograd.grad((ours * upstream).sum(), x)
    g_theirs, = torch.autograd.grad((theirs * upstream).sum(), x)
    assert (g_ours - g_theirs).abs().max() <= TOL * max(1.0, float(g_theirs.abs().max()))


@pytest.mark.parametrize("target_gradient", ["solo-learn", "both"])
def test_wmse_whitens_sub_batches_and_detaches_the_second_view_as_solo_learn(target_gradient):
    m = build("wmse", proj_output_dim=4, whitening_size=8, batch_size=16, target_gradient=target_gradient)
    assert layout(m.projector) == [("Linear", 6, 16, False), ("BN", 16, True), ("ReLU",), ("Linear", 16, 4, True)]
    v1, v2 = views(n=16)
    v = m.projector(m.encoder(torch.cat([v1, v2])))
    torch.manual_seed(5)
    perm = torch.randperm(16).view(-1, 8)
    z = torch.empty_like(v)
    for idx in perm:
        for i in range(2):
            z[idx + i * 16] = solo_whitening(v[idx + i * 16])
    pair = solo_wmse_pair if target_gradient == "solo-learn" else (
        lambda a, b: 2 - 2 * F.cosine_similarity(a, b, dim=-1).mean())  # the W-MSE paper's code
    theirs = pair(z[:16], z[16:])
    torch.manual_seed(5)
    assert_same(m.training_loss(v1, v2), theirs, (v1, v2))


# ---------------------------------------------------------------- optimiser, schedules, recipes

def solo_lars_step(p, grad, buf, lr, wd, eta, clip, exclude, momentum=0.9, eps=1e-8):
    """solo/utils/lars.py LARS.step for one parameter; returns (new p, new buffer)."""
    d_p = grad
    p_norm, g_norm = torch.norm(p), torch.norm(grad)
    if p.ndim != 1 or not exclude:
        if p_norm != 0 and g_norm != 0:
            lars_lr = p_norm / (g_norm + p_norm * wd + eps) * eta
            if clip:
                lars_lr = min(lars_lr / lr, 1)
            d_p = d_p.add(p, alpha=wd)
            d_p = d_p * lars_lr
    buf = d_p.clone() if buf is None else buf * momentum + d_p
    return p - lr * buf, buf


@pytest.mark.parametrize("clip,exclude", [(True, True), (False, True), (True, False)])
def test_lars_is_solo_learns_lars(clip, exclude):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(5, 4, generator=g, dtype=torch.float64)
    bias = torch.randn(5, generator=g, dtype=torch.float64)
    params = [nn.Parameter(weight.clone()), nn.Parameter(bias.clone())]
    opt = LARS(params, lr=0.3, momentum=0.9, weight_decay=1e-4, eta=0.02, clip_lr=clip, exclude_bias_n_norm=exclude)
    expected, bufs = [weight.clone(), bias.clone()], [None, None]
    for step, lr in enumerate([0.3, 0.002, 2.0]):  # a small lr makes clip_lr bite (eta |p| / |g| > lr)
        for group in opt.param_groups:
            group["lr"] = lr
        grads = [torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)]
        for p, gr in zip(params, grads):
            p.grad = gr.clone()
        opt.step()
        for i in range(2):
            expected[i], bufs[i] = solo_lars_step(expected[i], grads[i], bufs[i], lr, 1e-4, 0.02, clip, exclude)
        for p, e in zip(params, expected):
            assert torch.allclose(p.detach(), e, atol=1e-12), step


def test_warmup_cosine_is_the_chainable_linear_warmup_cosine_annealing_lr():
    """solo/utils/lr_scheduler.py LinearWarmupCosineAnnealingLR.get_lr, stepped as Lightning does."""
    warmup, total, base, start, eta_min = 4, 15, 0.5, 0.003, 0.0
    lrs, lr = [], None
    for t in range(total):
        if t == 0:
            lr = start
        elif t < warmup:
            lr = lr + (base - start) / (warmup - 1)
        elif t == warmup:
            lr = base
        else:
            lr = (1 + math.cos(math.pi * (t - warmup) / (total - warmup))) / (
                1 + math.cos(math.pi * (t - warmup - 1) / (total - warmup))) * (lr - eta_min) + eta_min
        lrs.append(lr)
    ours = [warmup_cosine_lr(t, warmup, total, base, start, eta_min) for t in range(total)]
    assert ours == pytest.approx(lrs, abs=1e-12)


def test_momentum_tau_sequence_is_solo_learns_momentum_updater():
    """solo/utils/momentum.py: the first update uses base_tau, then tau(global_step / max_steps)."""
    base, final, total = 0.99, 1.0, 12
    cur, solo = base, []
    for global_step in range(1, total + 1):
        solo.append(cur)
        cur = final - (final - base) * (math.cos(math.pi * global_step / total) + 1) / 2
    ours = [momentum_tau(step / total, base, final) for step in range(total)]  # what pretrain() passes
    assert ours == pytest.approx(solo, abs=1e-15)


def test_pretrain_hands_after_step_the_steps_before_it():
    from daebench.encoders.ssl.base import pretrain

    seen = []
    cls = SSL_METHODS.get("byol")
    original = cls.after_step
    x = (torch.rand(16, 3, 4, 4) * 255).to(torch.uint8)
    params = cls.resolve_params("tiny", {"epochs": 2, "batch_size": 8, "proj_hidden_dim": 8, "pred_hidden_dim": 8,
                                         "proj_output_dim": 4})
    try:
        cls.after_step = lambda self, progress: seen.append(progress)
        pretrain("byol", params, TinyEncoder(), x, seed=0, device=torch.device("cpu"))
    finally:
        cls.after_step = original
    assert seen == [0.0, 0.25, 0.5, 0.75]


SYMMETRIC = dict(crop_min_scale=0.08, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, jitter_prob=0.8,
                 grayscale_prob=0.2, blur_prob=0.5, solarize_prob=0.0, flip_prob=0.5)
SYMMETRIC_WEAK = {**SYMMETRIC, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}
ASYM_1 = dict(crop_min_scale=0.08, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, jitter_prob=0.8,
              grayscale_prob=0.2, blur_prob=0.0, solarize_prob=0.0, flip_prob=0.5)
ASYM_2 = {**ASYM_1, "solarize_prob": 0.2}
RESSL_1 = {**ASYM_1, "blur_prob": 0.5}
RESSL_2 = dict(crop_min_scale=0.08, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0, flip_prob=0.5)
VIBCREG = {**ASYM_1, "crop_min_scale": 0.2, "solarize_prob": 0.1}
WMSE = {**SYMMETRIC, "crop_min_scale": 0.2, "blur_prob": 0.0}
LARS_CLIP = dict(optimizer="lars", lars_eta=0.02, lars_clip_lr=True, lars_exclude_bias_n_norm=True)

# scripts/pretrain/cifar/<method>.yaml (+ augmentations/*.yaml, solo-learn's defaults for what they omit)
SOLO_CIFAR = {
    "simclr": ({**LARS_CLIP, "lr": 0.4, "weight_decay": 1e-4, "temperature": 0.2, "proj_hidden_dim": 2048,
                "proj_output_dim": 256}, SYMMETRIC, SYMMETRIC),
    "supcon": ({"optimizer": "sgd", "lr": 0.4, "weight_decay": 1e-5, "temperature": 0.2, "proj_hidden_dim": 2048,
                "proj_output_dim": 256}, SYMMETRIC, SYMMETRIC),
    "byol": ({**LARS_CLIP, "lr": 1.0, "weight_decay": 1e-5, "proj_hidden_dim": 4096, "proj_output_dim": 256,
              "pred_hidden_dim": 4096, "base_tau": 0.99, "final_tau": 1.0}, ASYM_1, ASYM_2),
    "mocov2plus": ({"optimizer": "sgd", "lr": 0.3, "weight_decay": 1e-4, "proj_hidden_dim": 2048,
                    "proj_output_dim": 256, "queue_size": 32768, "temperature": 0.2, "base_tau": 0.99,
                    "final_tau": 0.999}, SYMMETRIC_WEAK, SYMMETRIC_WEAK),
    "mocov3": ({**LARS_CLIP, "lr": 0.3, "weight_decay": 1e-6, "proj_hidden_dim": 4096, "proj_output_dim": 256,
                "pred_hidden_dim": 4096, "temperature": 0.2, "base_tau": 0.99, "final_tau": 1.0}, ASYM_1, ASYM_2),
    "nnclr": ({**LARS_CLIP, "lr": 0.4, "weight_decay": 1e-5, "temperature": 0.2, "proj_hidden_dim": 2048,
               "pred_hidden_dim": 4096, "proj_output_dim": 256, "queue_size": 65536}, ASYM_1, ASYM_2),
    "dino": ({**LARS_CLIP, "lr": 0.3, "weight_decay": 1e-6, "proj_hidden_dim": 2048, "proj_output_dim": 256,
              "num_prototypes": 4096, "base_tau": 0.9995, "final_tau": 1.0, "student_temperature": 0.1,
              "teacher_temperature": 0.07, "warmup_teacher_temperature": 0.04,
              "warmup_teacher_temperature_epochs": 0, "freeze_last_layer_epochs": 1}, ASYM_1, ASYM_2),
    "swav": ({**LARS_CLIP, "lr": 0.6, "weight_decay": 1e-6, "proj_hidden_dim": 2048, "proj_output_dim": 128,
              "num_prototypes": 3000, "queue_size": 3840, "epoch_queue_starts": 50, "freeze_prototypes_epochs": 2,
              "temperature": 0.1, "sinkhorn_iterations": 3, "sinkhorn_epsilon": 0.05}, SYMMETRIC, SYMMETRIC),
    "ressl": ({"optimizer": "sgd", "lr": 0.05, "weight_decay": 1e-4, "proj_hidden_dim": 4096, "proj_output_dim": 256,
               "temperature_q": 0.1, "temperature_k": 0.04, "queue_size": 65536, "base_tau": 0.99,
               "final_tau": 1.0}, RESSL_1, RESSL_2),
    "vibcreg": ({**LARS_CLIP, "lars_clip_lr": False, "lr": 0.3, "weight_decay": 1e-4, "proj_hidden_dim": 2048,
                 "proj_output_dim": 2048, "sim_loss_weight": 25.0, "var_loss_weight": 25.0, "cov_loss_weight": 200.0,
                 "iternorm": True}, VIBCREG, VIBCREG),
    "wmse": ({"optimizer": "adam", "lr": 2e-3, "weight_decay": 1e-6, "warmup_start_lr": 0.0, "proj_hidden_dim": 1024,
              "proj_output_dim": 64, "whitening_size": 128, "whitening_iters": 1}, WMSE, WMSE),
}


@pytest.mark.parametrize("method", sorted(SOLO_CIFAR))
def test_paper_profile_is_solo_learns_cifar_config(method):
    p = SSL_METHODS.get(method).resolve_params("paper")
    values, view1, view2 = SOLO_CIFAR[method]
    common = {"epochs": 1000, "batch_size": 256, "warmup_epochs": 10, "min_lr": 0.0, "momentum": 0.9,
              "warmup_start_lr": 3e-5}
    dumped = p.model_dump()
    for key, want in {**common, **values}.items():
        assert dumped[key] == want, (key, dumped[key], want)
    first, second = p.augment.model_dump(), (p.augment2 or p.augment).model_dump()
    for got, want in ((first, view1), (second, view2)):
        for key, value in want.items():
            assert got[key] == value, (key, got[key], value)


def test_gaussian_blur_is_a_normalised_gaussian_and_keeps_flat_images():
    from daebench.encoders.ssl.augment import gaussian_blur

    flat = torch.full((4, 3, 8, 8), 0.3)
    assert torch.allclose(gaussian_blur(flat, 1.0, torch.Generator().manual_seed(0)), flat, atol=1e-6)
    impulse = torch.zeros(1, 1, 17, 17)
    impulse[0, 0, 8, 8] = 1.0
    out = gaussian_blur(impulse, 1.0, torch.Generator().manual_seed(0))
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)
    row = out[0, 0, 8]
    var = float((row / row.sum() * (torch.arange(17) - 8.0) ** 2).sum())
    g = torch.Generator().manual_seed(0)
    torch.rand(1, generator=g)  # the apply draw
    s = float(torch.rand(1, generator=g) * 1.9 + 0.1)
    assert math.sqrt(var) == pytest.approx(s, rel=0.02)


def test_the_hand_written_parts_are_not_trivially_equal():
    """The comparisons above can fail: lightly's symmetric NT-Xent is not solo-learn's NNCLR loss,
    and the paper's SupCon L_out is not solo-learn's L_in."""
    from lightly.loss import NTXentLoss

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(8, 5, generator=g, dtype=torch.float64)
    assert abs(float(NTXentLoss(temperature=0.2)(a, b)) - float(solo_nnclr_loss(a, b, 0.2))) > 1e-3
    from daebench.encoders.ssl.supcon import supcon_loss

    z, y = torch.cat([a, b]), torch.tensor([0, 1, 0, 2, 1, 0, 3, 2]).repeat(2)
    assert abs(float(supcon_loss(z, y, 0.2, "solo-learn")) - float(supcon_loss(z, y, 0.2, "paper-out"))) > 1e-3


def test_copies_of_methods_with_weight_norm_still_build():
    """SwAV's parametrised prototypes survive deepcopy (the momentum copies of other recipes rely on it)."""
    m = build("swav", num_prototypes=12)
    clone = copy.deepcopy(m)
    z = torch.randn(3, 8, dtype=torch.float64)
    assert torch.allclose(clone.prototypes(z), m.prototypes(z))
