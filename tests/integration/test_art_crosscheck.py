"""Cross-check against an independent implementation: IBM's ART 1.20.1.

One classifier for both sides: a width-16 ResNet18 (random init) + the reference
MLP head trained on its digits features (a weak but real classifier, ~22% test
accuracy: the regime where UAP's fooling rate at 10/255 lands mid-range, ~0.5-0.6,
so the comparison can tell implementations apart; on a well-trained encoder both
sit near 0.05). ART gets it as a `PyTorchClassifier` with the same frozen weights.

* UAP: ART's `UniversalPerturbation` (attacker='deepfool', nb_grads=10, overshoot
  0.02, 50 DeepFool iterations, delta=0.2, one pass, L-inf eps 10/255) vs our `uap`.
  A single pass of UAP is order-dependent (runs with different shuffles spread by
  +-6 points), so ours runs *in ART's order* (`random.sample` under the same seed),
  sequentially (batch_size=1, the original algorithm); rates must agree within 5
  points and the perturbations point the same way. Our default batched mode is then
  checked against our sequential mode, averaged over shuffles.
* Per-sample PGD (label CE, eps 10/255, step 2/255, 20 iterations, random start):
  ART's `ProjectedGradientDescent` vs the few lines below; also at eps 1/255, where
  the rate is not saturated.

Images are mapped into [eps, 1 - eps]. Why: ART's UniversalPerturbation sets
noise = clip(x_i + noise + r, 0, 1) - x_i after each image, i.e. it pushes the
*universal* noise through each image's pixel box (on digits, whose background is
exactly 0, that forces noise >= 0 on every background pixel of the current image);
the original (LTS4/universal) has no box and ours clamps only x + v. Inside
[eps, 1 - eps] the box never binds and the two algorithms coincide.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# Minutes on 2 cores (ART crafts UAP one image at a time): CI runs it in its slow pass.
pytestmark = pytest.mark.slow
pytest.importorskip("art")
from art.attacks.evasion import ProjectedGradientDescent, UniversalPerturbation  # noqa: E402
from art.estimators.classification import PyTorchClassifier  # noqa: E402

from daebench.attacks import ATTACKS  # noqa: E402
from daebench.data import load_dataset  # noqa: E402
from daebench.encoders import build_encoder  # noqa: E402
from daebench.heads import HeadParams, train_head  # noqa: E402
from daebench.runtime import seed_everything  # noqa: E402

EPS = 10 / 255
N_CRAFT = 128  # UAP crafting images
N_PGD = 64  # per-sample PGD images
TOL = 0.05  # fooling rates within 5 points
DEEPFOOL = {"max_iter_df": 50, "num_candidates": 10, "overshoot": 0.02}
ART_DEEPFOOL = {"max_iter": 50, "nb_grads": 10, "epsilon": 0.02, "verbose": False}


def _into_box_margin(x: torch.Tensor) -> torch.Tensor:
    return EPS + (1 - 2 * EPS) * (x.float() / 255)


@pytest.fixture(scope="module")
def setup():
    data = load_dataset("digits")
    x_train, x_eval = _into_box_margin(data.x_train), _into_box_margin(data.x_test)
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", width=16).eval()
    with torch.no_grad():
        feats = torch.cat([encoder(x_train[i:i + 512]) for i in range(0, len(x_train), 512)])
    head = train_head(feats, data.y_train, 10, HeadParams(), seed=0)
    classifier = torch.nn.Sequential(encoder, head).eval()
    for p in classifier.parameters():
        p.requires_grad_(False)
    art_classifier = PyTorchClassifier(
        model=classifier, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10,
        clip_values=(0.0, 1.0), device_type="cpu",
    )
    return {"classifier": classifier, "art": art_classifier, "x_craft": x_train[:N_CRAFT], "x_eval": x_eval,
            "y_eval": data.y_test}


def _predict(classifier, x):
    with torch.no_grad():
        return torch.cat([classifier(x[i:i + 512]).argmax(1) for i in range(0, len(x), 512)])


def _fooling_rate(classifier, x, x_adv) -> float:
    return float((_predict(classifier, x_adv.clamp(0, 1)) != _predict(classifier, x)).float().mean())


def _uap(**params):
    cls = ATTACKS.get("uap")
    return cls(cls.resolve_params("paper", {**DEEPFOOL, "max_passes": 1, **params}), eps=EPS, seed=0)


@pytest.fixture(scope="module")
def art_uap(setup):
    """ART's universal perturbation and the order in which it visited the images."""
    x = setup["x_craft"]
    attack = UniversalPerturbation(setup["art"], attacker="deepfool", attacker_params=ART_DEEPFOOL,
                                   delta=0.2, max_iter=1, eps=EPS, norm=np.inf, verbose=False)
    random.seed(0)
    order = random.sample(range(len(x)), len(x))  # what ART's first pass draws after this seed
    random.seed(0)
    attack.generate(x.numpy())
    return {"noise": torch.from_numpy(attack.noise), "fooling_rate": attack.fooling_rate, "order": order}


def test_uap_matches_art_universal_perturbation(setup, art_uap):
    clf, x, x_eval = setup["classifier"], setup["x_craft"], setup["x_eval"]
    ours = _uap(batch_size=1)
    v = ours.universal_deepfool(clf, x[art_uap["order"]], None)  # sequential, in ART's order
    v_art = art_uap["noise"]
    assert v.abs().max() <= EPS + 1e-6 and v_art.abs().max() <= EPS + 1e-6
    fool_ours, fool_art = _fooling_rate(clf, x_eval, x_eval + v), _fooling_rate(clf, x_eval, x_eval + v_art)
    assert 0.2 < fool_art < 0.95, f"uninformative regime: ART fooling rate {fool_art:.3f}"
    assert abs(fool_ours - fool_art) <= TOL, f"eval fooling rate: ours {fool_ours:.3f} vs ART {fool_art:.3f}"
    cosine = F.cosine_similarity(v.flatten(), v_art.flatten(), dim=0)
    assert cosine > 0.8, f"perturbations differ: cosine {cosine:.3f}"


def test_batched_uap_tracks_sequential(setup):
    """The default batched DeepFool vs the sequential original (checked above), same shuffles, averaged."""
    clf, x, x_eval = setup["classifier"], setup["x_craft"], setup["x_eval"]
    batched_default = ATTACKS.get("uap").Params().batch_size
    assert batched_default > 1
    rates = {1: [], batched_default: []}
    for seed in range(3):
        for bs in rates:
            v = _uap(batch_size=bs).universal_deepfool(clf, x, seed_everything(seed))
            rates[bs].append(_fooling_rate(clf, x_eval, x_eval + v))
    sequential, batched = np.mean(rates[1]), np.mean(rates[batched_default])
    assert abs(batched - sequential) <= TOL, f"batched {rates[batched_default]} vs sequential {rates[1]}"


def _pgd_ce(classifier, x, y, eps, step, steps, generator):
    """Per-sample L-inf PGD on the label cross-entropy (Madry et al.), random start."""
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(classifier(x_adv), y), x_adv)
        with torch.no_grad():
            x_adv = (x + (x_adv + step * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv.detach()


@pytest.mark.parametrize("eps", [EPS, 1 / 255])
def test_per_sample_pgd_matches_art(setup, eps):
    clf, x, y = setup["classifier"], setup["x_eval"][:N_PGD], setup["y_eval"][:N_PGD]
    step = eps / 5  # 2/255 at eps 10/255
    x_ours = _pgd_ce(clf, x, y, eps, step, 20, torch.Generator().manual_seed(0))
    np.random.seed(0)
    art = ProjectedGradientDescent(setup["art"], norm=np.inf, eps=eps, eps_step=step, max_iter=20,
                                   num_random_init=1, batch_size=N_PGD, verbose=False)
    x_art = torch.from_numpy(art.generate(x.numpy(), y=y.numpy()))
    assert (x_art - x).abs().max() <= eps + 1e-6
    fool_ours, fool_art = _fooling_rate(clf, x, x_ours), _fooling_rate(clf, x, x_art)
    assert abs(fool_ours - fool_art) <= TOL, f"PGD eps={eps:.4f}: ours {fool_ours:.3f} vs ART {fool_art:.3f}"
