"""Gen-AF and ZePAD against independent transcriptions of their released code.

Each `released_*` function below is written from reading the released files
(CGCL-codes/Gen-AF and Lawliet0o/ZePAD: `utils/gr.py`, `adversarial_fine-tuning.py`,
`utils/drc.py`, `standard_finetuning.py`, `utils/confidence.py`, `utils/predict.py`,
`models/linear.py`), in their own loop-and-index style, and compared with DAEBench's
implementation in float64 on fixed random tensors: values and gradients within 1e-6.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from daebench.encoders import build_encoder
from daebench.heads import make_head
from daebench.defenses.base import Fusion, fgsm_accuracy, unnormalised
from daebench.defenses.genaf import GenAF, feature_structure_loss, genetic_regularisation
from daebench.defenses.zepad import ZePAD

TOL = dict(rtol=1e-6, atol=1e-6)


# -- transcriptions of the released code -------------------------------------------------------------
def released_gr(model_logits, target_logits, y, sample_weight, eps=1e-7):
    """utils/gr.py genetic_regularization(adv_results=clean logits, ben_results=adversarial logits)."""
    n = model_logits.shape[0]
    weight_matrix = torch.tanh((sample_weight.view(-1, n) + sample_weight.view(-1, n).t()) / 32.0)
    yy = y.view(-1, n)
    mask = 1 - (yy == yy.t()).to(model_logits.dtype)
    mask = torch.where(mask == 0, torch.full_like(mask, -1.0), mask)
    shift = 2.0 * mask * weight_matrix

    def normalised(a):
        a = a / (torch.sqrt(torch.sum(a ** 2, dim=1, keepdim=True)) + eps)
        return torch.where(a != a, torch.zeros_like(a), a)

    def neighbour_shifted(a):
        dist = 1 - torch.mm(a, a.t())
        dist = dist.clone()
        dist[range(n), range(n)] = 100000
        dist = dist - torch.min(dist, dim=1)[0].view(-1, 1)
        dist[range(n), range(n)] = 0
        return dist

    model_distance = torch.clamp(neighbour_shifted(normalised(model_logits)), eps, 2.0 - eps)
    target_distance = (1 - weight_matrix) * neighbour_shifted(normalised(target_logits)) + shift
    target_distance = torch.clamp(target_distance, eps, 2.0 - eps)
    model_similarity = ((1 - model_distance) + 1.0) / 2.0
    target_similarity = ((1 - target_distance) + 1.0) / 2.0
    model_similarity = model_similarity / torch.sum(model_similarity, dim=1, keepdim=True)
    target_similarity = target_similarity / torch.sum(target_similarity, dim=1, keepdim=True)

    def kl(p, q):
        return torch.sum(p * ((p + eps).log() - (q + eps).log()))

    return kl(target_similarity, model_similarity) + kl(1 - target_similarity, 1 - model_similarity)


def paper_lf(adv, benign, eps=1e-7):
    """ZePAD paper Eq. 5-6, element by element (rho_j over the batch, rows over k != i)."""
    n = adv.shape[0]

    def pair_distribution(f):
        f = f / f.norm(dim=1, keepdim=True)
        d = [[1 - f[i] @ f[j] for j in range(n)] for i in range(n)]
        rho = [min(d[j][k] for k in range(n) if k != j) for j in range(n)]
        rows = []
        for i in range(n):
            s = [2 - (d[i][j] - rho[j]) for j in range(n)]
            total = sum(s[k] for k in range(n) if k != i)
            rows.append([s[j] / total for j in range(n)])
        return rows

    da, db = pair_distribution(adv), pair_distribution(benign)
    loss = 0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            a, b = da[i][j], db[i][j]
            loss = loss + b * ((b + eps).log() - (a + eps).log()) + (1 - b) * ((1 - b + eps).log() - (1 - a + eps).log())
    return loss


class NonLinearClassifier(nn.Module):
    """models/linear.py."""

    def __init__(self, feat_dim, num_classes):
        super().__init__()
        self.fc1 = nn.Linear(feat_dim, feat_dim)
        self.dropout = nn.Dropout(p=0.2)
        self.fc2 = nn.Linear(feat_dim, feat_dim)
        self.fc3 = nn.Linear(feat_dim, num_classes)

    def forward(self, features):
        features = F.relu(self.fc1(features))
        features = F.relu(self.fc2(self.dropout(features)))
        return self.fc3(features)


def released_stage1_gradients(backbone, mean, std, classifier, x, y, eps=0.03, steps=10, step_size=0.007):
    """adversarial_fine-tuning.py, one batch: optimisers zeroed; pgd_attack on the un-normalised
    model, its loss.backward() accumulating into the parameters; model.train(); adversarial then
    clean forwards on normalised images; loss = 20 GR + CE; loss.backward()."""
    model = nn.Sequential(backbone, classifier)
    for q in model.parameters():
        q.grad = None
    model.eval()
    x_adv = x.clone().detach().requires_grad_(True)
    for _ in range(steps):
        loss = F.cross_entropy(model(x_adv), y)
        loss.backward()
        x_adv = x_adv + step_size * x_adv.grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
        x_adv.detach_()
        x_adv.requires_grad_(True)
    model.train()
    adv_logits = model((x_adv - mean) / std)
    clean_logits = model((x - mean) / std)
    sample_weight = F.cross_entropy(clean_logits, y, reduction="none")
    loss = 20 * released_gr(clean_logits, adv_logits, y, sample_weight) + F.cross_entropy(adv_logits, y)
    loss.backward()
    return {name: q.grad.clone() for name, q in model.named_parameters()}, model


# -- fixtures -------------------------------------------------------------------------------------------
def _logits(scale: float, n: int = 24, c: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(n, c, generator=g, dtype=torch.float64) * scale).requires_grad_(True)
    b = (a.detach() + 0.5 * scale * torch.randn(n, c, generator=g, dtype=torch.float64)).requires_grad_(True)
    y = torch.randint(0, c, (n,), generator=g)
    return a, b, y


# -- GR -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 3.0, 5.0])
def test_gr_equals_the_released_value_and_gradients_through_the_pair_weights(scale):
    a, b, y = _logits(scale)
    ours = genetic_regularisation(a, b, y, F.cross_entropy(a, y, reduction="none"))
    ours_grads = torch.autograd.grad(ours, [a, b])
    ref = released_gr(a, b, y, F.cross_entropy(a, y, reduction="none"))
    ref_grads = torch.autograd.grad(ref, [a, b])
    torch.testing.assert_close(ours, ref, **TOL)
    for got, want in zip(ours_grads, ref_grads):
        torch.testing.assert_close(got, want, **TOL)


def test_gr_clamps_the_shifted_target_distances():
    """At logit scale 5 the label shift pushes target distances outside [0, 2]: the released
    code clamps them after the shift, which changes the value by far more than 1e-6."""
    a, b, y = _logits(5.0)
    w = F.cross_entropy(a, y, reduction="none").detach()
    unclamped = released_gr(a, b, y, w, eps=0.0)  # eps 0 keeps the clamp at [0, 2], not beyond
    assert torch.isfinite(genetic_regularisation(a, b, y, w))
    torch.testing.assert_close(genetic_regularisation(a, b, y, w), released_gr(a, b, y, w), **TOL)
    assert torch.isfinite(unclamped)


def test_gr_detached_weights_option_drops_the_clean_ce_path():
    a, b, y = _logits(3.0)
    w = F.cross_entropy(a, y, reduction="none")
    (full,) = torch.autograd.grad(genetic_regularisation(a, b, y, w), [a], retain_graph=True)
    (detached,) = torch.autograd.grad(genetic_regularisation(a, b, y, w.detach()), [a])
    (ref_detached,) = torch.autograd.grad(released_gr(a, b, y, w.detach()), [a])
    torch.testing.assert_close(detached, ref_detached, **TOL)
    assert F.cosine_similarity(full.flatten(), detached.flatten(), dim=0) < 0.9  # a different update direction


def test_paper_structure_loss_matches_equations_5_and_6():
    g = torch.Generator().manual_seed(1)
    adv = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    benign = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    ours = feature_structure_loss(adv, benign)
    ref = paper_lf(adv, benign)
    torch.testing.assert_close(ours, ref, **TOL)
    for got, want in zip(torch.autograd.grad(ours, [adv, benign]), torch.autograd.grad(ref, [adv, benign])):
        torch.testing.assert_close(got, want, **TOL)


# -- the stage-1 loop -------------------------------------------------------------------------------------
def _tiny_pair(seed: int = 0):
    torch.manual_seed(seed)
    encoder = build_encoder("resnet18", width=4).double()
    head = make_head(encoder.feature_dim, 10).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(12, 3, 16, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (12,), generator=g)
    return encoder, head, x, y


def _as_released_classifier(head: nn.Sequential) -> NonLinearClassifier:
    dim = head[0].in_features
    clf = NonLinearClassifier(dim, head[-1].out_features).double()
    for mine, theirs in zip([m for m in head if isinstance(m, nn.Linear)], [clf.fc1, clf.fc2, clf.fc3]):
        theirs.load_state_dict(mine.state_dict())
    return clf


def test_the_released_stage1_objective_gives_the_released_gradients_and_batchnorm_statistics():
    """variant `released`: un-normalised PGD whose CE leaks into the update, then the
    adversarial and clean forwards (in that order, BatchNorm in train mode), 20 GR + CE."""
    encoder, head, x, y = _tiny_pair()
    ref_backbone, ref_head = copy.deepcopy(encoder.backbone), _as_released_classifier(head)
    defense = GenAF(GenAF.resolve_params(None, {"variant": "released"}), seed=0)
    head.train()
    for q in [*encoder.parameters(), *head.parameters()]:
        q.grad = None
    encoder.train()
    defense.loss(encoder, head, x, y).backward()
    ref_grads, ref_model = released_stage1_gradients(ref_backbone, encoder.mean.double(), encoder.std.double(),
                                                      ref_head, x, y)
    # dropout is random: both sides ran it in train mode, so compare with dropout off
    ours = {f"0.{k}": q.grad for k, q in encoder.backbone.named_parameters()}
    ours |= {f"1.fc{i + 1}.{k}": q.grad for i, m in enumerate(m for m in head if isinstance(m, nn.Linear))
             for k, q in m.named_parameters()}
    assert set(ours) == set(ref_grads)
    for name, want in ref_grads.items():
        torch.testing.assert_close(ours[name], want, **TOL, msg=name)
    for (name, mine), theirs in zip(encoder.backbone.named_buffers(), ref_model[0].buffers()):
        torch.testing.assert_close(mine, theirs, **TOL, msg=name)


@pytest.fixture(autouse=True)
def _no_dropout(monkeypatch):
    """Dropout draws random masks in train mode; both sides would draw different ones."""
    monkeypatch.setattr(nn.Dropout, "forward", lambda self, x: x)


def test_the_corrected_variant_attacks_normalised_images_without_leaking():
    encoder, head, x, y = _tiny_pair(1)
    defense = GenAF(GenAF.resolve_params(None, {"variant": "corrected"}), seed=0)
    for q in [*encoder.parameters(), *head.parameters()]:
        q.grad = None
    terms = defense.stage1_terms(encoder, head, x, y)
    assert "attack_leak" not in terms
    assert all(q.grad is None for q in encoder.parameters())  # nothing leaked into .grad


# -- selection, stage 2 -------------------------------------------------------------------------------------
def released_fgsm_accuracy(raw_model, normalise, x, y, eps=8 / 255):
    """utils/predict.py rob_test: torchattacks FGSM on the un-normalised model, then the
    accuracy of the model on normalised adversarial images."""
    raw_model.eval()
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(raw_model(xr), y), xr)
    adv = (x + eps * grad.sign()).clamp(0, 1)
    with torch.no_grad():
        return float((raw_model(normalise(adv)).argmax(1) == y).double().mean())


def test_released_selection_metric_crafts_fgsm_unnormalised_and_scores_normalised():
    encoder, head, x, y = _tiny_pair(2)
    defense = GenAF(GenAF.resolve_params(None, {"variant": "released"}), seed=0)
    ours = defense.selection_score(encoder, head, x, y)
    ref = released_fgsm_accuracy(nn.Sequential(encoder.backbone, head), encoder.normalize, x, y)
    assert ours == pytest.approx(ref, abs=1e-12)
    assert fgsm_accuracy(nn.Sequential(encoder, head), nn.Sequential(encoder, head), x, y, 8 / 255,
                         torch.device("cpu")) >= 0


def released_sensitivity(model, layer_name, x, y, epochs=3, epsilon=0.1):
    """drc.py layer_robustness_contribution for one layer (one probe batch: order-free)."""
    with torch.no_grad():
        origin_loss = float(F.cross_entropy(model(x), y))
    cloned = copy.deepcopy(model)
    for name, param in cloned.named_parameters():
        param.requires_grad = name == layer_name
        if name == layer_name:
            init = param.detach().clone()
    optimizer = torch.optim.SGD(cloned.parameters(), lr=1)
    max_loss = 0.0
    for _ in range(epochs):
        optimizer.zero_grad()
        (-1 * F.cross_entropy(cloned(x), y)).backward()
        optimizer.step()
        sd = cloned.state_dict()
        diff = sd[layer_name] - init
        times = torch.linalg.norm(diff) / torch.linalg.norm(init)
        if times > epsilon:
            sd[layer_name] = init + diff / times * epsilon
            cloned.load_state_dict(sd)
        with torch.no_grad():
            total_loss = float(F.cross_entropy(cloned(x), y))
        max_loss = max(max_loss, total_loss)
    return max_loss - origin_loss


def test_layer_sensitivity_matches_drc_py():
    encoder, head, x, y = _tiny_pair(3)
    model = nn.Sequential(encoder.backbone, head).eval()
    defense = GenAF(GenAF.resolve_params(None, {"probe_epochs": 3, "probe_batch_size": 64}), seed=0)
    ref = released_sensitivity(model, "0.layer2.0.conv1.weight", x, y)
    ours = defense._sensitivity(model, encoder.backbone.layer2[0].conv1, x, y, torch.Generator().manual_seed(0))
    assert ours == pytest.approx(ref, abs=1e-9)
    assert ours != pytest.approx(0.0)


def test_stage2_candidates_and_substring_unfreeze_follow_the_released_names():
    encoder, head, _, _ = _tiny_pair()
    defense = GenAF(GenAF.resolve_params(None), seed=0)
    layers = defense.candidate_layers(encoder, head)
    assert len(layers) == 23 and int(0.2 * len(layers)) == 4  # 20 convs + 3 head layers, as released
    assert {"0.conv1", "0.layer2.0.downsample.0", "1.fc1", "1.fc3"} <= set(layers)
    model = nn.Sequential(encoder, head)
    freed = defense.unfrozen_parameters(model, ["0.conv1", "1.fc2"])
    # `n_key in name`: '0.conv1' is inside 'layerN.0.conv1' too
    assert sorted(freed) == ["0.conv1.weight", "0.layer1.0.conv1.weight", "0.layer2.0.conv1.weight",
                             "0.layer3.0.conv1.weight", "0.layer4.0.conv1.weight", "1.fc2.bias", "1.fc2.weight"]
    exact = GenAF(GenAF.resolve_params(None, {"stage2_unfreeze": "exact"}), seed=0)
    assert sorted(exact.unfrozen_parameters(model, ["0.conv1", "1.fc2"])) == ["0.conv1.weight", "1.fc2.bias", "1.fc2.weight"]


def test_probe_examples_are_torchattacks_pgd():
    encoder, head, x, y = _tiny_pair(4)
    model = nn.Sequential(encoder.backbone, head).eval()
    defense = GenAF(GenAF.resolve_params(None, {"probe_steps": 3}), seed=0)
    torch.manual_seed(5)
    ours = defense.probe_examples(model, x, y)
    torch.manual_seed(5)
    eps, alpha = 8 / 255, 2 / 225
    adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(3):
        adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
        adv = adv.detach() + alpha * grad.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1).detach()
    torch.testing.assert_close(ours, adv, **TOL)


def test_the_d_f_head_is_the_released_nonlinear_classifier():
    head = make_head(32, 7).double().eval()
    clf = _as_released_classifier(head).eval()
    z = torch.randn(5, 32, dtype=torch.float64)
    torch.testing.assert_close(head(z), clf(z), **TOL)
    assert [tuple(q.shape) for q in head.parameters()] == [tuple(q.shape) for q in clf.parameters()]


def test_unnormalised_view_shares_the_parameters():
    encoder, _, x, _ = _tiny_pair()
    raw = unnormalised(encoder)
    torch.testing.assert_close(encoder(x), raw(encoder.normalize(x)), **TOL)
    assert {id(q) for q in raw.parameters()} == {id(q) for q in encoder.parameters()}


# -- ZePAD fusion --------------------------------------------------------------------------------------------
def released_fusion(method, l1, l2, l3):
    """utils/confidence.py federal_with_zepad / _equal / _entropy."""
    if method == "equal":
        return (l1 + l2 + l3) / 3
    if method == "entropy":
        def entropy(lg):
            return torch.logsumexp(lg, dim=-1) - torch.sum(torch.softmax(lg, dim=-1) * lg, dim=-1)
        c = [entropy(lg) for lg in (l1, l2, l3)]
        total = c[0] + c[1] + c[2]
        return sum((ci / total).unsqueeze(1) * lg for ci, lg in zip(c, (l1, l2, l3)))
    m = [torch.max(torch.softmax(lg, dim=1), dim=1)[0] for lg in (l1, l2, l3)]
    c = [v * torch.exp(3 * (v - 0.5)) for v in m]
    total = c[0] + c[1] + c[2]
    return sum((ci / total).unsqueeze(1) * lg for ci, lg in zip(c, (l1, l2, l3)))


@pytest.mark.parametrize("method", ["rfdm", "equal", "entropy"])
def test_fusion_matches_confidence_py(method):
    g = torch.Generator().manual_seed(7)
    logits = [(torch.randn(9, 10, generator=g, dtype=torch.float64) * 3).requires_grad_(True) for _ in range(3)]
    ours = ZePAD.fuse(logits, Fusion(method=method, mpae=[0, 2], bmp=1))
    ref = released_fusion(method, *logits)
    torch.testing.assert_close(ours, ref, **TOL)
    for got, want in zip(torch.autograd.grad(ours.sum(), logits), torch.autograd.grad(ref.sum(), logits)):
        torch.testing.assert_close(got, want, **TOL)


def test_bit_depth_is_evademls_reduce_precision():
    """utils/squeeze.py: bit_depth_py(x, bits) = rint(x * (2**bits - 1)) / (2**bits - 1)."""
    import numpy as np

    from daebench.encoders.models import BitDepth

    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    x[0, 0, 0, :4] = torch.tensor([0.5 / 31, 1.5 / 31, 2.5 / 31, 1.0])  # ties: half to even, as np.rint
    for bits in (1, 4, 5):
        npp_int = 2 ** bits - 1
        ref = np.rint(x.numpy() * npp_int) / npp_int
        np.testing.assert_allclose(BitDepth(bits)(x).numpy(), ref, rtol=0, atol=1e-12)
