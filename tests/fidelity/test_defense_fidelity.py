"""TRADES, MART, DeACL and PGD-AT against their released code, transcribed here.

The `ref_*` functions are independent transcriptions of yaodongyu/TRADES `trades.py`
(`trades_loss`), YisenWang/MART `mart.py` (`mart_loss`), pantheon5100/DeACL
`solo/methods/mocov2_distillation_AT.py` (`training_step`, `generate_training_AE`) and the
pl_bolts `LinearWarmupCosineAnnealingLR` the DeACL scripts use; `.cuda()` draws become CPU
draws from the same global generator. Each test runs DAEBench's code and the transcription
from the same seed on a tiny float64 model with BatchNorm (and dropout where the head has
it) and compares the loss, its gradients (w.r.t. the inputs, and the parameters for the
full losses) and the BatchNorm statistics left behind, within 1e-6.
docs/FIDELITY.md#trades, #mart, #deacl and #pgd-at are the tables these tests back.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from daebench.heads import HeadParams, make_head
from daebench.defenses.deacl import DeACL, deacl_objective
from daebench.defenses.mart import MART, mart_loss
from daebench.defenses.pgd_at import PGDAT
from daebench.defenses.trades import TRADES, trades_kl

TOL = 1e-6


class TinyEncoder(nn.Module):
    """conv + BatchNorm + pool: small, but BatchNorm makes the forwards' batches matter."""

    feature_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Composed(nn.Module):
    """head(encoder(x)): the single `model` the reference losses take."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return TinyEncoder().double(), make_head(4, 3, HeadParams(hidden=8)).double()


def batch(seed: int = 1, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 6, 6, generator=g, dtype=torch.float64)
    x[:, :, 0] = 0.0  # saturated pixels: where clamping the attack's start changes the first gradient
    x[:, :, -1] = 1.0
    return x, torch.randint(0, 3, (n,), generator=g)


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, wrt: list[torch.Tensor]) -> None:
    assert abs(float(ours) - float(theirs)) <= TOL * max(1.0, abs(float(theirs))), (float(ours), float(theirs))
    g_ours = torch.autograd.grad(ours, wrt, retain_graph=True, allow_unused=True)
    g_theirs = torch.autograd.grad(theirs, wrt, retain_graph=True, allow_unused=True)
    for a, b in zip(g_ours, g_theirs):
        if a is None or b is None:
            assert a is None and b is None
            continue
        assert (a - b).abs().max() <= TOL, float((a - b).abs().max())
    assert any(g is not None and g.abs().max() > 1e-8 for g in g_theirs)


def bn_state(module: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for name, b in module.named_buffers() if "running" in name]


# ---------------------------------------------------------------- the references, transcribed

def ref_trades_loss(model, x_natural, y, step_size=0.003, epsilon=0.031, perturb_steps=10, beta=1.0):
    """TRADES `trades_loss`, distance 'l_inf' (the optimizer argument only zeroes gradients)."""
    criterion_kl = nn.KLDivLoss(reduction="sum")
    model.eval()
    batch_size = len(x_natural)
    x_adv = x_natural.detach() + 0.001 * torch.randn(x_natural.shape, dtype=x_natural.dtype).detach()
    for _ in range(perturb_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x_natural), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
    logits = model(x_natural)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = (1.0 / batch_size) * criterion_kl(F.log_softmax(model(x_adv), dim=1),
                                                    F.softmax(model(x_natural), dim=1))
    return loss_natural + beta * loss_robust


def ref_mart_terms(logits, logits_adv, y, beta):
    """The loss part of MART `mart_loss`, from its two forwards."""
    kl = nn.KLDivLoss(reduction="none")
    batch_size = len(y)
    adv_probs = F.softmax(logits_adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits, dim=1)
    true_probs = torch.gather(nat_probs, 1, (y.unsqueeze(1)).long()).squeeze()
    loss_robust = (1.0 / batch_size) * torch.sum(
        torch.sum(kl(torch.log(adv_probs + 1e-12), nat_probs), dim=1) * (1.0000001 - true_probs))
    return loss_adv + float(beta) * loss_robust


def ref_mart_loss(model, x_natural, y, step_size=0.007, epsilon=0.031, perturb_steps=10, beta=6.0):
    """MART `mart_loss`, distance 'l_inf'."""
    model.eval()
    x_adv = x_natural.detach() + 0.001 * torch.randn(x_natural.shape, dtype=x_natural.dtype).detach()
    for _ in range(perturb_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_ce = F.cross_entropy(model(x_adv), y)
        grad = torch.autograd.grad(loss_ce, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
    logits = model(x_natural)
    logits_adv = model(x_adv)
    return ref_mart_terms(logits, logits_adv, y, beta)


def ref_deacl_step(backbone, momentum_backbone, image_weak, epsilon=8 / 255, num_steps=5, step_size=2 / 255,
                   trades_k=2.0):
    """DeACL `training_step` (projectors are Identity, loss_type ce2gt_ae2ce) without the online
    classifier, which reads detached features in eval mode and so never reaches the student."""
    momentum_backbone.eval()
    away_target = momentum_backbone(image_weak)
    # generate_training_AE
    x_cl = image_weak.clone().detach()
    x_cl = x_cl + torch.zeros_like(image_weak).uniform_(-epsilon, epsilon)
    backbone.eval()
    for _ in range(num_steps):
        x_cl.requires_grad_()
        with torch.enable_grad():
            f_proj = backbone(x_cl)
            loss = -F.cosine_similarity(f_proj, away_target, dim=1).sum() * 256
        grad_x_cl = torch.autograd.grad(loss, x_cl)[0]
        x_cl = x_cl.detach() + step_size * torch.sign(grad_x_cl.detach())
        x_cl = torch.min(torch.max(x_cl, image_weak - epsilon), image_weak + epsilon)
        x_cl = torch.clamp(x_cl, 0, 1)
    backbone.train()
    image_ae = x_cl
    # the step
    logits_all = backbone(torch.cat([image_weak, image_ae]))
    bs = image_weak.size(0)
    clean, ae = logits_all[:bs], logits_all[bs:]
    adv_loss = -F.cosine_similarity(clean, away_target).mean()
    adv_loss += -trades_k * F.cosine_similarity(ae, clean).mean()
    return adv_loss


def ref_linear_warmup_cosine(warmup_epochs, max_epochs, base_lr, warmup_start_lr, eta_min=0.0):
    """pl_bolts LinearWarmupCosineAnnealingLR.get_lr, stepped once per epoch (Lightning's default
    interval, which the DeACL scripts keep): the lr of epochs 0 .. max_epochs - 1."""
    lrs, lr = [], None
    for epoch in range(max_epochs):
        if epoch == 0:
            lr = warmup_start_lr
        elif epoch < warmup_epochs:
            lr = lr + (base_lr - warmup_start_lr) / (warmup_epochs - 1)
        elif epoch == warmup_epochs:
            lr = base_lr
        else:
            lr = (1 + math.cos(math.pi * (epoch - warmup_epochs) / (max_epochs - warmup_epochs))) / (
                1 + math.cos(math.pi * (epoch - warmup_epochs - 1) / (max_epochs - warmup_epochs))) * (
                lr - eta_min) + eta_min
        lrs.append(lr)
    return lrs


def ref_madry_pgd(loss_fn, x_nat, epsilon, k, a, rand=True):
    """Madry et al.'s LinfPGDAttack.perturb (cifar10_challenge), pixels in [0, 1] instead of [0, 255]."""
    x = x_nat + torch.empty_like(x_nat).uniform_(-epsilon, epsilon) if rand else x_nat.clone()
    x = x.clamp(0, 1)
    for _ in range(k):
        x.requires_grad_(True)
        grad, = torch.autograd.grad(loss_fn(x), x)
        x = x.detach() + a * torch.sign(grad)
        x = torch.min(torch.max(x, x_nat - epsilon), x_nat + epsilon).clamp(0, 1)
    return x


# ---------------------------------------------------------------- TRADES

def test_trades_kl_is_the_references_summed_kl_div_over_the_batch():
    g = torch.Generator().manual_seed(0)
    nat = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    adv = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    theirs = nn.KLDivLoss(reduction="sum")(F.log_softmax(adv, dim=1), F.softmax(nat, dim=1)) / 7
    assert_close(trades_kl(nat, adv), theirs, [nat, adv])


@pytest.mark.parametrize("clamp_start", [None, True])
def test_trades_loss_is_the_references_step_for_step(clamp_start):
    encoder, head = models()
    x, y = batch()
    options = {"clamp_start": clamp_start} if clamp_start else {}  # None: the defaults must be the reference's
    defense = TRADES(TRADES.resolve_params("paper", {"steps": 4, **options}))
    p = defense.params
    reference = lambda model, x_ref: ref_trades_loss(model, x_ref, y, p.step_size, p.eps, p.steps, p.beta)  # noqa: E731
    # nat, adv, nat: three BN updates; with the option, the first gradient moves off the reference's point
    assert_step_matches(defense, encoder, head, x, y, reference, expect_equal=not clamp_start)


def assert_step_matches(defense, encoder, head, x, y, reference, expect_equal=True):
    """One training step's loss, input and parameter gradients, and BatchNorm statistics
    equal the reference's (same seed, same weights); or, `expect_equal` off, the loss differs."""
    ref_model = Composed(copy.deepcopy(encoder), copy.deepcopy(head)).train()
    encoder.train(), head.train()
    x_ours, x_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    torch.manual_seed(3)
    ours = defense.loss(encoder, head, x_ours, y)
    torch.manual_seed(3)
    theirs = reference(ref_model, x_ref)
    if not expect_equal:
        assert abs(float(ours) - float(theirs)) > 1e-9
        return
    assert abs(float(ours) - float(theirs)) <= TOL
    g_ours = torch.autograd.grad(ours, [x_ours, *encoder.parameters(), *head.parameters()])
    g_theirs = torch.autograd.grad(theirs, [x_ref, *ref_model.parameters()])
    for a, b in zip(g_ours, g_theirs):
        assert (a - b).abs().max() <= TOL
    for a, b in zip(bn_state(encoder), bn_state(ref_model.encoder)):
        assert torch.allclose(a, b, atol=1e-12)


def test_trades_shared_kl_target_is_a_different_objective_with_dropout():
    encoder, head = models()
    x, y = batch()
    values = []
    for mode in ("separate", "shared"):
        defense = TRADES(TRADES.resolve_params("paper", {"steps": 2, "kl_target_forward": mode}))
        e, h = copy.deepcopy(encoder).train(), copy.deepcopy(head).train()
        torch.manual_seed(3)
        values.append(float(defense.loss(e, h, x, y)))
    assert abs(values[0] - values[1]) > 1e-6


# ---------------------------------------------------------------- MART

def test_mart_loss_is_the_references_on_fixed_logits():
    g = torch.Generator().manual_seed(0)
    nat = torch.randn(9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    adv = torch.randn(9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (9,), generator=g)
    assert_close(mart_loss(nat, adv, y, 6.0), ref_mart_terms(nat, adv, y, 6.0), [nat, adv])


def test_mart_loss_is_the_references_step_for_step():
    encoder, head = models()
    x, y = batch()
    defense = MART(MART.resolve_params("paper", {"steps": 4}))
    p = defense.params
    assert_step_matches(defense, encoder, head, x, y,
                        lambda model, x_ref: ref_mart_loss(model, x_ref, y, p.step_size, p.eps, p.steps, p.beta))


# ---------------------------------------------------------------- DeACL

def test_deacl_objective_is_minus_cos_clean_teacher_minus_two_cos_adv_clean():
    g = torch.Generator().manual_seed(0)
    clean, adv, target = (torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    theirs = -F.cosine_similarity(clean, target).mean() - 2.0 * F.cosine_similarity(adv, clean).mean()
    assert_close(deacl_objective(clean, adv, target, 2.0), theirs, [clean, adv, target])


def test_deacl_step_is_the_references_joint_batchnorm_step():
    torch.manual_seed(0)
    teacher = TinyEncoder().double()
    with torch.no_grad():  # a teacher whose running statistics are not the initial ones
        teacher.net[1].running_mean.uniform_(-0.1, 0.1)
    student = copy.deepcopy(teacher).train()
    ref_student, ref_teacher = copy.deepcopy(student), copy.deepcopy(teacher)
    teacher.eval().requires_grad_(False)
    x, _ = batch()
    defense = DeACL(DeACL.resolve_params("paper"))
    torch.manual_seed(3)
    ours = defense.loss(student, teacher, x)
    torch.manual_seed(3)
    theirs = ref_deacl_step(ref_student, ref_teacher, x)
    assert abs(float(ours) - float(theirs)) <= TOL
    # the student's gradients (the reference's teacher output is not detached, so its loss also
    # reaches the images and the frozen teacher, which no optimiser reads)
    g_ours = torch.autograd.grad(ours, list(student.parameters()))
    g_theirs = torch.autograd.grad(theirs, list(ref_student.parameters()))
    for a, b in zip(g_ours, g_theirs):
        assert (a - b).abs().max() <= TOL
    for a, b in zip(bn_state(student), bn_state(ref_student)):  # one update, from the 2B batch
        assert torch.allclose(a, b, atol=1e-12)


def test_deacl_separate_batchnorm_passes_are_a_different_step():
    torch.manual_seed(0)
    teacher = TinyEncoder().double().eval().requires_grad_(False)
    x, _ = batch()
    values = {}
    for mode in ("joint", "separate"):
        student = copy.deepcopy(teacher).train().requires_grad_(True)
        torch.manual_seed(3)
        values[mode] = float(DeACL(DeACL.resolve_params("paper", {"bn_batches": mode})).loss(student, teacher, x))
    assert abs(values["joint"] - values["separate"]) > 1e-6


def test_deacl_runs_through_the_speed_switches_wrapper():
    """`bn_batches: joint` concatenates before the FastEncoder wrapper, which must pass the 2B batch on."""
    from daebench.defenses.base import FastEncoder

    torch.manual_seed(0)
    teacher = TinyEncoder().eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    x, _ = batch()
    loss = DeACL(DeACL.resolve_params("paper", {"steps": 1})).loss(FastEncoder(student, True, True),
                                                                     FastEncoder(teacher, True, True), x.float())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_deacl_learning_rate_is_the_references_per_epoch_warmup_cosine():
    defense = DeACL(DeACL.resolve_params("paper"))
    p = defense.params
    reference = ref_linear_warmup_cosine(p.warmup_epochs, p.epochs, p.lr, p.warmup_start_lr)
    per_epoch = 7
    ours = [defense.learning_rate(epoch, epoch * per_epoch + 3, per_epoch) for epoch in range(p.epochs)]
    assert ours == pytest.approx(reference, abs=1e-12)
    assert ours[0] == pytest.approx(0.003) and max(ours) == pytest.approx(0.5)


def test_deacl_paper_profile_is_the_released_script():
    """bash_files/DeACL_cifar10_resnet18.sh with the argument defaults it leaves alone."""
    p = DeACL.resolve_params("paper")
    assert (p.epochs, p.batch_size, p.lr, p.weight_decay, p.momentum) == (100, 256, 0.5, 5e-4, 0.9)
    assert (p.warmup_epochs, p.warmup_start_lr, p.lr_interval, p.drop_last) == (10, 0.003, "epoch", True)
    assert (p.eps, p.step_size, p.steps, p.adv_weight, p.clamp_start) == (8 / 255, 2 / 255, 5, 2.0, False)
    assert (p.bn_batches, p.crop_padding) == ("joint", 4)


def test_deacl_drops_the_last_incomplete_batch_like_the_reference_loader():
    defense = DeACL(DeACL.resolve_params("paper", {"batch_size": 4}))
    assert defense.batches_per_epoch(10) == 2
    assert DeACL(DeACL.resolve_params("paper", {"batch_size": 4, "drop_last": False})).batches_per_epoch(10) == 3


# ---------------------------------------------------------------- PGD-AT

def test_pgd_at_attack_is_madrys_linf_pgd_and_its_loss_the_ce_on_it():
    encoder, head = models()
    x, y = batch()
    defense = PGDAT(PGDAT.resolve_params("paper"))
    p = defense.params
    encoder.train(), head.train()
    torch.manual_seed(3)
    x_adv = defense.ce_adversarial_examples(encoder, head, x, y).x_adv
    model = Composed(encoder, head).eval()
    torch.manual_seed(3)
    ref = ref_madry_pgd(lambda z: F.cross_entropy(model(z), y), x, p.eps, p.steps, p.step_size)
    assert torch.allclose(x_adv, ref.detach(), atol=1e-12)
    model.train()
    ref_model = copy.deepcopy(model)  # (ours' train-mode forward updates the running statistics)
    x_in = x.clone().requires_grad_(True)
    torch.manual_seed(3)
    ours = defense.loss(encoder, head, x_in, y)
    torch.manual_seed(3)
    x_ref = ref_madry_pgd(lambda z: F.cross_entropy(ref_model.eval()(z), y), x, p.eps, p.steps, p.step_size).detach()
    theirs = F.cross_entropy(ref_model.train()(x_ref), y)
    assert abs(float(ours) - float(theirs)) <= TOL
    g_ours = torch.autograd.grad(ours, [*encoder.parameters(), *head.parameters()])
    g_theirs = torch.autograd.grad(theirs, list(ref_model.parameters()))
    for a, b in zip(g_ours, g_theirs):
        assert (a - b).abs().max() <= TOL
